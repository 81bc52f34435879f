"""What every ingest path shares: the per-record outcome, UTC time, chunking and ON CONFLICT inserts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

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


def chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(session: Session, table):
    """INSERT that knows ON CONFLICT for the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring_duplicates(session: Session, table, rows: list[dict], key_columns: list[str]) -> None:
    """Insert rows, skipping those whose key already exists (INSERT ... ON CONFLICT DO NOTHING)."""
    for chunk in chunks(rows):
        statement = dialect_insert(session, table).values(list(chunk))
        session.execute(statement.on_conflict_do_nothing(index_elements=key_columns))


def upsert(session: Session, table, rows: list[dict], key_columns: list[str], update_columns: list[str]) -> None:
    """Insert rows or update the named columns of existing ones (INSERT ... ON CONFLICT DO UPDATE)."""
    for chunk in chunks(rows):
        statement = dialect_insert(session, table).values(list(chunk))
        statement = statement.on_conflict_do_update(
            index_elements=key_columns,
            set_={column: statement.excluded[column] for column in update_columns},
        )
        session.execute(statement)


def existing_ids(session: Session, column, ids: list[str]) -> set[str]:
    """The ids of `ids` already stored in `column`."""
    found: set[str] = set()
    for chunk in chunks(ids):
        found.update(session.execute(select(column).where(column.in_(chunk))).scalars())
    return found
