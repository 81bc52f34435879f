"""CSV history import: orders, customers and products, streamed in chunks, for millions of rows.

File rules (README "CSV import"):
- UTF-8 (a BOM is fine), comma-separated, a header row naming the columns; column order is free,
  names are matched case-insensitively, extra columns are ignored.
- Times without an offset are the shop's local time (SHOP_TIMEZONE), as in REST bodies; stored as UTC.
- Every row is validated with the rules of the REST schemas (their limits live in shared/limits.py). A bad row is never dropped silently:
  it goes to the rejects file (default `<file>.rejects.csv`) with its line number and the reason.
  Line numbers count the header as line 1 (a quoted field spanning lines counts its first line).
- orders: one row per order line. The lines of one order must be on adjacent rows, in line order
  (their position is the stored line_no). Every line of an order must agree on customer_id,
  placed_at and status. One bad line rejects the whole order (all its rows, each with a reason),
  as REST rejects a whole order record. If the same order_id shows up again after other orders,
  that later run is treated like a re-send of the order: identical lines are a no-op, a status
  move paid -> refunded/cancelled is an update, anything else is rejected as a conflict.
- An order already stored (imported before or sent over REST) is compared by content hash, exactly
  like POST /v1/orders: same content is unchanged, a status move is an update, other content is a
  conflict and all its rows are rejected. Importing the same file twice changes nothing.
- customers and products: a row is a whole record, like a REST record: an absent optional column
  takes the REST default. A later row for the same id wins. A customer's `attributes` cannot be
  given in CSV and are left as stored.
- Each chunk is committed on its own: an interrupted import keeps the chunks it wrote, and running
  it again writes only the rest (the import is idempotent).
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from shared.ingest.aggregates import refresh_all_aggregates_by_join, refresh_customer_aggregates
from shared.ingest.arrays import changes, string_column, to_numpy_bool
from shared.ingest.bulk import write_orders
from shared.ingest.columns import CUSTOMER_COLUMNS, CUSTOMER_IMPORT_UPDATES, IMPORT_COLUMNS, PRODUCT_COLUMNS
from shared.ingest.common import utcnow
from shared.ingest.formats import begin_sqlite_write, dialect_of, raw_connection, tune_postgres_session
from shared.ingest.order_identity import order_hashes, order_totals
from shared.ingest.orders import OrderChunk, OrderWriteOutcome, storage_texts
from shared.ingest.postgres import copy_rows_into, create_staging_table, insert_from_staging
from shared.ingest.reading import (
    ImportFileError,
    RejectsWriter,
    RowBatch,
    arrow_batches,
    column_positions,
    csv_module_batches,
    order_chunks,
    read_rows,
    scan_file,
)
from shared.ingest.rules import (
    DateParser,
    RowRules,
    bad_ids,
    parse_price_column,
    parse_quantity_column,
    parse_timestamp_column,
    price_copy_texts,
    status_column,
    unit_price_ok,
)
from shared.ingest.sqlite import sqlite_bulk_write, sqlite_existing_count
from shared.limits import MAX_MONEY, MAX_ORDER_LINES, MAX_QUANTITY, MIN_UNIT_PRICE, ORDER_STATUSES, TimeRules, id_problem

# Up to this many touched customers, refresh only them; beyond, one set-based refresh of everyone is faster.
SMALL_IMPORT_CUSTOMERS = 20_000


@dataclass
class OrderRuns:
    """The runs (candidate orders) of a chunk that needs checking order by order, as Python lists."""

    customer_ids: list
    placed: list
    statuses: list
    starts: np.ndarray
    ends: np.ndarray
    hashes: list[str]
    order_ids: list[str]
    run_statuses: list[str]


@dataclass
class ImportSummary:
    """What an import did. accepted/rejected count CSV rows; created/updated/unchanged count records
    (orders for an orders file, customers or products otherwise)."""

    kind: str
    path: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    rejects_path: str | None = None
    aggregates_refreshed: str = ""

    @property
    def rows_per_second(self) -> float:
        """CSV rows processed per second of wall time."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """A few human lines for the command line."""
        record = {"orders": "orders", "customers": "customers", "products": "products"}[self.kind]
        lines = [
            f"imported {self.kind} from {self.path}",
            f"  rows: {self.rows:,} read, {self.accepted:,} accepted, {self.rejected:,} rejected",
            f"  {record}: {self.created:,} created, {self.updated:,} updated, {self.unchanged:,} unchanged",
            f"  time: {self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s",
        ]
        if self.aggregates_refreshed:
            lines.append(f"  customer aggregates refreshed: {self.aggregates_refreshed}")
        if self.rejected:
            lines.append(f"  rejected rows with reasons: {self.rejects_path}")
        return "\n".join(lines)


def import_csv(
    kind: str,
    path,
    database,
    *,
    chunk_rows: int = 200_000,
    rejects_path=None,
    progress: bool = True,
    config: dict | None = None,
) -> ImportSummary:
    """Import a CSV file of orders, customers or products into `database` (a shared.extensions.Database).

    `config` supplies the time rules (SHOP_TIMEZONE, MIN_PLAUSIBLE_DATE, MAX_FUTURE_SKEW_SECONDS); the
    defaults apply when it is None.
    """
    if kind not in IMPORT_COLUMNS:
        raise ImportFileError(f"unknown import kind {kind!r}: expected one of {', '.join(IMPORT_COLUMNS)}")
    path = Path(path)
    rejects_path = Path(rejects_path) if rejects_path else path.with_name(path.name + ".rejects.csv")
    time_rules = TimeRules.from_config(config or {})
    summary = ImportSummary(kind=kind, path=str(path), rejects_path=str(rejects_path))
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ImportFileError(f"{path} is empty: a header row is required")
        positions = column_positions(kind, header)
        rejects = RejectsWriter(rejects_path, header)
        total, plain = scan_file(path)
        bar = tqdm(total=total if progress else None, unit=" rows", unit_scale=True, desc=f"import {kind}",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
        try:
            if kind == "orders":
                if plain:
                    batches = arrow_batches(path, len(header), rejects, summary)
                else:
                    batches = csv_module_batches(reader, len(header), rejects, summary)
                OrderImport(database, positions, time_rules, rejects, summary, bar).run(batches, chunk_rows)
            else:
                rows = read_rows(reader, len(header), rejects, summary)
                RecordImport(kind, database, positions, time_rules, rejects, summary, bar).run(rows, chunk_rows)
        finally:
            bar.close()
            rejects.close()
    summary.seconds = time.perf_counter() - started
    if not summary.rejected:
        summary.rejects_path = None
    return summary


class OrderImport:
    """Validates order chunks column-wise in the main thread while a writer thread stores the previous chunk."""

    def __init__(self, database, positions: dict[str, int], time_rules: TimeRules, rejects: RejectsWriter,
                 summary: ImportSummary, bar) -> None:
        self.database = database
        self.positions = positions
        self.time_rules = time_rules
        self.rejects = rejects
        self.summary = summary
        self.bar = bar
        self.touched_customers: set[str] = set()
        self.refresh_everyone = False
        # An order longer than MAX_ORDER_LINES is rejected as soon as it passes the limit, so its
        # rows are never carried from chunk to chunk without bound; its later rows are rejected too.
        self.overlong_order_id: str | None = None
        # COPY straight into orders while no chunk has met a stored order (a new history); after the
        # first one that did, every chunk goes through the staging table (a re-import, an overlap).
        self.copy_directly = True

    def run(self, batches: Iterator[RowBatch], chunk_rows: int) -> None:
        """Read, validate and write every chunk, then refresh the customer aggregates."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segrec-import-writer") as writer:
            pending = None
            for chunk in order_chunks(batches, chunk_rows, self.positions["order_id"]):
                prepared = self.prepare(chunk)
                if pending is not None:
                    self._finish(pending.result())
                pending = writer.submit(self.write, prepared)
            if pending is not None:
                self._finish(pending.result())
        self._refresh_aggregates()

    def prepare(self, batch: RowBatch) -> OrderChunk:
        """Validate a chunk, group its rows into orders, hash each order; no database access."""
        positions, table = self.positions, batch.table
        chunk = OrderChunk(source=batch, row_count=len(batch))
        count = len(batch)
        self.summary.rows += count
        order_ids = string_column(table, positions["order_id"])
        customer_ids = string_column(table, positions["customer_id"])
        skus = string_column(table, positions["sku"])
        problems: dict[int, list[str]] = {}

        def flag(index: int, reason: str) -> None:
            problems.setdefault(int(index), []).append(reason)

        # The checks run in the order of the REST schema's fields, so a row's reasons read the same.
        for name, values in (("order_id", order_ids), ("customer_id", customer_ids), ("sku", skus)):
            for index in np.flatnonzero(bad_ids(values)):
                flag(index, f"{name} {id_problem(values[index].as_py())}")
        quantity_texts = string_column(table, positions["quantity"])
        quantities, quantity_ok = parse_quantity_column(quantity_texts)
        for index in np.flatnonzero(~quantity_ok):
            flag(index, f"quantity must be a whole number from 1 to {MAX_QUANTITY:,} "
                        f"(got {quantity_texts[index].as_py()!r})")
        price_texts = string_column(table, positions["unit_price"])
        prices, plain_prices = parse_price_column(price_texts)
        for index in np.flatnonzero(~unit_price_ok(prices)):  # NaN (unreadable) fails too
            flag(index, f"unit_price must be a number from {MIN_UNIT_PRICE} to {MAX_MONEY:,} "
                        f"(got {price_texts[index].as_py()!r})")
        placed_texts = string_column(table, positions["placed_at"])
        placed, placed_problems = parse_timestamp_column(placed_texts, DateParser(self.time_rules))
        for index, problem in placed_problems.items():
            flag(index, f"placed_at {problem} (got {placed_texts[index].as_py()!r})")
        statuses = status_column(table.column(positions["status"]).combine_chunks() if "status" in positions
                                  else None, count)
        known_status = to_numpy_bool(pc.is_in(statuses, value_set=pa.array(ORDER_STATUSES)))
        for index in np.flatnonzero(~known_status):
            flag(index, f"status must be one of {', '.join(ORDER_STATUSES)} (got {statuses[index].as_py()!r})")

        chunk.order_ids, chunk.customer_ids, chunk.skus = order_ids, customer_ids, skus
        chunk.quantities, chunk.prices = quantities, prices
        chunk.price_copy_texts = price_copy_texts(price_texts, prices, plain_prices)

        # Orders are runs of adjacent rows with one order id.
        order_changes = changes(order_ids)
        starts = np.concatenate([[0], np.flatnonzero(order_changes) + 1]).astype(np.int64)
        ends = np.append(starts[1:], count).astype(np.int64)
        lengths = ends - starts
        chunk.line_numbers = np.arange(count, dtype=np.int64) - np.repeat(starts, lengths) + 1
        # Whether every order's lines agree on customer, time and status: within a run, none of
        # them may change (compared as read; the slow path compares the parsed times).
        field_changes = order_changes | changes(customer_ids) | changes(placed_texts) | changes(statuses)
        agree = bool(np.array_equal(field_changes, order_changes))
        run_order_ids = order_ids.take(starts)
        distinct_ids = pc.count_distinct(run_order_ids).as_py() == len(starts)
        continues_overlong = (self.overlong_order_id is not None and count > 0
                              and order_ids[0].as_py() == self.overlong_order_id)

        run_customer_ids = customer_ids.take(starts)
        run_placed = placed[starts]
        run_statuses = statuses.take(starts)
        hashes = order_hashes(run_customer_ids, run_placed, skus, quantities, prices, price_texts, starts, ends)
        totals = order_totals(quantities, prices, starts, ends)

        if not problems and agree and distinct_ids and lengths.max(initial=0) <= MAX_ORDER_LINES \
                and not continues_overlong:
            stored_runs = np.arange(len(starts))
            chunk.accepted_rows = count
        else:
            runs = OrderRuns(customer_ids.to_pylist(), placed.tolist(), statuses.to_pylist(), starts, ends, hashes,
                             run_order_ids.to_pylist(), run_statuses.to_pylist())
            stored_runs = self._check_runs(chunk, problems, runs)
        chunk.starts, chunk.ends = starts[stored_runs], ends[stored_runs]
        chunk.order_order_ids = run_order_ids.take(stored_runs)
        chunk.order_customer_ids = run_customer_ids.take(stored_runs)
        chunk.order_placed_texts = storage_texts(run_placed[stored_runs])
        chunk.order_statuses = run_statuses.take(stored_runs)
        chunk.order_totals = [totals[run] for run in stored_runs.tolist()]
        chunk.order_hashes = [hashes[run] for run in stored_runs.tolist()]
        return chunk

    def _check_runs(self, chunk: OrderChunk, problems: dict, runs: OrderRuns) -> np.ndarray:
        """Order by order, for a chunk with a bad row, disagreeing lines, an overlong order or an order id
        seen twice: rejects, repeats, and which runs to store (their indexes)."""
        lines = chunk.source.lines
        stored_runs: list[int] = []
        first_run: dict[str, tuple[int, str, str]] = {}  # order_id -> (first line, hash, status)
        for run, (start, end) in enumerate(zip(runs.starts.tolist(), runs.ends.tolist())):
            order_id = runs.order_ids[run]
            reason = self._order_problem(start, end, order_id, runs, problems, lines)
            if reason is not None:
                self._reject_order(chunk, start, end, reason, problems)
                continue
            content_hash, status = runs.hashes[run], runs.run_statuses[run]
            earlier = first_run.get(order_id)
            if earlier is not None:
                if earlier[1] != content_hash:
                    self._reject_order(
                        chunk, start, end,
                        f"order {order_id} already appeared at line {earlier[0]} with other customer, time or "
                        "lines (the lines of one order must be on adjacent rows)",
                        problems,
                    )
                    continue
                chunk.repeats.append((start, end, content_hash, status))
                chunk.accepted_rows += end - start
                continue
            first_run[order_id] = (int(lines[start]), content_hash, status)
            stored_runs.append(run)
            chunk.accepted_rows += end - start
        return np.array(stored_runs, dtype=np.int64)

    def _order_problem(self, start, end, order_id, runs: OrderRuns, problems, lines) -> str | None:
        """Why a whole order cannot be taken (beyond its own rows' problems), or None."""
        if order_id == self.overlong_order_id and start == 0:
            return f"order {order_id} has more than {MAX_ORDER_LINES} lines"
        if end - start > MAX_ORDER_LINES:
            self.overlong_order_id = order_id
            return f"order {order_id} has more than {MAX_ORDER_LINES} lines"
        for index in range(start, end):
            if index in problems:
                return f"another line of order {order_id} was rejected (line {lines[index]})"
        for name, values in (("customer_id", runs.customer_ids), ("placed_at", runs.placed), ("status", runs.statuses)):
            first = values[start]
            for index in range(start + 1, end):
                if values[index] != first:
                    return f"the lines of order {order_id} disagree on {name} (lines {lines[start]} and {lines[index]})"
        return None

    def _reject_order(self, chunk: OrderChunk, start: int, end: int, reason: str, problems: dict) -> None:
        """Reject every row of an order: a row's own problems first, else the order's reason."""
        for index in range(start, end):
            own = problems.get(index)
            chunk.rejects.append((int(chunk.source.lines[index]), "; ".join(own) if own else reason,
                                  chunk.source.row(index)))

    # -- writing (runs in the writer thread) --

    def write(self, chunk: OrderChunk) -> OrderWriteOutcome:
        """Store one chunk in one transaction; returns what happened to each order."""
        with raw_connection(self.database) as connection:
            outcome = write_orders(connection, chunk, bulk_load=True, copy_directly=self.copy_directly)
        if not outcome.copied_directly:
            self.copy_directly = False
        return outcome

    def _finish(self, outcome: OrderWriteOutcome) -> None:
        """Account for a written chunk (main thread): counts, rejects file, touched customers, progress."""
        chunk = outcome.chunk
        rows = chunk.source
        written_rejects = [
            (int(rows.lines[index]), rejection.file_reason(), rows.row(index))
            for rejection in outcome.rejects
            for index in range(rejection.start, rejection.end)
        ]
        rejected_rows = list(chunk.rejects) + written_rejects
        rejected_rows.sort(key=lambda item: item[0])
        for line, reason, row in rejected_rows:
            self.rejects.write(line, reason, row)
        self.summary.rejected += len(rejected_rows)
        self.summary.accepted += chunk.accepted_rows - len(written_rejects)
        self.summary.created += outcome.created
        self.summary.updated += outcome.updated
        self.summary.unchanged += outcome.unchanged
        if not self.refresh_everyone:
            self.touched_customers.update(outcome.touched)
            if len(self.touched_customers) > SMALL_IMPORT_CUSTOMERS:
                self.refresh_everyone = True
                self.touched_customers = set()
        self.bar.update(chunk.row_count)

    def _refresh_aggregates(self) -> None:
        if self.refresh_everyone:
            with self.database.session() as session:
                if session.get_bind().dialect.name == "postgresql":
                    refresh_all_aggregates_by_join(session)
                else:
                    refresh_customer_aggregates(session, None)
            self.summary.aggregates_refreshed = "all customers (set-based)"
        elif self.touched_customers:
            with self.database.session() as session:
                refresh_customer_aggregates(session, self.touched_customers)
            self.summary.aggregates_refreshed = f"{len(self.touched_customers):,} customers"


class RecordImport:
    """Customers or products: validate each row, then upsert the chunk (a later row for an id wins)."""

    def __init__(self, kind: str, database, positions: dict[str, int], time_rules: TimeRules,
                 rejects: RejectsWriter, summary: ImportSummary, bar) -> None:
        self.kind = kind
        self.database = database
        self.positions = positions
        self.rules = RowRules(positions, DateParser(time_rules))
        self.rejects = rejects
        self.summary = summary
        self.bar = bar
        if kind == "customers":
            self.table, self.key = "customers", "customer_id"
            self.columns = CUSTOMER_COLUMNS
            self.update_columns = CUSTOMER_IMPORT_UPDATES
            self.parse = self.rules.customer
        else:
            self.table, self.key = "products", "sku"
            self.columns = PRODUCT_COLUMNS
            self.update_columns = self.columns[1:]
            self.parse = self.rules.product

    def run(self, rows: Iterator[tuple[int, list]], chunk_rows: int) -> None:
        """Validate and upsert chunk by chunk."""
        lines: list[int] = []
        chunk: list[list] = []
        for line, row in rows:
            lines.append(line)
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                self._chunk(lines, chunk)
                lines, chunk = [], []
        if chunk:
            self._chunk(lines, chunk)

    def _chunk(self, lines: list[int], rows: list[list]) -> None:
        now = utcnow()
        records = []
        for line, row in zip(lines, rows):
            record, problems = self.parse(row, now)
            if problems:
                self.rejects.write(line, "; ".join(problems), row)
                self.summary.rejected += 1
            else:
                records.append(record)
        self.summary.rows += len(rows)
        self.summary.accepted += len(records)
        if records:
            with raw_connection(self.database) as connection:
                created, written, distinct = self._write(connection, records)
            self.summary.created += created
            self.summary.updated += written - created
            self.summary.unchanged += distinct - written
        self.bar.update(len(rows))

    def _write(self, connection, records: list[tuple]) -> tuple[int, int, int]:
        """Upsert the records; returns (created, created or updated, distinct ids)."""
        distinct = len({record[0] for record in records})
        cursor = connection.cursor()
        try:
            if dialect_of(connection) == "postgresql":
                tune_postgres_session(connection)
                staging = f"stage_{self.table}"
                create_staging_table(cursor, staging, self.table, self.columns)
                copy_rows_into(cursor, staging, self.columns, records)
                cursor.execute(
                    f"SELECT count(DISTINCT s.{self.key}) FROM {staging} s JOIN {self.table} t ON t.{self.key} = s.{self.key}"
                )
                existing = cursor.fetchone()[0]
                written = insert_from_staging(cursor, staging, self.table, self.columns, [self.key],
                                                   self.update_columns)
            else:
                begin_sqlite_write(connection)
                existing = sqlite_existing_count(cursor, self.table, self.key, sorted({record[0] for record in records}))
                # Reduce to the last record per id first, as PostgreSQL does, so counts agree.
                latest = {record[0]: record for record in records}
                written = sqlite_bulk_write(cursor, self.table, self.columns, latest.values(), [self.key],
                                                 self.update_columns)
        finally:
            cursor.close()
        return distinct - existing, written, distinct
