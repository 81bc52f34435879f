"""Scoring benchmark: RFM, tiers, lifecycle, layers, BG/NBD + Gamma-Gamma on the demo shop at scale,
side by side with lifetimes' summary_data_from_transaction_data + BetaGeoFitter on the same data,
and a whole-segment CSV export timed with its memory.

    .venv/bin/python -m tests.perf.bench_scoring [--customers 1000000] [--skus 50000] [--skip-lifetimes]

Needs PostgreSQL on 127.0.0.1:5432 (SEGREC_BENCH_POSTGRES_URL); the shop is built once (tests/perf/benchdb.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from datetime import datetime

import pandas as pd

from services.segmentation.scoring import CustomerScorer
from services.segmentation.snapshot import load_customer_frame
from shared.extensions import db
from shared.frames import read_frame
from tests.perf.benchdb import ensure_bench_shop

AS_OF = datetime(2026, 11, 1)
LIFETIMES_BUDGET_SECONDS = 900


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_segrec(database_url: str) -> dict:
    """Our path: one frame per customer from the running aggregates, fit, score, (not) write."""
    db.configure(database_url)
    timings = {}
    started = time.perf_counter()
    frame = load_customer_frame(db.engine, AS_OF)
    timings["load one row per customer"] = time.perf_counter() - started
    step = time.perf_counter()
    scorer = CustomerScorer().fit(frame, AS_OF)
    timings["fit RFM edges, BG/NBD, Gamma-Gamma"] = time.perf_counter() - step
    step = time.perf_counter()
    scores = scorer.transform(frame)
    timings["score: RFM, tiers, lifecycle, layers, CLV"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    summary = scorer.model_summary()
    return {"timings": timings, "customers": len(scores), "bg_nbd": summary.get("bg_nbd"),
            "peak_rss_mb": peak_rss_mb(), "tiers": scores["tier"].value_counts().to_dict(),
            "lifecycle": scores["lifecycle"].value_counts().to_dict()}


def run_lifetimes(database_url: str, queue) -> None:
    """lifetimes on the same paid orders: transaction summary, then BetaGeoFitter (in a child process)."""
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import summary_data_from_transaction_data

    db.configure(database_url)
    timings = {}
    started = time.perf_counter()
    orders = read_frame(db.engine, "SELECT customer_id, placed_at FROM orders WHERE status = 'paid' AND "
                        "placed_at <= :as_of", {"as_of": AS_OF}, date_columns=("placed_at",),
                        dtypes={"customer_id": str})
    timings["load paid orders"] = time.perf_counter() - started
    step = time.perf_counter()
    summary = summary_data_from_transaction_data(orders, "customer_id", "placed_at", observation_period_end=AS_OF,
                                                 freq="D", freq_multiplier=7)
    timings["summary_data_from_transaction_data"] = time.perf_counter() - step
    step = time.perf_counter()
    fitter = BetaGeoFitter(penalizer_coef=0.0).fit(summary["frequency"], summary["recency"], summary["T"])
    timings["BetaGeoFitter.fit"] = time.perf_counter() - step
    step = time.perf_counter()
    fitter.conditional_probability_alive(summary["frequency"], summary["recency"], summary["T"])
    timings["P(alive) for everyone"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    queue.put({"timings": timings, "params": {k: float(v) for k, v in fitter.params_.items()},
               "peak_rss_mb": peak_rss_mb(), "orders": len(orders)})


def bench_csv_export(database_url: str, dimension: str | None = None, value: str | None = None) -> dict:
    """Stream a whole segment as CSV through the app and measure time and memory growth."""
    import redis

    from services.segmentation.app import create_app
    from shared.auth import create_key
    from services.pipeline.retrain import retrain_now

    config = {"DATABASE_URL": database_url, "REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_PREFIX": "bench-scoring",
              "API_KEY_CACHE_SECONDS": 30}
    app = create_app(config)
    from shared.runs import current_run_id

    if current_run_id() is None:
        print("publishing a scoring run for the export (one retrain)...")
        started = time.perf_counter()
        run = retrain_now(app.config, as_of=AS_OF)
        print(f"  retrain {run.status} in {time.perf_counter() - started:.1f} s")
    with db.session() as session:
        _row, key = create_key(session, "bench", ["segments:export", "segments:read"])
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    if dimension is None:
        catalogue = client.get("/v1/segments", headers=headers).json
        dimension, value, _members = max(
            ((d["dimension"], v["value"], v["members"]) for d in catalogue["dimensions"] for v in d["values"]),
            key=lambda entry: entry[2],
        )
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    response = client.get(f"/v1/segments/{dimension}/{value}/members.csv", headers=headers, buffered=False)
    rows = 0
    size = 0
    for chunk in response.response:
        size += len(chunk)
        rows += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
    seconds = time.perf_counter() - started
    response.close()
    client = redis.Redis.from_url(config["REDIS_URL"])
    for key in client.scan_iter("bench-scoring:*", count=10_000):
        client.delete(key)
    return {"segment": f"{dimension}={value}", "rows": rows - 1, "megabytes": size / 1e6, "seconds": seconds,
            "peak_rss_growth_mb": peak_rss_mb() - rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=50_000)
    parser.add_argument("--skip-lifetimes", action="store_true")
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    database_url = ensure_bench_shop(args.customers, args.skus)

    ours = run_segrec(database_url)
    theirs = None
    if not args.skip_lifetimes:
        queue = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(target=run_lifetimes, args=(database_url, queue))
        child.start()
        child.join(LIFETIMES_BUDGET_SECONDS)
        if child.is_alive():
            child.terminate()
            theirs = {"timings": {"total": float("inf")}, "note": f"stopped after {LIFETIMES_BUDGET_SECONDS} s"}
        else:
            theirs = queue.get()

    print(f"\nscoring {ours['customers']:,} customers as of {AS_OF:%Y-%m-%d}")
    print(f"{'segrec step':<46}{'seconds':>10}")
    for step, seconds in ours["timings"].items():
        print(f"{step:<46}{seconds:>10.2f}")
    print(f"peak memory {ours['peak_rss_mb']:.0f} MB; BG/NBD {ours['bg_nbd']}")
    if theirs:
        print(f"\n{'lifetimes step (same paid orders)':<46}{'seconds':>10}")
        for step, seconds in theirs["timings"].items():
            print(f"{step:<46}{seconds:>10.2f}")
        if "params" in theirs:
            print(f"peak memory {theirs['peak_rss_mb']:.0f} MB; params {theirs['params']}")
        print(f"\nsegrec total / lifetimes total: {ours['timings']['total'] / theirs['timings']['total']:.3f} "
              "(lifetimes does only the BG/NBD part)")
    print("\ntiers", ours["tiers"], "\nlifecycle", ours["lifecycle"])
    if not args.skip_export:
        export = bench_csv_export(database_url)
        print(f"\nCSV export {export['segment']}: {export['rows']:,} rows, {export['megabytes']:.1f} MB in "
              f"{export['seconds']:.2f} s; peak memory growth {export['peak_rss_growth_mb']:.0f} MB")
    pd.set_option("display.width", 120)


if __name__ == "__main__":
    main()
