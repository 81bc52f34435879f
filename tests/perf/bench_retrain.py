"""Retrain benchmark: the whole Celery workflow on the demo shop, with 1, 2, 4 ... worker processes in one run.

Not collected by pytest. Run:  .venv/bin/python tests/perf/bench_retrain.py --customers 200000 --workers 1,2,4

1. Builds (once) or reuses the demo shop of that size (about 10 order lines per customer) in its own
   PostgreSQL database (tests/perf/benchdb.py).
2. For each worker count (default 1, 2, 4): starts `celery -A services.pipeline.worker worker --pool prefork
   --concurrency N` on a queue and Redis key prefix of its own, empties the run outputs (so every run
   starts from the same state: same data, same as_of, no previous run), triggers a run the way the
   API does (begin_run + launch_workflow), and waits for it to end. Scoring and for-you shards are
   `--shard-size` customers (default: an eighth of the shop, so four processes have work to share).
3. Prints each step's time for each worker count side by side, the wall time from trigger to
   publish, and the speed-up over the first count (with --repeat, each count's fastest run); then
   the per-shard figures the capacity plan (docs/CAPACITY.md) extrapolates from: wall and CPU
   seconds and peak RSS per for-you shard and of train_models (each step's own peak, /proc VmHWM
   reset at its start), the sampled peak RSS per worker process, the Redis memory of the published
   lists (MEMORY USAGE per kind) and the database size.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import redis
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.pipeline.celery_app import configure_celery  # noqa: E402
from shared import runs  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.extensions import db, redis_store  # noqa: E402
from tests.perf.benchdb import SEEDED_MARKER, ensure_bench_shop  # noqa: E402

REDIS_URL = os.environ.get("SEGREC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY = Path(sys.executable).with_name("celery")
STEPS = ["snapshot", "fit_customer_models", "train_lines", "score_customers", "train_models", "train_bundles",
         "train_for_you", "publish"]
SHARD_STEP = "train_for_you_"
# Issue 14's target: two worker processes at least 1.6x faster than one, from trigger to publish.
TARGET_SPEEDUP = 1.6
# Run outputs emptied before each measured run; the shop itself is left alone.
OUTPUT_TABLES = ["tier_history", "customer_scores", "recommendation_lists", "runs"]
AS_OF = datetime(2026, 11, 1)  # the demo shop's own date (tests/perf/benchdb.py seeds with the default)


def empty_run_outputs() -> None:
    """Forget every run (scores, lists, pointers) so each measured run starts from the same state."""
    with db.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(OUTPUT_TABLES)}"))
        connection.execute(text("DELETE FROM pointers WHERE name <> :marker"), {"marker": SEEDED_MARKER})


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*", count=5000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])


def start_worker(settings: dict, concurrency: int, log_path: Path) -> subprocess.Popen:
    """A prefork worker on the run's queue; returns once it logs that it is ready."""
    env = {**os.environ, **{key: str(value) for key, value in settings.items()}}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(CELERY), "-A", "services.pipeline.worker", "worker", "--pool", "prefork", "--concurrency", str(concurrency),
               "-Q", settings["CELERY_QUEUE"], "--without-heartbeat", "--without-mingle", "--without-gossip",
               "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the worker exited; see {log_path}")
        if "ready." in log_path.read_text(errors="replace"):
            return process
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the worker was not ready in 120 s; see {log_path}")


class RssSampler:
    """Peak resident memory of each pool process of a worker, sampled every 0.2 s (spikes between samples are missed)."""

    def __init__(self, worker: subprocess.Popen) -> None:
        self.worker = psutil.Process(worker.pid)
        self.peaks: dict[int, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stopping.wait(0.2):
            for child in self.worker.children():
                try:
                    self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), child.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


def redis_memory(prefix: str, version: str) -> dict[str, dict]:
    """Bytes Redis uses for the version's lists, per kind (catalogue, nb, bundles, cust): keys and total."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:recs:{version}:*", count=5000))
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.memory_usage(key, samples=0)
    usage: dict[str, dict] = {}
    for key, size in zip(keys, pipeline.execute()):
        kind = key.decode().split(":")[len(prefix.split(":")) + 2]
        entry = usage.setdefault(kind, {"keys": 0, "bytes": 0})
        entry["keys"] += 1
        entry["bytes"] += size or 0
    return usage


def database_size() -> dict[str, int]:
    """The bench database's size and its largest tables' (with indexes), in bytes."""
    with db.engine.connect() as connection:
        sizes = {"database": connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()}
        for table in ("customers", "orders", "order_lines", "customer_scores", "recommendation_lists"):
            sizes[table] = connection.execute(text("SELECT pg_total_relation_size(:table)"),
                                              {"table": table}).scalar_one()
    return sizes


def busy_core_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (every process: workers, PostgreSQL, Redis)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def measure(url: str, as_of, concurrency: int, shard_size: int, log_dir: Path) -> dict:
    """One whole run on `concurrency` worker processes: step seconds, rows, memory, and the wall time."""
    from services.pipeline import retrain
    from services.pipeline.tasks import launch_workflow

    prefix = f"segrec-bench-{uuid.uuid4().hex[:8]}"
    settings = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix,
                "CELERY_QUEUE": prefix, "SCORING_SHARD_SIZE": shard_size, "TRAINING_SHARD_SIZE": shard_size}
    config = load_config(settings)
    redis_store.configure(REDIS_URL, prefix, socket_timeout=5.0)
    configure_celery(config)
    empty_run_outputs()
    log_path = log_dir / f"worker-{concurrency}.log"
    worker = start_worker(settings, concurrency, log_path)
    load_before = os.getloadavg()
    try:
        with RssSampler(worker) as sampler:
            started = time.perf_counter()
            busy_before = busy_core_seconds()
            run = retrain.begin_run(config, as_of=as_of, trigger="bench")
            launch_workflow(run.run_id)
            while (run := runs.get_run(run.run_id)).status in runs.ACTIVE_STATUSES:
                time.sleep(0.5)
            wall = time.perf_counter() - started
            busy = busy_core_seconds() - busy_before
        memory = redis_memory(prefix, run.run_id) if run.status == "published" else {}
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        delete_prefix(prefix)
    if run.status != "published":
        raise SystemExit(f"run {run.run_id} ended {run.status}: {run.reason} (worker log {log_path})")
    steps = {step["name"]: step for step in run.steps}
    return {"run_id": run.run_id, "wall": wall, "busy": busy, "steps": steps, "redis": memory,
            "shard_steps": [step for name, step in steps.items() if name.startswith(SHARD_STEP)],
            "shards": steps["score_customers"].get("detail", {}).get("shards"),
            "worker_peaks_mb": sorted((peak / 2**20 for peak in sampler.peaks.values()), reverse=True),
            "load": (load_before, os.getloadavg())}


def print_table(results: dict[int, dict]) -> None:
    counts = list(results)
    first = counts[0]
    label = lambda count: f"{count} worker" + ("s" if count > 1 else "")  # noqa: E731
    header = f"{'step':<24}" + "".join(f"{label(count):>14}" for count in counts)
    header += "".join(f"{f'{first}/{count}':>9}" for count in counts[1:])
    print(header)
    rows = [(name, [results[count]["steps"][name]["seconds"] for count in counts]) for name in STEPS]
    rows.append(("trigger to publish", [results[count]["wall"] for count in counts]))
    for name, values in rows:
        line = f"{name:<24}" + "".join(f"{value:>12.1f} s" for value in values)
        line += "".join(f"{values[0] / value:>8.2f}x" if value else f"{'-':>9}" for value in values[1:])
        print(line)
    print("load average (1 min) at start / end: " + ", ".join(
        f"{label(count)} {results[count]['load'][0][0]:.2f} / {results[count]['load'][1][0]:.2f}" for count in counts))
    # The machine's busy CPU seconds bound what more processes can give: a run that keeps the machine
    # busy for B core-seconds cannot end in less than B / cores, however many workers share it.
    cores = os.cpu_count()
    print("machine CPU busy (every process, PostgreSQL and Redis included): " + ", ".join(
        f"{label(count)} {results[count]['busy']:.0f} core-s = {results[count]['busy'] / results[count]['wall']:.2f} "
        f"of {cores} cores on average" for count in counts))
    if 1 in results:
        floor = results[1]["busy"] / cores
        print(f"so the same work cannot end in less than {floor:.1f} s on {cores} cores: at most "
              f"{results[1]['wall'] / floor:.2f}x the one-worker run")
    if 1 in results and 2 in results:
        speedup = results[1]["wall"] / results[2]["wall"]
        verdict = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
        print(f"target: 2 worker processes >= {TARGET_SPEEDUP}x one, trigger to publish: {speedup:.2f}x ({verdict})")


def print_shard_figures(results: dict[int, dict], customers: int) -> None:
    """The per-shard and per-process figures docs/CAPACITY.md extrapolates from."""
    for count, result in results.items():
        shards = result["shard_steps"]
        seconds = [step["seconds"] for step in shards]
        rows = [step["rows"] for step in shards]
        peaks = [step["detail"].get("peak_rss_mb") or 0 for step in shards]
        models = result["steps"]["train_models"]
        fit = result["steps"]["fit_customer_models"]
        cpu = [step["detail"].get("cpu_seconds") or 0 for step in shards]
        print(f"{count} worker process(es): {len(shards)} for-you shards of {min(rows):,}-{max(rows):,} customers: "
              f"{min(seconds):.1f} / {statistics.median(seconds):.1f} / {max(seconds):.1f} s (min / median / max), "
              f"CPU {statistics.median(cpu):.1f} s median, "
              f"peak RSS per shard up to {max(peaks):,.0f} MiB; train_models {models['seconds']:.1f} s "
              f"(CPU {models['detail'].get('cpu_seconds') or 0:.1f} s) on "
              f"{models['rows']:,} lines, peak RSS {models['detail'].get('peak_rss_mb') or 0:,.0f} MiB; "
              f"fit_customer_models {fit['seconds']:.1f} s on {fit['rows']:,} customers, "
              f"peak RSS {(fit['detail'] or {}).get('peak_rss_mb') or 0:,.0f} MiB; "
              f"sampled peak RSS per worker process: "
              + ", ".join(f"{peak:,.0f}" for peak in result["worker_peaks_mb"]) + " MiB")
    last = results[list(results)[-1]]
    served = last["steps"]["train_for_you"]["rows"]
    print(f"\nrows: {last['steps']['score_customers']['rows']:,} customers scored in {last['shards']} shards, "
          f"{last['steps']['train_models']['rows']:,} order lines trained on, {served:,} for-you lists")
    print("Redis memory of the published lists (MEMORY USAGE, last run):")
    for kind, entry in sorted(last["redis"].items()):
        per = f", {entry['bytes'] / served:,.0f} bytes per customer" if kind == "cust" and served else ""
        print(f"  {kind:<10} {entry['keys']:>8,} keys {entry['bytes'] / 2**20:>10,.1f} MiB{per}")
    total = sum(entry["bytes"] for entry in last["redis"].values())
    print(f"  {'total':<10} {'':>13} {total / 2**20:>10,.1f} MiB for {customers:,} customers")
    sizes = database_size()
    print("PostgreSQL size: " + ", ".join(f"{name} {size / 2**20:,.0f} MiB" for name, size in sizes.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4", help="Worker process counts to compare, in order.")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="Customers per scoring and for-you shard (default: an eighth of the shop).")
    parser.add_argument("--skus", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="Rounds over the worker counts; each count's fastest run is reported.")
    args = parser.parse_args()
    shard_size = args.shard_size or math.ceil(args.customers / 8)

    url = ensure_bench_shop(args.customers, args.skus)
    print(f"{args.customers:,} customers, {args.skus:,} skus; shards of {shard_size:,}", flush=True)
    counts = [int(value) for value in args.workers.split(",")]
    runs_of: dict[int, list[dict]] = {count: [] for count in counts}
    with tempfile.TemporaryDirectory(prefix="segrec-bench-") as log_dir:
        # Rounds interleave the counts, so a burst of load from other jobs hits every count alike.
        for _round in range(args.repeat):
            for count in counts:
                result = measure(url, AS_OF, count, shard_size, Path(log_dir))
                runs_of[count].append(result)
                print(f"{count} worker process(es): run {result['run_id']} published in {result['wall']:.1f} s",
                      flush=True)
    # Each count's fastest run: the one least slowed by other jobs on a shared machine.
    results = {count: min(runs_of[count], key=lambda result: result["wall"]) for count in counts}
    if args.repeat > 1:
        print("fastest of " + ", ".join(f"{count}: " + " / ".join(f"{result['wall']:.1f}" for result in runs_of[count])
                                        for count in counts) + " s")
    print()
    print_table(results)
    print()
    print_shard_figures(results, args.customers)


if __name__ == "__main__":
    main()
