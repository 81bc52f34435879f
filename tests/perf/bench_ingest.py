"""Ingest benchmark: CSV import (COPY on PostgreSQL vs executemany on SQLite) and REST batch ingest.

Not collected by pytest. Run:  .venv/bin/python tests/perf/bench_ingest.py --lines 1000000

1. Writes an orders CSV of about --lines order lines from the demo generator.
2. Imports it into a throwaway PostgreSQL database (segrec_bench_<hex>, migrated, dropped after)
   and into a fresh SQLite file; then imports it again (every order unchanged).
3. Starts gunicorn (segmentation service) on 127.0.0.1 against another throwaway PostgreSQL
   database and posts batches of 1,000 orders for at most --rest-seconds.
Prints one table.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.admin.demo import generate_shop  # noqa: E402
from shared.dbadmin import upgrade  # noqa: E402
from shared.extensions import db  # noqa: E402
from shared.ingest import import_csv  # noqa: E402

ADMIN_URL = os.environ.get("SEGREC_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
EPOCH = datetime(1970, 1, 1)


def orders_from_demo(lines: int, seed: int, prefix: str = ""):
    """Yield (order_id, customer_id, placed_at text, status, [(sku, quantity, price)]) until about `lines` lines."""
    customers = max(100, int(lines / 9.5))
    iterator = generate_shop(customers, seed)
    shop = next(iterator)
    skus = shop.catalogue.skus
    produced = 0
    for block in iterator:
        bounds = np.searchsorted(block.line_order, np.arange(len(block.order_ids) + 1)).tolist()
        line_sku = block.line_sku.tolist()
        quantity = block.line_quantity.tolist()
        price = block.line_unit_price.tolist()
        for order, customer in enumerate(block.order_customer.tolist()):
            if produced >= lines:
                return
            start, end = bounds[order], bounds[order + 1]
            placed = (EPOCH + timedelta(seconds=int(block.placed_at[order]))).strftime("%Y-%m-%d %H:%M:%S")
            order_lines = [(skus[line_sku[i]], quantity[i], price[i]) for i in range(start, end)]
            produced += len(order_lines)
            yield prefix + block.order_ids[order], block.customer_ids[customer], placed, block.status[order], order_lines


def write_orders_csv(path: Path, lines: int, seed: int) -> int:
    """The orders CSV; returns the number of data rows."""
    rows = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "customer_id", "placed_at", "sku", "quantity", "unit_price", "status"])
        for order_id, customer_id, placed, status, order_lines in orders_from_demo(lines, seed):
            for sku, quantity, price in order_lines:
                writer.writerow([order_id, customer_id, placed, sku, quantity, f"{price:.2f}", status])
                rows += 1
    return rows


def create_database() -> tuple[str, str]:
    name = f"segrec_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    upgrade(url)
    return name, url


def drop_database(name: str) -> None:
    db.dispose()
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed_import(url: str, path: Path):
    db.configure(url)
    first = import_csv("orders", path, db, progress=False)
    again = import_csv("orders", path, db, progress=False)
    db.dispose()
    return first, again


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rest_benchmark(seconds: float, batch_size: int, workers: int, lines: int) -> dict:
    """Orders per second through POST /v1/orders on gunicorn, against a fresh PostgreSQL database."""
    from shared.auth import create_key

    name, url = create_database()
    server = None
    try:
        db.configure(url)
        with db.session() as session:
            _row, key = create_key(session, "bench", ["ingest:write"])
        db.dispose()
        port = free_port()
        env = dict(os.environ, DATABASE_URL=url, REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                   REDIS_PREFIX=f"segrec-bench-{uuid.uuid4().hex[:6]}", PYTHONPATH=str(REPO))
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-w", str(workers), "-b", f"127.0.0.1:{port}",
             "--log-level", "warning", "services.segmentation.app:create_app()"],
            cwd=REPO, env=env,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.2)
        http = requests.Session()
        headers = {"Authorization": f"Bearer {key}"}
        batch: list[dict] = []
        orders = created = line_count = 0
        started = time.perf_counter()
        for order_id, customer_id, placed, status, order_lines in orders_from_demo(lines, seed=11, prefix="R"):
            batch.append({
                "order_id": order_id, "customer_id": customer_id, "placed_at": placed.replace(" ", "T") + "Z",
                "status": status,
                "lines": [{"sku": sku, "quantity": quantity, "unit_price": price} for sku, quantity, price in order_lines],
            })
            line_count += len(order_lines)
            if len(batch) < batch_size:
                continue
            response = http.post(f"{base}/v1/orders", json=batch, headers=headers, timeout=120)
            response.raise_for_status()
            created += response.json()["created"]
            orders += len(batch)
            batch = []
            if time.perf_counter() - started > seconds:
                break
        elapsed = time.perf_counter() - started
        return {"orders": orders, "created": created, "seconds": elapsed, "lines": line_count}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rest-seconds", type=float, default=30.0)
    parser.add_argument("--rest-batch", type=int, default=1000)
    parser.add_argument("--rest-workers", type=int, default=2)
    parser.add_argument("--skip-rest", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="segrec-bench-"))
    csv_path = workdir / "orders.csv"
    started = time.perf_counter()
    rows = write_orders_csv(csv_path, args.lines, args.seed)
    print(f"generated {rows:,} order lines ({csv_path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)

    name, url = create_database()
    try:
        pg_first, pg_again = timed_import(url, csv_path)
    finally:
        drop_database(name)
    print(f"postgresql: {pg_first.rows_per_second:,.0f} lines/s", flush=True)
    sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(sqlite_url)
    sqlite_first, sqlite_again = timed_import(sqlite_url, csv_path)
    print(f"sqlite: {sqlite_first.rows_per_second:,.0f} lines/s", flush=True)
    rest = None
    if not args.skip_rest:
        rest = rest_benchmark(args.rest_seconds, args.rest_batch, args.rest_workers, args.lines)

    print()
    print(f"{'':34}{'PostgreSQL':>14}{'SQLite':>14}{'PG / SQLite':>14}")
    for label, pg, lite in (
        ("CSV import, new (lines/s)", pg_first, sqlite_first),
        ("CSV re-import, unchanged (lines/s)", pg_again, sqlite_again),
    ):
        ratio = pg.rows_per_second / lite.rows_per_second if lite.rows_per_second else float("nan")
        print(f"{label:34}{pg.rows_per_second:>14,.0f}{lite.rows_per_second:>14,.0f}{ratio:>13.2f}x")
    print(f"{'  seconds (new / re-import)':34}{pg_first.seconds:>7.1f}/{pg_again.seconds:<6.1f}"
          f"{sqlite_first.seconds:>7.1f}/{sqlite_again.seconds:<6.1f}")
    print(f"{'  orders created / unchanged':34}{pg_first.created:>14,}{sqlite_first.created:>14,}")
    print(f"{'  re-import unchanged':34}{pg_again.unchanged:>14,}{sqlite_again.unchanged:>14,}")
    if rest:
        orders_per_second = rest["orders"] / rest["seconds"]
        print(f"{'REST POST /v1/orders (orders/s)':34}{orders_per_second:>14,.0f}"
              f"   ({rest['orders']:,} orders, {rest['lines']:,} lines, batches of {args.rest_batch}, "
              f"gunicorn -w {args.rest_workers}, one client, {rest['seconds']:.1f} s)")
        print(f"{'REST lines/s':34}{rest['lines'] / rest['seconds']:>14,.0f}")
    csv_path.unlink()
    (workdir / "bench.db").unlink(missing_ok=True)
    for leftover in workdir.glob("bench.db-*"):
        leftover.unlink()
    workdir.rmdir()


if __name__ == "__main__":
    main()
