"""REST ingest: idempotent upserts of customers, orders, events, products and promotions.

Every function takes records that already passed schema validation, writes them in the caller's
session (one transaction) and reports per record. A retried batch writes nothing twice: customers,
products and promotions are upserts, orders are keyed by order_id and compared by content (written by
the one order writer, shared.ingest.bulk.write_orders, as the CSV import and the demo shop write them),
events by a content key.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy.orm import Session

from shared.ingest.aggregates import refresh_customer_aggregates
from shared.ingest.bulk import write_orders
from shared.ingest.columns import CUSTOMER_FIELDS, PRODUCT_FIELDS, PROMOTION_FIELDS
from shared.ingest.common import (
    BatchOutcome,
    existing_ids,
    insert_ignoring_duplicates,
    to_naive_utc,
    upsert,
    utcnow,
)
from shared.ingest.orders import LineColumns, OrderChunk, chunk_of_orders
from shared.models import Customer, Event, Product, Promotion

EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


# ---- customers ---------------------------------------------------------------------------------


def upsert_customers(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert or update customers; a later record with the same id in one batch wins."""

    def prepare(row: dict) -> None:
        row["placeholder"] = False
        row["joined_at"] = to_naive_utc(row["joined_at"]) if row["joined_at"] else None
        row["community_member"] = bool(row["community_member"])
        row["opted_out"] = bool(row["opted_out"])
        row["attributes"] = row["attributes"] or {}

    return _upsert_latest(session, Customer.__table__, "customer_id", CUSTOMER_FIELDS, records, prepare)


def _upsert_latest(session: Session, table, key_column: str, fields: tuple[str, ...],
                   records: list[tuple[int, dict]], prepare) -> BatchOutcome:
    """Upsert the last record per key with `fields` (shaped by `prepare(row)`), counting created and updated."""
    latest = {record[key_column]: record for _index, record in records}
    existing = existing_ids(session, table.c[key_column], list(latest))
    now = utcnow()
    rows = []
    for key, record in latest.items():
        row = {key_column: key, "updated_at": now}
        for name in fields:
            row[name] = record.get(name)
        prepare(row)
        rows.append(row)
    update_columns = [name for name in rows[0] if name != key_column] if rows else []
    upsert(session, table, rows, [key_column], update_columns)
    outcome = BatchOutcome(accepted=len(records))
    outcome.updated = sum(1 for key in latest if key in existing)
    outcome.created = len(latest) - outcome.updated
    return outcome


# ---- orders ------------------------------------------------------------------------------------


def upsert_orders(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert new orders, apply status moves, ignore identical re-sends, reject conflicting changes."""
    outcome = BatchOutcome()
    unique = _first_of_each_order(records, outcome)
    if not unique:
        return outcome
    chunk = order_chunk(unique)
    # The order writer works on the DBAPI connection, inside this session's transaction.
    written = write_orders(session.connection().connection, chunk)
    record_indexes = chunk.source
    for rejection in written.rejects:
        position = int(np.searchsorted(chunk.starts, rejection.start))
        outcome.reject(record_indexes[position], rejection.order_id, rejection.record_errors())
    outcome.created, outcome.updated, outcome.unchanged = written.created, written.updated, written.unchanged
    outcome.accepted = len(unique) - len(written.rejects)
    refresh_customer_aggregates(session, written.touched)
    return outcome


def _first_of_each_order(records: list[tuple[int, dict]], outcome: BatchOutcome) -> list[tuple[int, dict]]:
    """The records in order, rejecting any that repeats an order_id of the batch."""
    first_index: dict[str, int] = {}
    unique: list[tuple[int, dict]] = []
    for index, record in records:
        order_id = record["order_id"]
        if order_id in first_index:
            outcome.reject(
                index,
                order_id,
                {"order_id": [f"appears more than once in this batch (first at index {first_index[order_id]})"]},
            )
            continue
        first_index[order_id] = index
        unique.append((index, record))
    return unique


def order_chunk(records: list[tuple[int, dict]]) -> OrderChunk:
    """Validated order records (distinct order ids) as an OrderChunk; its source is their batch indexes."""
    skus: list[str] = []
    quantities: list[int] = []
    prices: list[float] = []
    starts: list[int] = []
    for _index, record in records:
        starts.append(len(skus))
        for line in record["lines"]:
            skus.append(line["sku"])
            quantities.append(int(line["quantity"]))
            prices.append(float(line["unit_price"]))
    bounds = np.array([*starts, len(skus)], dtype=np.int64)
    placed = [(to_naive_utc(record["placed_at"]) - EPOCH) // _MICROSECOND for _index, record in records]
    lines = LineColumns(skus, np.array(quantities, dtype=np.int64), np.array(prices, dtype=np.float64),
                        bounds[:-1], bounds[1:])
    return chunk_of_orders(
        [record["order_id"] for _index, record in records],
        [record["customer_id"] for _index, record in records],
        np.array(placed, dtype=np.int64),
        [record["status"] for _index, record in records],
        lines,
        source=[index for index, _record in records],
    )


# ---- events ------------------------------------------------------------------------------------


def event_content_key(customer_id: str, event_type: str, sku: str | None, occurred_at: datetime) -> str:
    """sha256 of an event's content (for events sent without an event_id); occurred_at naive UTC."""
    content = "|".join([customer_id, event_type, sku or "", occurred_at.isoformat(timespec="microseconds")])
    return hashlib.sha256(content.encode()).hexdigest()


def event_key(record: dict) -> str:
    """The client's event_id when given, else a hash of the event's content."""
    if record.get("event_id"):
        return hashlib.sha256(f"id:{record['event_id']}".encode()).hexdigest()
    return event_content_key(record["customer_id"], record["type"], record.get("sku"),
                             to_naive_utc(record["occurred_at"]))


def insert_events(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert events, skipping ones already stored (same event_id or same content)."""
    outcome = BatchOutcome()
    rows_by_key: dict[str, dict] = {}
    for _index, record in records:
        key = event_key(record)
        rows_by_key[key] = {
            "event_key": key,
            "customer_id": record["customer_id"],
            "type": record["type"],
            "sku": record.get("sku"),
            "occurred_at": to_naive_utc(record["occurred_at"]),
        }
    already = existing_ids(session, Event.event_key, list(rows_by_key))
    insert_ignoring_duplicates(session, Event.__table__, list(rows_by_key.values()), ["event_key"])
    outcome.accepted = len(records)
    outcome.created = len(rows_by_key) - len(already)
    outcome.unchanged = len(records) - outcome.created
    return outcome


# ---- catalogue -----------------------------------------------------------------------------------


def upsert_products(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert or update products; a real record replaces a placeholder."""

    def prepare(row: dict) -> None:
        row["placeholder"] = False
        row["active"] = True if row["active"] is None else bool(row["active"])
        row["repeat_purchase"] = bool(row["repeat_purchase"])

    return _upsert_latest(session, Product.__table__, "sku", PRODUCT_FIELDS, records, prepare)


def upsert_promotions(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert or update promotions."""

    def prepare(row: dict) -> None:
        row["starts_at"] = to_naive_utc(row["starts_at"])
        row["ends_at"] = to_naive_utc(row["ends_at"])
        row["discount"] = row["discount"] or 0

    return _upsert_latest(session, Promotion.__table__, "promotion_id", PROMOTION_FIELDS, records, prepare)
