"""Ingest: idempotent upserts of customers, orders, events, products and promotions.

Every function takes records that already passed schema validation, writes them in one transaction
and reports per record. A retried batch writes nothing twice: customers, products and promotions are
upserts, orders are keyed by order_id and compared by content, events by a content key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import String, bindparam, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from shared.extensions import DEFAULT_SHOP_TIMEZONE

from shared.models import Customer, Event, Order, OrderLine, Product, Promotion

# Allowed status moves for a known order; anything else with the same content is a conflict.
STATUS_TRANSITIONS = {("paid", "refunded"), ("paid", "cancelled")}
# Bound the IN lists and multi-row inserts so PostgreSQL and SQLite parameter limits are never hit.
CHUNK = 500


@dataclass
class BatchOutcome:
    """Per-record answer of a batch write."""

    accepted: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[dict] = field(default_factory=list)

    def reject(self, index: int, record_id: str | None, errors: dict) -> None:
        """Record one rejected record with its errors."""
        self.rejected.append({"index": index, "id": record_id, "errors": errors})

    def as_dict(self) -> dict:
        """The JSON answer of API.md, plus the created/updated/unchanged split."""
        return {
            "accepted": self.accepted,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": sorted(self.rejected, key=lambda item: item["index"]),
        }


def utcnow() -> datetime:
    """Now, as the naive UTC the database stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    """Convert an aware datetime to naive UTC; naive inputs are taken as UTC already."""
    if value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(session: Session, table):
    """INSERT that knows ON CONFLICT for the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring_duplicates(session: Session, table, rows: list[dict], key_columns: list[str]) -> None:
    """Insert rows, skipping those whose key already exists (INSERT ... ON CONFLICT DO NOTHING)."""
    for chunk in _chunks(rows):
        statement = dialect_insert(session, table).values(list(chunk))
        session.execute(statement.on_conflict_do_nothing(index_elements=key_columns))


def upsert(session: Session, table, rows: list[dict], key_columns: list[str], update_columns: list[str]) -> None:
    """Insert rows or update the named columns of existing ones (INSERT ... ON CONFLICT DO UPDATE)."""
    for chunk in _chunks(rows):
        statement = dialect_insert(session, table).values(list(chunk))
        statement = statement.on_conflict_do_update(
            index_elements=key_columns,
            set_={column: statement.excluded[column] for column in update_columns},
        )
        session.execute(statement)


# ---- customers ---------------------------------------------------------------------------------

CUSTOMER_FIELDS = ("joined_at", "channel", "community_member", "opted_out", "attributes")


def upsert_customers(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert or update customers; a later record with the same id in one batch wins."""
    outcome = BatchOutcome()
    latest: dict[str, dict] = {}
    for _index, record in records:
        latest[record["customer_id"]] = record
    existing = _existing_ids(session, Customer.customer_id, list(latest))
    now = utcnow()
    rows = []
    for customer_id, record in latest.items():
        row = {"customer_id": customer_id, "placeholder": False, "updated_at": now}
        for name in CUSTOMER_FIELDS:
            row[name] = record.get(name)
        row["joined_at"] = to_naive_utc(row["joined_at"]) if row["joined_at"] else None
        row["community_member"] = bool(row["community_member"])
        row["opted_out"] = bool(row["opted_out"])
        row["attributes"] = row["attributes"] or {}
        rows.append(row)
    upsert(session, Customer.__table__, rows, ["customer_id"], [*CUSTOMER_FIELDS, "placeholder", "updated_at"])
    outcome.accepted = len(records)
    outcome.updated = sum(1 for customer_id in latest if customer_id in existing)
    outcome.created = len(latest) - outcome.updated
    return outcome


def _existing_ids(session: Session, column, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(session.execute(select(column).where(column.in_(chunk))).scalars())
    return found


def ensure_placeholder_customers(session: Session, customer_ids: Iterable[str]) -> None:
    """Create a placeholder row for each customer an order names but we were never sent."""
    now = utcnow()
    rows = [
        {"customer_id": customer_id, "placeholder": True, "updated_at": now, "attributes": {}}
        for customer_id in sorted(set(customer_ids))
    ]
    insert_ignoring_duplicates(session, Customer.__table__, rows, ["customer_id"])


def ensure_placeholder_products(session: Session, skus: Iterable[str]) -> None:
    """Create a placeholder product for each sku an order line names that the catalogue lacks."""
    now = utcnow()
    rows = [
        {"sku": sku, "name": sku, "price": 0, "active": False, "placeholder": True, "updated_at": now}
        for sku in sorted(set(skus))
    ]
    insert_ignoring_duplicates(session, Product.__table__, rows, ["sku"])


# ---- orders ------------------------------------------------------------------------------------


def order_content_hash(customer_id: str, placed_at: datetime, lines: list[dict]) -> str:
    """sha256 of what may never change about an order: its customer, its time and its lines."""
    canonical = {
        "customer_id": customer_id,
        "placed_at": to_naive_utc(placed_at).isoformat(timespec="seconds"),
        "lines": [[line["sku"], int(line["quantity"]), f"{float(line['unit_price']):.2f}"] for line in lines],
    }
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def order_total(lines: list[dict]) -> float:
    """Sum of quantity times unit price, rounded to cents."""
    return round(sum(int(line["quantity"]) * float(line["unit_price"]) for line in lines), 2)


def upsert_orders(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert new orders, apply status moves, ignore identical re-sends, reject conflicting changes."""
    outcome = BatchOutcome()
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

    stored = _stored_orders(session, [record["order_id"] for _index, record in unique])
    now = utcnow()
    new_orders: list[dict] = []
    new_lines: list[dict] = []
    status_changes: dict[str, list[str]] = {}
    touched_customers: set[str] = set()
    for index, record in unique:
        order_id = record["order_id"]
        content_hash = order_content_hash(record["customer_id"], record["placed_at"], record["lines"])
        previous = stored.get(order_id)
        if previous is None:
            new_orders.append(
                {
                    "order_id": order_id,
                    "customer_id": record["customer_id"],
                    "placed_at": to_naive_utc(record["placed_at"]),
                    "status": record["status"],
                    "total": order_total(record["lines"]),
                    "content_hash": content_hash,
                    "updated_at": now,
                }
            )
            for line_no, line in enumerate(record["lines"], start=1):
                new_lines.append(
                    {
                        "order_id": order_id,
                        "line_no": line_no,
                        "sku": line["sku"],
                        "quantity": int(line["quantity"]),
                        "unit_price": float(line["unit_price"]),
                    }
                )
            touched_customers.add(record["customer_id"])
            outcome.created += 1
        elif previous[0] != content_hash:
            outcome.reject(
                index,
                order_id,
                {"order_id": ["an order with this id and different customer, time or lines already exists"]},
            )
            continue
        elif previous[1] == record["status"]:
            outcome.unchanged += 1
        elif (previous[1], record["status"]) in STATUS_TRANSITIONS:
            status_changes.setdefault(record["status"], []).append(order_id)
            touched_customers.add(record["customer_id"])
            outcome.updated += 1
        else:
            outcome.reject(
                index,
                order_id,
                {"status": [f"cannot move an order from {previous[1]} to {record['status']}"]},
            )
            continue
        outcome.accepted += 1

    if new_orders:
        ensure_placeholder_customers(session, (order["customer_id"] for order in new_orders))
        ensure_placeholder_products(session, _missing_skus(session, {line["sku"] for line in new_lines}))
        for chunk in _chunks(new_orders):
            session.execute(insert(Order.__table__), list(chunk))
        for chunk in _chunks(new_lines, 2000):
            session.execute(insert(OrderLine.__table__), list(chunk))
    for status, order_ids in status_changes.items():
        for chunk in _chunks(order_ids):
            session.execute(
                update(Order).where(Order.order_id.in_(chunk)).values(status=status, updated_at=now)
            )
    refresh_customer_aggregates(session, touched_customers)
    return outcome


def _stored_orders(session: Session, order_ids: list[str]) -> dict[str, tuple[str, str]]:
    stored: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(order_ids):
        rows = session.execute(
            select(Order.order_id, Order.content_hash, Order.status).where(Order.order_id.in_(chunk))
        )
        for order_id, content_hash, status in rows:
            stored[order_id] = (content_hash, status)
    return stored


def _missing_skus(session: Session, skus: set[str]) -> set[str]:
    return skus - _existing_ids(session, Product.sku, sorted(skus))


class shop_day(FunctionElement):
    """shop_day(timestamp, zone): the calendar day, in the shop's time zone, of a naive UTC timestamp."""

    inherit_cache = True


@compiles(shop_day, "postgresql")
def _shop_day_postgresql(element, compiler, **kw) -> str:
    stamp, zone = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"date(timezone({zone}, timezone('UTC', {stamp})))"


@compiles(shop_day)
def _shop_day_sqlite(element, compiler, **kw) -> str:
    # A function registered on every SQLite connection (shared.extensions).
    stamp, zone = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"shop_day({stamp}, {zone})"


def session_timezone(session: Session) -> str:
    """The shop's time zone the session's database was configured with."""
    return session.info.get("shop_timezone", DEFAULT_SHOP_TIMEZONE)


def aggregates_select(shop_timezone: str = DEFAULT_SHOP_TIMEZONE):
    """SELECT of the running aggregates per customer over paid orders (purchase days in the shop's zone)."""
    return select(
        Order.customer_id,
        func.min(Order.placed_at).label("first_paid_at"),
        func.max(Order.placed_at).label("last_paid_at"),
        func.count().label("paid_orders"),
        func.coalesce(func.sum(Order.total), 0).label("net_spend"),
        func.count(func.distinct(shop_day(Order.placed_at, literal(shop_timezone, String)))).label("purchase_days"),
    ).where(Order.status == "paid")


def refresh_customer_aggregates(session: Session, customer_ids: Iterable[str] | None) -> None:
    """Recompute the running aggregates of the given customers (all customers when None).

    Recomputing from the customer's orders, rather than adding deltas, keeps refunds, cancellations
    and distinct purchase days exact and makes a retried batch harmless.
    """
    if customer_ids is None:
        _refresh_all_aggregates(session)
        return
    ids = sorted(set(customer_ids))
    selection = aggregates_select(session_timezone(session))
    for chunk in _chunks(ids):
        statement = selection.where(Order.customer_id.in_(chunk)).group_by(Order.customer_id)
        aggregates = {row.customer_id: row for row in session.execute(statement)}
        rows = []
        for customer_id in chunk:
            row = aggregates.get(customer_id)
            rows.append(
                {
                    "key": customer_id,
                    "first_paid_at": row.first_paid_at if row else None,
                    "last_paid_at": row.last_paid_at if row else None,
                    "paid_orders": int(row.paid_orders) if row else 0,
                    "net_spend": float(row.net_spend) if row else 0.0,
                    "purchase_days": int(row.purchase_days) if row else 0,
                }
            )
        _write_aggregates(session, rows)


def _write_aggregates(session: Session, rows: list[dict]) -> None:
    if not rows:
        return
    statement = (
        update(Customer.__table__)
        .where(Customer.__table__.c.customer_id == bindparam("key"))
        .values(
            first_paid_at=bindparam("first_paid_at"),
            last_paid_at=bindparam("last_paid_at"),
            paid_orders=bindparam("paid_orders"),
            net_spend=bindparam("net_spend"),
            purchase_days=bindparam("purchase_days"),
        )
    )
    session.connection().execute(statement, rows)


def _refresh_all_aggregates(session: Session) -> None:
    """One set-based statement for every customer: used after a bulk import."""
    aggregates = aggregates_select(session_timezone(session)).group_by(Order.customer_id).subquery()
    customers = Customer.__table__
    session.execute(
        update(customers).values(
            first_paid_at=select(aggregates.c.first_paid_at)
            .where(aggregates.c.customer_id == customers.c.customer_id)
            .scalar_subquery(),
            last_paid_at=select(aggregates.c.last_paid_at)
            .where(aggregates.c.customer_id == customers.c.customer_id)
            .scalar_subquery(),
            paid_orders=func.coalesce(
                select(aggregates.c.paid_orders)
                .where(aggregates.c.customer_id == customers.c.customer_id)
                .scalar_subquery(),
                0,
            ),
            net_spend=func.coalesce(
                select(aggregates.c.net_spend)
                .where(aggregates.c.customer_id == customers.c.customer_id)
                .scalar_subquery(),
                0,
            ),
            purchase_days=func.coalesce(
                select(aggregates.c.purchase_days)
                .where(aggregates.c.customer_id == customers.c.customer_id)
                .scalar_subquery(),
                0,
            ),
        )
    )


# ---- events ------------------------------------------------------------------------------------


def event_key(record: dict) -> str:
    """The client's event_id when given, else a hash of the event's content."""
    if record.get("event_id"):
        return hashlib.sha256(f"id:{record['event_id']}".encode()).hexdigest()
    content = "|".join(
        [
            record["customer_id"],
            record["type"],
            record.get("sku") or "",
            to_naive_utc(record["occurred_at"]).isoformat(timespec="microseconds"),
        ]
    )
    return hashlib.sha256(content.encode()).hexdigest()


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
    already = _existing_ids(session, Event.event_key, list(rows_by_key))
    insert_ignoring_duplicates(session, Event.__table__, list(rows_by_key.values()), ["event_key"])
    outcome.accepted = len(records)
    outcome.created = len(rows_by_key) - len(already)
    outcome.unchanged = len(records) - outcome.created
    return outcome


# ---- catalogue -----------------------------------------------------------------------------------

PRODUCT_FIELDS = ("name", "category", "price", "cost", "stock", "active", "repeat_purchase")
PROMOTION_FIELDS = ("kind", "threshold", "discount", "starts_at", "ends_at", "category")


def upsert_products(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert or update products; a real record replaces a placeholder."""
    latest = {record["sku"]: record for _index, record in records}
    existing = _existing_ids(session, Product.sku, list(latest))
    now = utcnow()
    rows = []
    for sku, record in latest.items():
        row = {"sku": sku, "placeholder": False, "updated_at": now}
        for name in PRODUCT_FIELDS:
            row[name] = record.get(name)
        row["active"] = True if row["active"] is None else bool(row["active"])
        row["repeat_purchase"] = bool(row["repeat_purchase"])
        rows.append(row)
    upsert(session, Product.__table__, rows, ["sku"], [*PRODUCT_FIELDS, "placeholder", "updated_at"])
    outcome = BatchOutcome(accepted=len(records))
    outcome.updated = sum(1 for sku in latest if sku in existing)
    outcome.created = len(latest) - outcome.updated
    return outcome


def upsert_promotions(session: Session, records: list[tuple[int, dict]]) -> BatchOutcome:
    """Insert or update promotions."""
    latest = {record["promotion_id"]: record for _index, record in records}
    existing = _existing_ids(session, Promotion.promotion_id, list(latest))
    now = utcnow()
    rows = []
    for promotion_id, record in latest.items():
        row = {"promotion_id": promotion_id, "updated_at": now}
        for name in PROMOTION_FIELDS:
            row[name] = record.get(name)
        row["starts_at"] = to_naive_utc(row["starts_at"])
        row["ends_at"] = to_naive_utc(row["ends_at"])
        row["discount"] = row["discount"] or 0
        rows.append(row)
    upsert(session, Promotion.__table__, rows, ["promotion_id"], [*PROMOTION_FIELDS, "updated_at"])
    outcome = BatchOutcome(accepted=len(records))
    outcome.updated = sum(1 for promotion_id in latest if promotion_id in existing)
    outcome.created = len(latest) - outcome.updated
    return outcome
