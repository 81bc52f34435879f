"""What the console's charts need from a run, computed once per run and cached in Redis by run id.

A run's scores never change after it is published, so its counts, R x F grid and transitions are
computed the first time any page asks (one scan of the run's rows) and kept under
`<prefix>:console:<what>:<run ids>` for CONSOLE_AGGREGATE_TTL_SECONDS. Pages then read one Redis key
instead of scanning up to a million rows per view. Live numbers (orders in the last 30 days) are
cached for a minute.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import orjson
import redis
from cachetools import LRUCache
from sqlalchemy import func, select

from services.segmentation import segments
from shared.extensions import db, redis_store
from shared.ingest import utcnow
from shared.models import CustomerScore, Order

log = logging.getLogger("segrec.console.aggregates")

COUNTED_DIMENSIONS = ("tier", "lifecycle", "community_layer", "rfm_segment")
GRID_SIZE = 5
# The audience cube: customers per combination of these fields, so any audience built from them is counted
# by summing cells (at most 4 x 6 x 11 x 4 x 5 x 5 of them) instead of scanning the run.
CUBE_FIELDS = ("tier", "lifecycle", "rfm_segment", "community_layer", "r", "f")
# A run's numbers never change, so each process also keeps the parsed cubes and the audience sizes it has
# worked out (a cube of a 1M-customer run is about 1 MB of JSON: parsing and summing it per request is not free).
_cubes: LRUCache = LRUCache(maxsize=4)
_sizes: LRUCache = LRUCache(maxsize=20_000)
_local_lock = threading.Lock()


def cached(key: str, ttl_seconds: int, compute):
    """The JSON value under key, or compute() stored there; Redis being down only costs the cache."""
    full_key = redis_store.key("console", key)
    try:
        payload = redis_store.client.get(full_key)
        if payload is not None:
            return orjson.loads(payload)
    except redis.RedisError as error:
        log.warning("console cache unavailable: %s", error)
        return compute()
    value = compute()
    try:
        redis_store.client.set(full_key, orjson.dumps(value), ex=int(ttl_seconds))
    except redis.RedisError as error:
        log.warning("console cache not written: %s", error)
    return value


def compute_run_aggregates(run_id: str) -> dict:
    """Customers, counts per value of each dimension, and the R x F grid (count and average spend)."""
    with db.session() as session:
        counts = {}
        for dimension in COUNTED_DIMENSIONS:
            column = getattr(CustomerScore, dimension)
            rows = session.execute(
                select(column, func.count()).where(CustomerScore.run_id == run_id).group_by(column)
            ).all()
            counts[dimension] = {str(value) if value is not None else "": int(count) for value, count in rows}
        grid_rows = session.execute(
            select(CustomerScore.r, CustomerScore.f, func.count(), func.avg(CustomerScore.monetary))
            .where(CustomerScore.run_id == run_id)
            .group_by(CustomerScore.r, CustomerScore.f)
        ).all()
    grid = [
        {"r": int(r), "f": int(f), "customers": int(count), "avg_monetary": round(float(average or 0.0), 2)}
        for r, f, count, average in grid_rows
    ]
    return {"run_id": run_id, "customers": sum(counts["tier"].values()), "counts": counts, "grid": grid}


def compute_audience_cube(run_id: str) -> list[list]:
    """[tier, lifecycle, rfm_segment, community_layer, r, f, customers] for every combination present in a run."""
    columns = [getattr(CustomerScore, name) for name in CUBE_FIELDS]
    with db.session() as session:
        rows = session.execute(
            select(*columns, func.count()).where(CustomerScore.run_id == run_id).group_by(*columns)
        ).all()
    return [[*row[:-1], int(row[-1])] for row in rows]


def audience_cube(run_id: str, ttl_seconds: int) -> list[list]:
    """A run's audience cube, cached by run id in Redis and in this process."""
    with _local_lock:
        cube = _cubes.get(run_id)
    if cube is None:
        cube = cached(f"cube:{run_id}", ttl_seconds, lambda: compute_audience_cube(run_id))
        with _local_lock:
            _cubes[run_id] = cube
    return cube


def count_from_cube(cube: list[list], filters: dict) -> int | None:
    """An audience's size from the cube; None when it filters on a field the cube does not hold."""
    if any(name not in CUBE_FIELDS for name in filters):
        return None
    tests = []
    for name, wanted in filters.items():
        position = CUBE_FIELDS.index(name)
        if isinstance(wanted, dict):
            low = max((wanted[op] for op in ("gte", "gt") if op in wanted), default=None)
            high = min((wanted[op] for op in ("lte", "lt") if op in wanted), default=None)
            if "gt" in wanted or "lt" in wanted:
                return None
            tests.append(lambda cell, p=position, lo=low, hi=high: (lo is None or cell[p] >= lo)
                         and (hi is None or cell[p] <= hi))
        else:
            allowed = set(wanted)
            tests.append(lambda cell, p=position, values=allowed: cell[p] in values)
    return sum(cell[-1] for cell in cube if all(test(cell) for test in tests))


def audience_size(run_id: str, filters: dict, ttl_seconds: int) -> int:
    """How many customers of a run match an audience: from the cube, else counted once and cached."""
    key = "count:" + run_id + ":" + orjson.dumps(filters, option=orjson.OPT_SORT_KEYS).decode()
    with _local_lock:
        known = _sizes.get(key)
    if known is not None:
        return known
    counted = count_from_cube(audience_cube(run_id, ttl_seconds), filters)
    if counted is None:
        counted = cached(key, ttl_seconds, lambda: _count_audience(run_id, filters))
    with _local_lock:
        _sizes[key] = counted
    return counted


def _count_audience(run_id: str, filters: dict) -> int:
    with db.session() as session:
        members = segments.audience_statement(run_id, filters).subquery()
        return int(session.execute(select(func.count()).select_from(members)).scalar_one())


def precompute(run_id: str, previous_run_id: str | None, ttl_seconds: int) -> None:
    """Compute and cache a run's console aggregates now (a publish step can call this after the flip)."""
    run_aggregates(run_id, ttl_seconds)
    audience_cube(run_id, ttl_seconds)
    if previous_run_id and previous_run_id != run_id:
        for dimension in ("tier", "lifecycle"):
            transitions(dimension, previous_run_id, run_id, ttl_seconds)


def run_aggregates(run_id: str, ttl_seconds: int) -> dict:
    """A run's aggregates, from the cache when another page view computed them already."""
    return cached(f"run:{run_id}", ttl_seconds, lambda: compute_run_aggregates(run_id))


def transitions(dimension: str, from_run: str, to_run: str, ttl_seconds: int) -> dict:
    """Moves between two runs along one dimension (segments.transitions), cached per pair of runs."""

    def compute() -> dict:
        with db.session() as session:
            return segments.transitions(session, dimension, from_run, to_run)

    return cached(f"transitions:{dimension}:{from_run}:{to_run}", ttl_seconds, compute)


def paid_orders_last_days(days: int, ttl_seconds: int) -> int:
    """Paid orders placed in the last `days` days (a live number, cached briefly)."""

    def compute() -> int:
        since = utcnow() - timedelta(days=days)
        with db.session() as session:
            return int(session.execute(
                select(func.count()).where(Order.placed_at >= since, Order.status == "paid")
            ).scalar_one())

    return cached(f"paid-orders:{days}d", ttl_seconds, compute)


def change(current: dict, previous: dict | None) -> dict:
    """Per dimension and value: the count now and its change since the previous run (None without one)."""
    result = {}
    for dimension in COUNTED_DIMENSIONS:
        now = current["counts"].get(dimension, {})
        before = (previous or {}).get("counts", {}).get(dimension, {})
        result[dimension] = {
            value: (count - before.get(value, 0)) if previous else None for value, count in now.items()
        }
    result["customers"] = current["customers"] - previous["customers"] if previous else None
    return result
