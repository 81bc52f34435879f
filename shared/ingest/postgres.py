"""PostgreSQL writing: COPY text into TEMP staging tables, set-based INSERT ... ON CONFLICT, and the
order writer's COPY path."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from shared.ingest.arrays import matches
from shared.ingest.columns import (
    LINE_COLUMNS,
    ORDER_COLUMNS,
    PLACEHOLDER_CUSTOMER_COLUMNS,
    PLACEHOLDER_PRODUCT_COLUMNS,
)
from shared.ingest.formats import COPY_BLOCK_ROWS, copy_text, differs, set_columns, tune_postgres_session
from shared.ingest.orders import OrderChunk, OrderWriterBase

# Characters COPY text format escapes.
COPY_SPECIAL = r"[\\\t\n\r]"


def create_staging_table(cursor, staging: str, table: str, columns: Sequence[str]) -> None:
    """A TEMP table with `table`'s column types for `columns`, dropped at commit."""
    column_list = ", ".join(columns)
    cursor.execute(f"DROP TABLE IF EXISTS {staging}")
    # ON COMMIT DROP: pooled connections never carry a stale staging table into the next import.
    cursor.execute(
        f"CREATE TEMP TABLE {staging} ON COMMIT DROP AS SELECT {column_list} FROM {table} WITH NO DATA"
    )


def copy_text_into(cursor, table: str, columns: Sequence[str], blocks: Iterable[str]) -> None:
    """Stream pre-formatted COPY text blocks into `table` with COPY FROM STDIN."""
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with cursor.copy(statement) as copy:
        for block in blocks:
            if block:
                copy.write(block)


def copy_rows_into(cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """COPY Python rows into `table`, formatted in blocks so memory stays bounded."""
    copy_text_into(cursor, table, columns, _row_blocks(rows))


def _row_blocks(rows: Iterable[Sequence]) -> Iterator[str]:
    block: list[Sequence] = []
    for row in rows:
        block.append(row)
        if len(block) >= COPY_BLOCK_ROWS:
            yield copy_text(block)
            block = []
    if block:
        yield copy_text(block)


def insert_from_staging(
    cursor,
    staging: str,
    table: str,
    columns: Sequence[str],
    key_columns: Sequence[str],
    update_columns: Sequence[str] | None = None,
    where: str | None = None,
) -> int:
    """INSERT INTO table SELECT FROM staging, ignoring (or updating) rows whose key exists; returns rows written.

    With update_columns, staged rows with the same key are reduced to one first (PostgreSQL refuses
    to touch a row twice in one ON CONFLICT DO UPDATE): the row staged last wins, like a later record
    in a REST batch; and a stored row whose values are all equal is left alone, so its updated_at
    does not move and the returned count tells written rows from unchanged ones.
    """
    column_list = ", ".join(columns)
    key_list = ", ".join(key_columns)
    if update_columns:
        source = f"SELECT DISTINCT ON ({key_list}) {column_list} FROM {staging}"
        if where:
            source += f" WHERE {where}"
        source += f" ORDER BY {key_list}, ctid DESC"
    else:
        source = f"SELECT {column_list} FROM {staging}"
        if where:
            source += f" WHERE {where}"
    statement = f"INSERT INTO {table} ({column_list}) {source} ON CONFLICT ({key_list}) "
    if update_columns:
        assignments = set_columns(update_columns)
        changed = differs(table, update_columns, "EXCLUDED", "IS DISTINCT FROM")
        statement += f"DO UPDATE SET {assignments} WHERE {changed}"
    else:
        statement += "DO NOTHING"
    cursor.execute(statement)
    return cursor.rowcount


def pg_bulk_write(
    cursor,
    table: str,
    columns: Sequence[str],
    rows_or_blocks: Iterable,
    key_columns: Sequence[str],
    update_columns: Sequence[str] | None = None,
    *,
    preformatted: bool = False,
) -> int:
    """COPY rows into a staging copy of `table`, then insert them ignoring (or updating) existing keys."""
    staging = f"stage_{table}"
    create_staging_table(cursor, staging, table, columns)
    if preformatted:
        copy_text_into(cursor, staging, columns, rows_or_blocks)
    else:
        copy_rows_into(cursor, staging, columns, rows_or_blocks)
    return insert_from_staging(cursor, staging, table, columns, key_columns, update_columns)


def copy_escaped(values: pa.Array) -> pa.Array:
    """Strings escaped for COPY text format (only when some value needs it)."""
    if not matches(values, COPY_SPECIAL).any():
        return values
    for special, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        values = pc.replace_substring(values, special, escaped)
    return values


def copy_block(columns: list) -> memoryview:
    """One COPY text block from string columns: one row per line, fields separated by tabs."""
    last = pc.binary_join_element_wise(columns[-1], "\n", "")
    rows = pc.binary_join_element_wise(*columns[:-1], last, "\t")
    if len(rows) == 0:
        return memoryview(b"")
    bounds = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    # The rows' characters lie back to back in the array's data buffer: hand that over without a copy.
    return memoryview(rows.buffers()[2])[int(bounds[0]):int(bounds[-1])]


class PostgresOrderWriter(OrderWriterBase):
    """COPY straight into orders and order_lines when no order of the chunk is stored yet; else COPY
    into a TEMP staging table, compare, and insert the new orders set-based."""

    def __init__(self, connection, chunk: OrderChunk, *, copy_directly: bool = True, bulk_load: bool = False) -> None:
        super().__init__(connection, chunk)
        self.copy_directly = copy_directly
        self.bulk_load = bulk_load
        self.now_text = self.now.isoformat(sep=" ")

    def begin(self) -> None:
        if self.bulk_load:
            tune_postgres_session(self.connection)

    def _orders_block(self, positions: np.ndarray | None = None) -> memoryview:
        chunk = self.chunk
        columns = [
            copy_escaped(chunk.order_order_ids), copy_escaped(chunk.order_customer_ids), chunk.order_placed_texts,
            chunk.order_statuses, pc.cast(pa.array(chunk.order_totals, pa.float64()), pa.string()),
            pa.array(chunk.order_hashes, pa.string()), pa.array([self.now_text] * chunk.order_count, pa.string()),
        ]
        if positions is not None:
            indexes = pa.array(positions)
            columns = [column.take(indexes) for column in columns]
        return copy_block(columns)

    def _placeholders(self, customer_ids: pa.Array, row_positions: np.ndarray) -> None:
        """Placeholder customers and products for ids not stored yet (orders reference customers by foreign key)."""
        self._insert_placeholders("customers", "customer_id", PLACEHOLDER_CUSTOMER_COLUMNS, pc.unique(customer_ids),
                                  "customer_id, false, false, '{}'::json, true, 0, 0, 0")
        self._insert_placeholders("products", "sku", PLACEHOLDER_PRODUCT_COLUMNS,
                                  pc.unique(self.chunk.skus.take(pa.array(row_positions))),
                                  "sku, sku, 0, false, false, true")

    def _insert_placeholders(self, table: str, key: str, columns: tuple[str, ...], keys: pa.Array,
                             values: str) -> None:
        """Stage the keys with COPY, then insert a placeholder row (`values`, then updated_at) for each new one."""
        staging = f"stage_{key}s"
        create_staging_table(self.cursor, staging, table, (key,))
        copy_text_into(self.cursor, staging, (key,), [copy_block([copy_escaped(keys)])])
        self.cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values}, %s::timestamp FROM {staging} "
            f"ORDER BY {key} ON CONFLICT ({key}) DO NOTHING",
            (self.now_text,),
        )

    def insert_all_new(self) -> bool:
        if not self.copy_directly:
            return False
        chunk, cursor = self.chunk, self.cursor
        all_positions = np.arange(chunk.order_count, dtype=np.int64)
        rows = self._row_positions(all_positions)
        # The primary key proves no order of the chunk was stored: the COPY fails on the first one
        # that was, and the savepoint takes back everything since (placeholders included).
        cursor.execute("SAVEPOINT copy_directly")
        try:
            self._placeholders(chunk.order_customer_ids, rows)
            copy_text_into(cursor, "orders", ORDER_COLUMNS, [self._orders_block()])
        except psycopg.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT copy_directly")
            return False
        cursor.execute("RELEASE SAVEPOINT copy_directly")
        # Every order here was inserted by this transaction, so none of its lines can exist yet.
        copy_text_into(cursor, "order_lines", LINE_COLUMNS, [self._lines_block(all_positions)])
        self.copied_directly = True
        return True

    def stored_orders(self) -> dict[str, tuple[str, str]]:
        cursor = self.cursor
        create_staging_table(cursor, "stage_orders", "orders", ORDER_COLUMNS)
        copy_text_into(cursor, "stage_orders", ORDER_COLUMNS, [self._orders_block()])
        # Without statistics the planner takes the fresh temp table for empty and hash-joins it
        # against the whole orders table: a cost that grows with every chunk already imported.
        cursor.execute("ANALYZE stage_orders")
        cursor.execute(
            "SELECT o.order_id, o.content_hash, o.status FROM stage_orders s JOIN orders o ON o.order_id = s.order_id"
        )
        return {order_id: (content_hash, status) for order_id, content_hash, status in cursor.fetchall()}

    def insert_new(self, new_positions: np.ndarray) -> None:
        chunk, cursor = self.chunk, self.cursor
        if len(new_positions) < chunk.order_count:
            keep = chunk.order_order_ids.take(pa.array(new_positions)).to_pylist()
            cursor.execute("DELETE FROM stage_orders WHERE NOT (order_id = ANY(%s))", (keep,))
        self._placeholders(chunk.order_customer_ids.take(pa.array(new_positions)), self._row_positions(new_positions))
        cursor.execute(
            f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) SELECT {', '.join(ORDER_COLUMNS)} "
            "FROM stage_orders ON CONFLICT (order_id) DO NOTHING"
        )
        inserted_positions = new_positions
        if cursor.rowcount != len(new_positions):
            # Another writer stored some of these orders since we looked: keep only the rows we wrote
            # (stamped with this chunk's updated_at) and compare the others like re-sends.
            inserted_positions = self._recheck_race(new_positions)
        self.count_created(inserted_positions)
        # Every order here was inserted by this transaction, so none of its lines can exist yet:
        # the lines go straight into order_lines, without a staging table.
        if len(inserted_positions):
            copy_text_into(cursor, "order_lines", LINE_COLUMNS, [self._lines_block(inserted_positions)])

    def _recheck_race(self, new_positions: np.ndarray) -> np.ndarray:
        chunk = self.chunk
        order_ids, hashes, statuses = chunk.order_lists()
        customer_ids = chunk.order_customer_ids.to_pylist()
        ids = [order_ids[position] for position in new_positions.tolist()]
        self.cursor.execute(
            "SELECT order_id, content_hash, status, updated_at = %s FROM orders WHERE order_id = ANY(%s)",
            (self.now, ids),
        )
        found = {row[0]: row[1:] for row in self.cursor.fetchall()}
        ours = []
        for position in new_positions.tolist():
            order_id = order_ids[position]
            stored_hash, stored_status, mine = found[order_id]
            if mine:
                ours.append(position)
                continue
            self.touched.discard(customer_ids[position])
            start, end = int(chunk.starts[position]), int(chunk.ends[position])
            self._classify(order_id, customer_ids[position], hashes[position], statuses[position],
                           (stored_hash, stored_status), start, end)
        return np.array(ours, dtype=np.int64)

    def _lines_block(self, positions: np.ndarray) -> memoryview:
        """COPY text of the lines of the given orders."""
        chunk = self.chunk
        rows = pa.array(self._row_positions(positions))
        columns = [
            copy_escaped(chunk.order_ids.take(rows)),
            pc.cast(pa.array(chunk.line_numbers).take(rows), pa.string()),
            copy_escaped(chunk.skus.take(rows)),
            pc.cast(pa.array(chunk.quantities).take(rows), pa.string()),
            chunk.price_copy_texts.take(rows),
        ]
        return copy_block(columns)

    def update_status(self, status: str, order_ids: list[str]) -> None:
        self.cursor.execute(
            "UPDATE orders SET status = %s, updated_at = %s WHERE order_id = ANY(%s)", (status, self.now, order_ids)
        )
