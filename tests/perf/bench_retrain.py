"""Retrain benchmark: the whole Celery workflow on the demo shop, with one worker process and with two.

Not collected by pytest. Run:  .venv/bin/python tests/perf/bench_retrain.py --customers 1000000

1. Builds (once) or reuses the demo shop of that size (about 10 order lines per customer) in its own
   PostgreSQL database (tests/perf/benchdb.py).
2. For each worker count (default 1 then 2): starts `celery -A services.pipeline.worker worker --pool prefork
   --concurrency N` on a queue and Redis key prefix of its own, empties the run outputs (so every run
   starts from the same state: same data, same as_of, no previous run), triggers a run the way the
   API does (begin_run + launch_workflow), and waits for it to end.
3. Prints each step's time for each worker count side by side, the wall time from trigger to
   publish, and the ratio. The target is the whole run under 3 minutes with two worker processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

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
STEPS = ["snapshot", "fit_customer_models", "score_customers", "train_recommendations", "publish"]
TARGET_SECONDS = 180
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


def measure(url: str, as_of, concurrency: int, shard_size: int, log_dir: Path) -> dict:
    """One whole run on `concurrency` worker processes: step seconds, rows, and the wall time."""
    from services.pipeline import retrain
    from services.pipeline.tasks import launch_workflow

    prefix = f"segrec-bench-{uuid.uuid4().hex[:8]}"
    settings = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix,
                "CELERY_QUEUE": prefix, "SCORING_SHARD_SIZE": shard_size}
    config = load_config(settings)
    redis_store.configure(REDIS_URL, prefix, socket_timeout=5.0)
    configure_celery(config)
    empty_run_outputs()
    log_path = log_dir / f"worker-{concurrency}.log"
    worker = start_worker(settings, concurrency, log_path)
    try:
        started = time.perf_counter()
        run = retrain.begin_run(config, as_of=as_of, trigger="bench")
        launch_workflow(run.run_id)
        while (run := runs.get_run(run.run_id)).status in runs.ACTIVE_STATUSES:
            time.sleep(0.5)
        wall = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        delete_prefix(prefix)
    if run.status != "published":
        raise SystemExit(f"run {run.run_id} ended {run.status}: {run.reason} (worker log {log_path})")
    steps = {step["name"]: step for step in run.steps}
    return {"run_id": run.run_id, "wall": wall, "steps": steps,
            "shards": steps["score_customers"].get("detail", {}).get("shards")}


def print_table(results: dict[int, dict]) -> None:
    counts = sorted(results)
    header = f"{'step':<24}" + "".join(f"{f'{count} worker' + ('s' if count > 1 else ''):>14}" for count in counts)
    if len(counts) == 2:
        header += f"{'ratio':>8}"
    print(header)
    rows = [(name, [results[count]["steps"][name]["seconds"] for count in counts]) for name in STEPS]
    rows.append(("trigger to publish", [results[count]["wall"] for count in counts]))
    for name, values in rows:
        line = f"{name:<24}" + "".join(f"{value:>12.1f} s" for value in values)
        if len(values) == 2 and values[1]:
            line += f"{values[0] / values[1]:>7.2f}x"
        print(line)
    last = results[counts[-1]]
    print(f"\nrows: {last['steps']['score_customers']['rows']:,} customers scored in {last['shards']} shards, "
          f"{last['steps']['train_recommendations']['rows']:,} order lines trained on")
    two = results.get(2, results[counts[-1]])["wall"]
    verdict = "within" if two < TARGET_SECONDS else "OVER"
    print(f"target: whole run under {TARGET_SECONDS} s with two worker processes: {two:.1f} s ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="Worker process counts to compare, in order.")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="Customers per scoring shard (default: SCORING_SHARD_SIZE).")
    parser.add_argument("--skus", type=int, default=50_000)
    args = parser.parse_args()
    shard_size = args.shard_size or load_config()["SCORING_SHARD_SIZE"]

    url = ensure_bench_shop(args.customers, args.skus)
    print(f"{args.customers:,} customers, {args.skus:,} skus; shards of {shard_size:,}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="segrec-bench-") as log_dir:
        for count in (int(value) for value in args.workers.split(",")):
            results[count] = measure(url, AS_OF, count, shard_size, Path(log_dir))
            print(f"{count} worker process(es): run {results[count]['run_id']} published in "
                  f"{results[count]['wall']:.1f} s", flush=True)
    print()
    print_table(results)


if __name__ == "__main__":
    main()
