"""Fast bulk loading on either database, and the one order writer (`write_orders`).

The helpers live in shared.ingest.formats (values, transactions), shared.ingest.postgres (COPY into
staging tables) and shared.ingest.sqlite (executemany); this module picks by dialect, and re-exports
them under the names `shared.bulk` always had.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shared.ingest.formats import (  # noqa: F401  (re-exported)
    COPY_BLOCK_ROWS,
    SQLITE_CHUNK_ROWS,
    SQLITE_DATETIME_FORMAT,
    begin_sqlite_write,
    copy_escape,
    copy_text,
    copy_value,
    dialect_of,
    raw_connection,
    sqlite_rows,
    sqlite_value,
    tune_postgres_session,
)
from shared.ingest.orders import OrderChunk, OrderWriteOutcome
from shared.ingest.postgres import (  # noqa: F401  (re-exported)
    PostgresOrderWriter,
    copy_rows_into,
    copy_text_into,
    create_staging_table,
    insert_from_staging,
    pg_bulk_write,
)
from shared.ingest.sqlite import SqliteOrderWriter, sqlite_bulk_write, sqlite_insert_statement  # noqa: F401

__all__ = [
    "COPY_BLOCK_ROWS", "SQLITE_CHUNK_ROWS", "SQLITE_DATETIME_FORMAT", "begin_sqlite_write", "bulk_write",
    "copy_escape", "copy_rows_into", "copy_text", "copy_text_into", "copy_value", "create_staging_table",
    "dialect_of", "existing_keys", "insert_from_staging", "pg_bulk_write", "raw_connection", "sqlite_bulk_write",
    "sqlite_insert_statement", "sqlite_rows", "sqlite_value", "tune_postgres_session", "write_orders",
]


def bulk_write(
    connection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence],
    key_columns: Sequence[str],
    update_columns: Sequence[str] | None = None,
) -> int:
    """Insert Python rows into `table` on either database, skipping (or updating) existing keys.

    Runs inside the caller's transaction on the raw connection; returns the number of rows written.
    """
    cursor = connection.cursor()
    try:
        if dialect_of(connection) == "postgresql":
            return pg_bulk_write(cursor, table, columns, rows, key_columns, update_columns)
        return sqlite_bulk_write(cursor, table, columns, rows, key_columns, update_columns)
    finally:
        cursor.close()


def existing_keys(connection, table: str, key_column: str, keys: Sequence[str]) -> set[str]:
    """The subset of `keys` already stored in `table` (staged with COPY on PostgreSQL, IN lists on SQLite)."""
    cursor = connection.cursor()
    try:
        if dialect_of(connection) == "postgresql":
            staging = f"stage_keys_{table}"
            create_staging_table(cursor, staging, table, (key_column,))
            copy_text_into(cursor, staging, (key_column,), [copy_text((key,) for key in keys)])
            cursor.execute(f"ANALYZE {staging}")  # so the join probes the key index, not a full scan
            cursor.execute(
                f"SELECT t.{key_column} FROM {staging} s JOIN {table} t ON t.{key_column} = s.{key_column}"
            )
            return {row[0] for row in cursor.fetchall()}
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            cursor.execute(f"SELECT {key_column} FROM {table} WHERE {key_column} IN ({marks})", part)
            found.update(row[0] for row in cursor.fetchall())
        return found
    finally:
        cursor.close()


def write_orders(connection, chunk: OrderChunk, *, bulk_load: bool = False,
                 copy_directly: bool = True) -> OrderWriteOutcome:
    """Store a chunk of whole orders on a raw DBAPI connection, inside the caller's transaction.

    New orders are inserted with placeholder customers and products, identical ones are unchanged,
    paid -> refunded/cancelled moves the status, anything else is rejected (see OrderWriteOutcome).
    `bulk_load` relaxes durability for a re-runnable import (PostgreSQL synchronous_commit off);
    `copy_directly` lets PostgreSQL COPY straight into the tables while no order is stored yet.
    """
    if dialect_of(connection) == "postgresql":
        return PostgresOrderWriter(connection, chunk, copy_directly=copy_directly, bulk_load=bulk_load).write()
    return SqliteOrderWriter(connection, chunk).write()
