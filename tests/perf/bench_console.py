"""Console page benchmark: server time of each /console page on a shop of --customers scored customers.

Not collected by pytest. Run:  .venv/bin/python -m tests.perf.bench_console [--customers 1000000] [--sqlite]

1. Creates a throwaway PostgreSQL database (dropped after), or a fresh SQLite file with --sqlite, and writes
   --customers customers with score rows under two published runs (about 12 % of them change tier or
   lifecycle stage between the runs), and a recommendation model in Redis under its own prefix (deleted after).
2. Signs in to the console with an admin key through the test client and requests every page: the first
   request of a page after a publish (the overview and movements pages compute the run's aggregates then and
   cache them in Redis by run id) and the median of --repeat later requests. Target: under 300 ms per page.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import uuid
from datetime import timedelta

import numpy as np
import redis

from services.segmentation.app import create_app
from shared import bulk, runs
from shared.auth import create_key
from shared.extensions import db
from shared.ingest import utcnow
from shared.models import Run
from tests.perf.bench_campaigns import (
    REDIS_URL,
    create_postgres_database,
    drop_postgres_database,
    write_model,
)

TIERS = ("regular", "silver", "gold", "black")
STAGES = ("new", "first_order_only", "active", "dormant", "churned")
LAYERS = ("potential", "active", "high_value", None)
SEGMENTS = ("Champions", "Loyal", "Potential Loyalist", "New", "Promising", "Need Attention", "About to Sleep",
            "At Risk", "Can't Lose Them", "Hibernating", "Lost")
SCORE_COLUMNS = (
    "run_id", "customer_id", "recency_days", "frequency", "monetary", "r", "f", "m", "rfm_segment", "tier",
    "tier_since", "tier_pending_since", "spend_to_next_tier", "lifecycle", "community_layer", "p_alive",
    "expected_orders_90d", "expected_value_365d",
)
PAGES = {
    "overview": "/console/overview",
    "movements": "/console/movements",
    "explorer (tier=gold)": "/console/explorer?go=1&tier=gold",
    "explorer (dormant, EV>=200)": "/console/explorer?go=1&lifecycle=dormant&ev_min=200",
    "audience count (campaign form)": "/console/audience-count?lifecycle=dormant",
    "flow (silver -> gold)": None,
    "customer": "/console/customer?customer_id=cust0000042",
    "campaigns": "/console/campaigns",
    "recommendations": "/console/recommendations?sku=SKU00001&cart=SKU00001+2",
    "runs": "/console/runs",
}


def score_rows(run_id: str, ids: list[str], as_of, rng, moved: np.ndarray | None, base: dict | None) -> dict:
    """Random but plausible scores; with `base`, the same customers with `moved` ones in another tier/stage."""
    count = len(ids)
    columns = base or {
        "r": rng.integers(1, 6, count), "f": rng.integers(1, 6, count), "m": rng.integers(1, 6, count),
        "tier": rng.choice(len(TIERS), count, p=(0.6, 0.25, 0.1, 0.05)),
        "stage": rng.choice(len(STAGES), count, p=(0.1, 0.2, 0.4, 0.2, 0.1)),
        "layer": rng.choice(len(LAYERS), count), "segment": rng.integers(0, len(SEGMENTS), count),
        "monetary": np.round(rng.gamma(2.0, 300.0, count), 2), "value": np.round(rng.gamma(2.0, 150.0, count), 2),
    }
    tiers, stages = columns["tier"].copy(), columns["stage"].copy()
    if moved is not None:
        tiers[moved] = np.minimum(tiers[moved] + 1, len(TIERS) - 1)
        stages[moved] = (stages[moved] + 1) % len(STAGES)
    rows = [
        (run_id, customer_id, float(30 * (6 - r)), int(f), float(monetary), int(r), int(f), int(m),
         SEGMENTS[segment], TIERS[tier], as_of, None, 100.0, STAGES[stage], LAYERS[layer], 0.6, 0.4, float(value))
        for customer_id, r, f, m, tier, stage, layer, segment, monetary, value in zip(
            ids, columns["r"], columns["f"], columns["m"], tiers, stages, columns["layer"], columns["segment"],
            columns["monetary"], columns["value"])
    ]
    with bulk.raw_connection(db) as connection:
        bulk.begin_sqlite_write(connection)
        bulk.bulk_write(connection, "customer_scores", SCORE_COLUMNS, rows, ("run_id", "customer_id"))
    return columns


def write_shop(customers: int, skus: int) -> tuple[str, str]:
    """Customers, two published runs of scores and a model; returns (previous run, current run)."""
    rng = np.random.default_rng(5)
    now = utcnow()
    ids = [f"cust{number:07d}" for number in range(customers)]
    customer_rows = [(customer_id, now - timedelta(days=400), "web", False, False, {}, False, None, None, 0, 0.0, 0,
                      now) for customer_id in ids]
    with bulk.raw_connection(db) as connection:
        bulk.begin_sqlite_write(connection)
        bulk.bulk_write(connection, "customers", (
            "customer_id", "joined_at", "channel", "community_member", "opted_out", "attributes", "placeholder",
            "first_paid_at", "last_paid_at", "paid_orders", "net_spend", "purchase_days", "updated_at",
        ), customer_rows, ("customer_id",))
    run_ids = []
    base = None
    for number in range(2):
        as_of = now - timedelta(days=1 - number)
        run_id = runs.new_run_id(as_of)
        moved = rng.random(customers) < 0.12 if base is not None else None
        base = score_rows(run_id, ids, as_of, rng, moved, base)
        with db.session() as session:
            session.add(Run(run_id=run_id, status="published", as_of=as_of, started_at=as_of, finished_at=as_of,
                            published_at=as_of, trigger="bench", created_at=as_of, metrics={},
                            steps=[{"name": "score_customers", "status": "succeeded", "seconds": 1.0}]))
            if run_ids:
                runs.set_pointer(session, runs.PREVIOUS_RUN, run_ids[-1])
            runs.set_pointer(session, runs.CURRENT_RUN, run_id)
        run_ids.append(run_id)
    write_model(run_ids[-1], min(customers, 50_000), skus, rng)
    if db.dialect == "postgresql":
        with db.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    return run_ids[0], run_ids[1]


def signed_in_client(app):
    """A test client with a console session for a new admin key."""
    with db.session() as session:
        _row, raw_key = create_key(session, "bench-admin", ["admin"])
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/login").get_data(as_text=True))
    response = client.post("/console/login", data={"api_key": raw_key, "csrf_token": token.group(1)})
    assert response.status_code == 302, response.status_code
    return client


def time_page(client, path: str, repeat: int) -> tuple[float, float]:
    """(first request ms, median ms of the next `repeat`), each fully read."""
    timings = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        response = client.get(path)
        response.get_data()
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:300])
    return timings[0], statistics.median(timings[1:])


def bench(database_url: str, customers: int, skus: int, repeat: int) -> None:
    prefix = f"segrec-bench-{uuid.uuid4().hex[:8]}"
    app = create_app({"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix,
                      "VAR_DIR": tempfile.gettempdir(), "SECRET_KEY": uuid.uuid4().hex})
    try:
        started = time.perf_counter()
        previous_run, current_run = write_shop(customers, skus)
        print(f"shop: {customers} customers x 2 runs written in {time.perf_counter() - started:.0f} s "
              f"({db.dialect})")
        client = signed_in_client(app)
        pages = dict(PAGES)
        pages["flow (silver -> gold)"] = (f"/console/movements/flow?dimension=tier&from_run={previous_run}"
                                          f"&to_run={current_run}&from=silver&to=gold")
        print(f"{'page':34} {'first ms':>10} {'median ms':>10}")
        for name, path in pages.items():
            first, median = time_page(client, path, repeat)
            print(f"{name:34} {first:10.1f} {median:10.1f}")
    finally:
        client_redis = redis.Redis.from_url(REDIS_URL)
        keys = list(client_redis.scan_iter(f"{prefix}:*", count=5000))
        for start in range(0, len(keys), 5000):
            client_redis.delete(*keys[start:start + 5000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sqlite", action="store_true", help="a fresh SQLite file instead of PostgreSQL")
    arguments = parser.parse_args()
    if arguments.sqlite:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/bench-console.db"
            from shared.dbadmin import upgrade

            upgrade(url)
            bench(url, arguments.customers, arguments.skus, arguments.repeat)
            db.dispose()
        return
    name, url = create_postgres_database()
    try:
        from shared.dbadmin import upgrade

        upgrade(url)
        bench(url, arguments.customers, arguments.skus, arguments.repeat)
    finally:
        drop_postgres_database(name)


if __name__ == "__main__":
    main()
