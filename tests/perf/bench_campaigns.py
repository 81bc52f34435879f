"""Campaign build benchmark: a win-back campaign of about 100,000 members, built in one process.

Not collected by pytest. Run:  .venv/bin/python tests/perf/bench_campaigns.py [--customers 100000] [--sqlite]

1. Creates a throwaway PostgreSQL database (segrec_bench_<hex>, migrated, dropped after), or a fresh SQLite
   file with --sqlite.
2. Writes --customers dormant customers (1 % opted out) and their score rows under a published run, and a
   recommendation model to Redis (a catalogue of --skus items, 5 % out of stock, and a for-you list of 20
   items per customer) under its own key prefix, deleted after.
3. Creates a campaign (10 % holdout, an offer, 5 recommendations each) and times `build_campaign`, the
   function the Celery task `segrec.campaigns.build` runs. Target: under 60 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.recommend.store import CUSTOMER_TIERS, encode_customer_lists  # noqa: E402
from services.recommend.training import publish_version, write_version  # noqa: E402
from services.segmentation import campaigns  # noqa: E402
from services.segmentation.app import create_app  # noqa: E402
from shared import bulk, runs  # noqa: E402
from shared.dbadmin import upgrade  # noqa: E402
from shared.extensions import db  # noqa: E402
from shared.ingest import utcnow  # noqa: E402
from shared.models import Run  # noqa: E402

ADMIN_URL = os.environ.get("SEGREC_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SEGREC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TIERS = ("regular", "silver", "gold", "black")
FOR_YOU_LENGTH = 20


def create_postgres_database() -> tuple[str, str]:
    name = f"segrec_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_postgres_database(name: str) -> None:
    db.dispose()
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_customers_and_scores(customers: int, run_id: str, as_of: datetime, rng) -> None:
    """Dormant customers with score rows under `run_id`, written with the bulk helpers."""
    now = utcnow()
    ids = [f"cust{number:07d}" for number in range(customers)]
    opted_out = (rng.random(customers) < 0.01).tolist()
    values = np.round(rng.gamma(2.0, 150.0, customers), 2).tolist()
    tiers = rng.choice(TIERS, customers, p=(0.6, 0.25, 0.1, 0.05)).tolist()
    customer_rows = [
        (customer_id, as_of - timedelta(days=900), "web", False, opted, {}, False, as_of - timedelta(days=800),
         as_of - timedelta(days=300), 3, 300.0, 3, now)
        for customer_id, opted in zip(ids, opted_out)
    ]
    score_rows = [
        (run_id, customer_id, 300.0, 3, 300.0, 1, 3, 3, "At Risk", tier, as_of, None, None, "dormant", None, 0.4,
         0.3, value)
        for customer_id, tier, value in zip(ids, tiers, values)
    ]
    with bulk.raw_connection(db) as connection:
        bulk.begin_sqlite_write(connection)
        bulk.bulk_write(connection, "customers", (
            "customer_id", "joined_at", "channel", "community_member", "opted_out", "attributes", "placeholder",
            "first_paid_at", "last_paid_at", "paid_orders", "net_spend", "purchase_days", "updated_at",
        ), customer_rows, ("customer_id",))
        bulk.bulk_write(connection, "customer_scores", (
            "run_id", "customer_id", "recency_days", "frequency", "monetary", "r", "f", "m", "rfm_segment", "tier",
            "tier_since", "tier_pending_since", "spend_to_next_tier", "lifecycle", "community_layer", "p_alive",
            "expected_orders_90d", "expected_value_365d",
        ), score_rows, ("run_id", "customer_id"))


def publish_run(run_id: str, as_of: datetime) -> None:
    now = utcnow()
    with db.session() as session:
        session.add(Run(run_id=run_id, status="published", as_of=as_of, started_at=now, finished_at=now,
                        published_at=now, steps=[], metrics={}, trigger="bench", created_at=now))
        runs.set_pointer(session, runs.CURRENT_RUN, run_id)


def write_model(version: str, customers: int, skus: int, rng) -> None:
    """A catalogue and one for-you list per customer in Redis, then flip the served version to it."""
    popular = [[item, round(1.0 / (item + 1), 5)] for item in range(min(skus, 200))]
    catalogue = {
        "skus": [f"SKU{item:05d}" for item in range(skus)], "names": [f"item {item}" for item in range(skus)],
        "categories": ["c"] * skus, "prices": [10.0] * skus, "costs": [5.0] * skus, "active": [True] * skus,
        "in_stock": (rng.random(skus) > 0.05).tolist(), "repeat_purchase": [False] * skus, "abc": ["B"] * skus,
        "orders": list(range(skus, 0, -1)), "informativeness": [1.0] * skus, "popularity_weight": 1.0,
        "max_cart_items": 20, "popular": popular, "trending": [],
        "tier_popular": {tier: [int(item) for item in rng.choice(skus, 50, replace=False)] for tier in TIERS},
    }
    items = rng.integers(0, skus, size=(customers, FOR_YOU_LENGTH))
    scores = np.tile(np.linspace(1.0, 0.05, FOR_YOU_LENGTH), (customers, 1))
    # Each customer bought one item before (their first for-you item, so the build has to skip it).
    bought_indptr = np.arange(customers + 1)
    bought_indices = items[:, 0].copy()
    tier_codes = rng.integers(0, len(CUSTOMER_TIERS), customers).astype(np.uint8)
    payloads = encode_customer_lists(tier_codes, items, scores, bought_indptr, bought_indices)
    lists = zip((f"cust{number:07d}" for number in range(customers)), payloads)
    write_version(version, json.dumps(catalogue), {}, {}, lists)
    publish_version(version)


def bench(database_url: str, customers: int, skus: int) -> dict:
    prefix = f"segrec-bench-{uuid.uuid4().hex[:8]}"
    app = create_app({"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix,
                      "VAR_DIR": tempfile.gettempdir()})
    rng = np.random.default_rng(11)
    as_of = utcnow()
    run_id = runs.new_run_id(as_of)
    try:
        started = time.perf_counter()
        write_customers_and_scores(customers, run_id, as_of, rng)
        publish_run(run_id, as_of)
        write_model(run_id, customers, skus, rng)
        setup_seconds = time.perf_counter() - started

        request = {"name": "bench", "holdout_fraction": 0.1, "offer": {"kind": "percent_off", "value": 15},
                   "recommendations": {"limit": 5}}
        with db.session() as session:
            outcome = campaigns.create_win_back(session, app.config, uuid.uuid4().hex, request)
        campaign_id = outcome.campaign["campaign_id"]
        started = time.perf_counter()
        result = campaigns.build_campaign(campaign_id, app.config)
        build_seconds = time.perf_counter() - started
        with db.session() as session:
            campaign = campaigns.get_campaign(session, campaign_id)
        return {"setup_seconds": setup_seconds, "build_seconds": build_seconds, "steps": result.seconds,
                "campaign": campaign}
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}:*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start:start + 5000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--skus", type=int, default=2_000)
    parser.add_argument("--sqlite", action="store_true", help="a fresh SQLite file instead of PostgreSQL")
    args = parser.parse_args()
    if args.sqlite:
        path = Path(tempfile.mkdtemp()) / "bench.db"
        name, url = None, f"sqlite:///{path}"
    else:
        name, url = create_postgres_database()
    try:
        upgrade(url)
        figures = bench(url, args.customers, args.skus)
    finally:
        if name is not None:
            drop_postgres_database(name)
    campaign = figures["campaign"]
    database = "SQLite" if args.sqlite else "PostgreSQL"
    print(f"database            {database}")
    print(f"setup (not timed)   {figures['setup_seconds']:.1f} s")
    print(f"audience            {campaign['audience_size']:,} dormant customers")
    print(f"members             {campaign['treatment_size']:,} treatment + {campaign['control_size']:,} control")
    print(f"skipped             {campaign['skipped']}")
    print(f"build steps (s)     {figures['steps']}")
    print(f"BUILD               {figures['build_seconds']:.2f} s (target < 60 s)")


if __name__ == "__main__":
    main()
