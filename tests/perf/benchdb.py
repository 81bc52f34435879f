"""A demo shop in its own PostgreSQL database, built once and reused by the benchmarks.

Building a 1M-customer shop takes minutes, so benchmarks share one per size: the database
`segrec_bench_<customers>c_<skus>s` is created, migrated and seeded the first time, and marked
complete with a pointer row; a later benchmark reuses it. `--fresh` in a benchmark rebuilds it.
"""

from __future__ import annotations

import os
import time

import psycopg
from alembic import command
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, text

from shared.dbadmin import alembic_config, upgrade
from shared.models import Base
from services.admin.demo import seed_demo_shop
from shared.extensions import db

ADMIN_URL = os.environ.get("SEGREC_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SEEDED_MARKER = "bench_seeded"


def bench_database_url(name: str) -> str:
    """SQLAlchemy URL of a database on the benchmark server."""
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def ensure_bench_shop(customers: int, skus: int = 300, fresh: bool = False) -> str:
    """URL of a migrated database holding the demo shop of that size (built on first use)."""
    name = f"segrec_bench_{customers}c_{skus}s"
    url = bench_database_url(name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and fresh:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade(url)
    except CommandError:
        # Built under an earlier (unreleased) migration id: add any new tables and mark it current.
        # New columns are not added; rebuild with --fresh when a benchmark needs them.
        print(f"{name} was migrated by an older revision: creating missing tables and stamping head")
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM alembic_version"))
        engine.dispose()
        command.stamp(alembic_config(url), "head")
    db.configure(url)
    with db.engine.connect() as connection:
        seeded = connection.execute(text("SELECT value FROM pointers WHERE name = :name"),
                                    {"name": SEEDED_MARKER}).scalar_one_or_none()
    if seeded:
        print(f"reusing {name} (seeded {seeded})")
        return url
    started = time.perf_counter()
    summary = seed_demo_shop(db, customers=customers, skus=skus, progress=True)
    print(summary.describe())
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO pointers (name, value, updated_at) VALUES (:name, :value, now())"),
                           {"name": SEEDED_MARKER, "value": f"{time.perf_counter() - started:.0f}s"})
    settle()
    return url


def settle() -> None:
    """VACUUM (FREEZE, ANALYZE) the shop `db` is configured with, so every benchmark reads it in the same state.

    The first reads of a bulk-loaded table set the hint bits of every page (writes) while autovacuum makes its
    first pass: retrain runs on a shop seeded minutes before were 15-35 % slower than later ones without it.
    """
    # VACUUM cannot run inside a transaction block.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (FREEZE, ANALYZE)"))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build (or reuse) a benchmark shop")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=50_000)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--settle", action="store_true", help="VACUUM (FREEZE, ANALYZE) a shop built before")
    arguments = parser.parse_args()
    shop_url = ensure_bench_shop(arguments.customers, arguments.skus, arguments.fresh)
    if arguments.settle:
        settle()
    print(shop_url)
