"""Recommendation training benchmark: the nightly train-and-stage on the demo shop at scale.

    .venv/bin/python -m tests.perf.bench_training [--customers 1000000] [--skus 50000] [--no-selection]

Prints each phase (load, co-purchase fit, bundles, for-you, evaluation, staging to Redis and the
database), the total and the peak memory. The shop is built once (tests/perf/benchdb.py).
"""

from __future__ import annotations

import argparse
import resource
import time
import uuid
from datetime import datetime

from services.recommend.training import train_and_stage
from shared.config import load_config
from shared.extensions import db, redis_store
from tests.perf.benchdb import ensure_bench_shop

AS_OF = datetime(2026, 11, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=50_000)
    parser.add_argument("--no-selection", action="store_true", help="MODEL_SELECTION off: the default model only")
    args = parser.parse_args()
    database_url = ensure_bench_shop(args.customers, args.skus)
    prefix = f"bench-train-{uuid.uuid4().hex[:6]}"
    config = load_config({"DATABASE_URL": database_url, "REDIS_URL": "redis://127.0.0.1:6379/0",
                          "REDIS_PREFIX": prefix, "MODEL_SELECTION": not args.no_selection})
    db.configure(database_url)
    redis_store.configure(config["REDIS_URL"], prefix, socket_timeout=30)
    version = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        started = time.perf_counter()
        metrics = train_and_stage(version, AS_OF, config)
        total = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\ntrained on {metrics['order_lines']:,} order lines, {metrics['orders']:,} orders, "
              f"{metrics['items']:,} skus, {metrics['customers']:,} customers")
        print(f"{'phase':<22}{'seconds':>10}")
        for phase, seconds in metrics["seconds"].items():
            print(f"{phase:<22}{seconds:>10.2f}")
        print(f"{'total':<22}{total:>10.2f}   (target < 120 s)")
        print(f"peak memory {peak:,.0f} MB (target < 6 GB)")
        print(f"evaluation: {metrics['evaluation']}")
        selection = metrics["model_selection"]
        print(f"model selection: {selection['cases']:,} validation cases, chosen {selection['chosen']}: "
              f"{selection['reason']}")
        for label, seconds in selection.get("seconds", {}).items():
            print(f"  selection {label:<28} fit {seconds['fit']:>7.2f} s, score {seconds['score']:>7.2f} s")
        print(f"items with neighbours {metrics['items_with_neighbours']:,}, bundles {metrics['bundles']:,}, "
              f"ABC {metrics['abc']}")
    finally:
        keys = list(redis_store.client.scan_iter(f"{prefix}:*", count=10_000))
        for start in range(0, len(keys), 10_000):
            redis_store.client.delete(*keys[start:start + 10_000])
        from sqlalchemy import delete

        from shared.models import RecommendationList

        with db.session() as session:
            session.execute(delete(RecommendationList).where(RecommendationList.model_version == version))


if __name__ == "__main__":
    main()
