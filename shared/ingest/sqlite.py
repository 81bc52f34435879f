"""SQLite writing: executemany of INSERT OR IGNORE / ON CONFLICT DO UPDATE in one transaction, and the
order writer's executemany path."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.ingest.columns import (
    LINE_COLUMNS,
    ORDER_COLUMNS,
    PLACEHOLDER_CUSTOMER_COLUMNS,
    PLACEHOLDER_PRODUCT_COLUMNS,
)
from shared.ingest.formats import (
    SQLITE_CHUNK_ROWS,
    SQLITE_DATETIME_FORMAT,
    begin_sqlite_write,
    differs,
    set_columns,
    sqlite_rows,
)
from shared.ingest.orders import OrderWriterBase


def plain_insert_statement(table: str, columns: Sequence[str]) -> str:
    """INSERT of one row per parameter tuple, failing on an existing key."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def sqlite_insert_statement(
    table: str, columns: Sequence[str], key_columns: Sequence[str], update_columns: Sequence[str] | None = None
) -> str:
    """INSERT OR IGNORE, or INSERT ... ON CONFLICT DO UPDATE when update_columns are given."""
    placeholders = ", ".join("?" for _ in columns)
    column_list = ", ".join(columns)
    if not update_columns:
        return f"INSERT OR IGNORE INTO {table} ({column_list}) VALUES ({placeholders})"
    return (
        f"INSERT INTO {table} ({column_list}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {set_columns(update_columns, 'excluded')} "
        f"WHERE {differs(table, update_columns, 'excluded', 'IS NOT')}"
    )


def sqlite_bulk_write(
    cursor,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence],
    key_columns: Sequence[str],
    update_columns: Sequence[str] | None = None,
    *,
    converted: bool = False,
) -> int:
    """executemany in large chunks inside the caller's transaction; returns rows written."""
    statement = sqlite_insert_statement(table, columns, key_columns, update_columns)
    connection = cursor.connection
    written = 0
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= SQLITE_CHUNK_ROWS:
            written += _sqlite_execute_chunk(connection, cursor, statement, chunk, converted)
            chunk = []
    if chunk:
        written += _sqlite_execute_chunk(connection, cursor, statement, chunk, converted)
    return written


def _sqlite_execute_chunk(connection, cursor, statement: str, chunk: list, converted: bool) -> int:
    # total_changes counts every row inserted or updated; cursor.rowcount is unreliable with executemany.
    before = connection.total_changes
    cursor.executemany(statement, chunk if converted else sqlite_rows(chunk))
    return connection.total_changes - before


class SqliteOrderWriter(OrderWriterBase):
    """executemany in one transaction, holding SQLite's write lock from the start."""

    def begin(self) -> None:
        begin_sqlite_write(self.connection)

    def stored_orders(self) -> dict[str, tuple[str, str]]:
        stored: dict[str, tuple[str, str]] = {}
        ids = self.chunk.order_order_ids.to_pylist()
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            self.cursor.execute(f"SELECT order_id, content_hash, status FROM orders WHERE order_id IN ({marks})", part)
            for order_id, content_hash, status in self.cursor.fetchall():
                stored[order_id] = (content_hash, status)
        return stored

    def insert_new(self, new_positions: np.ndarray) -> None:
        chunk, cursor = self.chunk, self.cursor
        now_text = self.now.strftime(SQLITE_DATETIME_FORMAT)
        indexes = pa.array(new_positions)
        customer_ids = chunk.order_customer_ids.take(indexes)
        cursor.executemany(
            f"INSERT OR IGNORE INTO customers ({', '.join(PLACEHOLDER_CUSTOMER_COLUMNS)}) "
            "VALUES (?, 0, 0, '{}', 1, 0, 0, 0, ?)",
            [(customer_id, now_text) for customer_id in sorted(pc.unique(customer_ids).to_pylist())],
        )
        rows = self._row_positions(new_positions)
        row_indexes = pa.array(rows)
        line_skus = chunk.skus.take(row_indexes)
        cursor.executemany(
            f"INSERT OR IGNORE INTO products ({', '.join(PLACEHOLDER_PRODUCT_COLUMNS)}) VALUES (?, ?, 0, 0, 0, 1, ?)",
            [(sku, sku, now_text) for sku in sorted(pc.unique(line_skus).to_pylist())],
        )
        positions = new_positions.tolist()
        order_rows = zip(
            chunk.order_order_ids.take(indexes).to_pylist(), customer_ids.to_pylist(),
            chunk.order_placed_texts.take(indexes).to_pylist(), chunk.order_statuses.take(indexes).to_pylist(),
            [chunk.order_totals[position] for position in positions],
            [chunk.order_hashes[position] for position in positions],
            itertools.repeat(now_text),
        )
        # The write lock is held since begin(), so nothing was stored between the lookup and here.
        cursor.executemany(
            plain_insert_statement("orders", ORDER_COLUMNS),
            order_rows,
        )
        line_rows = zip(
            chunk.order_ids.take(row_indexes).to_pylist(), chunk.line_numbers[rows].tolist(), line_skus.to_pylist(),
            chunk.quantities[rows].tolist(), chunk.prices[rows].tolist(),
        )
        cursor.executemany(
            plain_insert_statement("order_lines", LINE_COLUMNS),
            line_rows,
        )
        self.count_created(new_positions)

    def update_status(self, status: str, order_ids: list[str]) -> None:
        now_text = self.now.strftime(SQLITE_DATETIME_FORMAT)
        self.cursor.executemany(
            "UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?",
            [(status, now_text, order_id) for order_id in order_ids],
        )


def sqlite_existing_count(cursor, table: str, key: str, ids: list[str]) -> int:
    found = 0
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        cursor.execute(f"SELECT count(*) FROM {table} WHERE {key} IN ({marks})", part)
        found += cursor.fetchone()[0]
    return found

