"""CSV history import: orders, customers and products, streamed in chunks, for millions of rows.

File rules (README "CSV import"):
- UTF-8 (a BOM is fine), comma-separated, a header row naming the columns; column order is free,
  names are matched case-insensitively, extra columns are ignored.
- Every row is validated with the rules of the REST schemas. A bad row is never dropped silently:
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
import hashlib
import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path

from tqdm import tqdm

from shared import bulk
from shared.config import DEFAULTS
from shared.ingest import STATUS_TRANSITIONS, refresh_customer_aggregates, utcnow

ORDER_STATUSES = ("paid", "refunded", "cancelled")
MAX_ORDER_LINES = 500
MAX_QUANTITY = 100_000
MAX_MONEY = 10_000_000
MAX_ID_LENGTH = 64
# Up to this many touched customers, refresh only them; beyond, one set-based refresh of everyone is faster.
SMALL_IMPORT_CUSTOMERS = 20_000
# Booleans as marshmallow's fields.Boolean reads them.
TRUTHY = {"1", "true", "t", "yes", "y", "on"}
FALSY = {"0", "false", "f", "no", "n", "off"}

COLUMNS = {
    "orders": (("order_id", "customer_id", "placed_at", "sku", "quantity", "unit_price"), ("status",)),
    "customers": (("customer_id",), ("joined_at", "channel", "community_member", "opted_out")),
    "products": (("sku", "name", "category", "price"), ("cost", "stock", "active", "repeat_purchase")),
}


class ImportFileError(ValueError):
    """The file cannot be imported at all (no header, a required column missing)."""


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
    chunk_rows: int = 50_000,
    rejects_path=None,
    progress: bool = True,
    max_future_skew_seconds: int | None = None,
) -> ImportSummary:
    """Import a CSV file of orders, customers or products into `database` (a shared.extensions.Database)."""
    if kind not in COLUMNS:
        raise ImportFileError(f"unknown import kind {kind!r}: expected one of {', '.join(COLUMNS)}")
    path = Path(path)
    rejects_path = Path(rejects_path) if rejects_path else path.with_name(path.name + ".rejects.csv")
    skew = DEFAULTS["MAX_FUTURE_SKEW_SECONDS"] if max_future_skew_seconds is None else max_future_skew_seconds
    summary = ImportSummary(kind=kind, path=str(path), rejects_path=str(rejects_path))
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ImportFileError(f"{path} is empty: a header row is required")
        positions = _column_positions(kind, header)
        rejects = RejectsWriter(rejects_path, header)
        total = _count_data_lines(path) if progress else None
        bar = tqdm(total=total, unit=" rows", unit_scale=True, desc=f"import {kind}", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        try:
            rows = _read_rows(reader, len(header), rejects, summary)
            if kind == "orders":
                OrderImport(database, positions, skew, rejects, summary, bar).run(rows, chunk_rows)
            else:
                RecordImport(kind, database, positions, skew, rejects, summary, bar).run(rows, chunk_rows)
        finally:
            bar.close()
            rejects.close()
    summary.seconds = time.perf_counter() - started
    if not summary.rejected:
        summary.rejects_path = None
    return summary


# ---- reading -------------------------------------------------------------------------------------


def _column_positions(kind: str, header: list[str]) -> dict[str, int]:
    """Where each known column is in the header; a missing required column stops the import."""
    names = [name.strip().lower() for name in header]
    required, optional = COLUMNS[kind]
    missing = [name for name in required if name not in names]
    if missing:
        raise ImportFileError(
            f"the header lacks required column(s) {', '.join(missing)}; a {kind} file needs "
            f"{','.join(required)} and may have {','.join(optional)}"
        )
    return {name: names.index(name) for name in (*required, *optional) if name in names}


def _count_data_lines(path: Path) -> int:
    """Newlines in the file minus the header: the progress bar's total (cheap: bytes, not CSV parsing)."""
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            count += block.count(b"\n")
    return max(count - 1, 0)


def _read_rows(reader, width: int, rejects: RejectsWriter, summary: ImportSummary) -> Iterator[tuple[int, list]]:
    """(line number, fields) of each well-formed row; rows of the wrong width go straight to the rejects."""
    previous_line = reader.line_num
    for row in reader:
        line = previous_line + 1
        previous_line = reader.line_num
        if len(row) == width:
            yield line, row
            continue
        if not row:
            continue  # a blank line carries no data
        summary.rows += 1
        summary.rejected += 1
        rejects.write(line, f"expected {width} fields as in the header, found {len(row)}", row)


class RejectsWriter:
    """The rejects CSV: line number, reason, then the row as it was read. Created on first use."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.header = header
        self._handle = None
        self._writer = None

    def write(self, line: int, reason: str, row: list) -> None:
        """Record one rejected row."""
        if self._writer is None:
            self._handle = open(self.path, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "reason", *self.header])
        self._writer.writerow([line, reason, *row])

    def close(self) -> None:
        """Flush and close the file, if any row was rejected."""
        if self._handle is not None:
            self._handle.close()


# ---- shared field rules (the REST schemas' rules, for strings read from CSV) ---------------------


class DateParser:
    """ISO 8601 timestamps as marshmallow's DateTime reads them (datetime.fromisoformat), converted
    to naive UTC, rejected beyond now plus the allowed clock skew. Caches each distinct string."""

    def __init__(self, skew_seconds: int) -> None:
        self.limit = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=skew_seconds)
        self.cache: dict[str, tuple[datetime | None, str | None]] = {}

    def parse(self, text: str) -> tuple[datetime | None, str | None]:
        """(naive UTC datetime, None) or (None, reason)."""
        found = self.cache.get(text)
        if found is not None:
            return found
        found = self._parse(text)
        if len(self.cache) > 200_000:
            # Bound memory on files with millions of distinct timestamps.
            self.cache.clear()
        self.cache[text] = found
        return found

    def _parse(self, text: str) -> tuple[datetime | None, str | None]:
        try:
            value = datetime.fromisoformat(text.strip())
            if value.tzinfo is not None:
                value = value.astimezone(timezone.utc).replace(tzinfo=None)
        except (ValueError, OverflowError):
            return None, "not a valid ISO 8601 date and time"
        if value > self.limit:
            return None, "is in the future"
        return value, None


def parse_whole_number(text: str) -> int | None:
    """A whole number written with ASCII digits, or None."""
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit():
        return int(stripped)
    return None


def parse_number(text: str) -> float | None:
    """A finite number as Python (and marshmallow's Float) reads it, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isfinite(value):
        return value
    return None


def parse_boolean(text: str, default: bool) -> bool | None:
    """marshmallow's Boolean words (true/false, yes/no, 1/0, ...); empty means the default; else None."""
    word = text.strip().lower()
    if not word:
        return default
    if word in TRUTHY:
        return True
    if word in FALSY:
        return False
    return None


def id_problem(text: str) -> str | None:
    """Why a value is not a valid id (1 to 64 characters), or None."""
    if not text:
        return "is required (1 to 64 characters)"
    if len(text) > MAX_ID_LENGTH:
        return "is longer than 64 characters"
    return None


# ---- orders --------------------------------------------------------------------------------------


def canonical_order_hash(customer_id: str, placed_at_iso: str, skus, quantities, price_texts) -> str:
    """The same sha256 as shared.ingest.order_content_hash, built without intermediate dicts.

    order_content_hash hashes json.dumps({"customer_id", "placed_at", "lines": [[sku, quantity,
    "price.2f"]]}, separators=(",", ":")); this writes the identical bytes directly (the unit tests
    compare both on awkward input) because it runs once per order of a multi-million-row file.
    """
    lines = ",".join(
        [
            f'[{encode_basestring_ascii(sku)},{quantity},"{price}"]'
            for sku, quantity, price in zip(skus, quantities, price_texts)
        ]
    )
    canonical = (
        f'{{"customer_id":{encode_basestring_ascii(customer_id)},'
        f'"placed_at":"{placed_at_iso}","lines":[{lines}]}}'
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class OrderChunk:
    """One chunk of order rows after validation: whole orders only, each a span of adjacent rows."""

    lines: list[int]
    rows: list[list]
    order_ids: list[str] = field(default_factory=list)
    customer_ids: list[str] = field(default_factory=list)
    skus: list[str] = field(default_factory=list)
    quantities: list[int] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)
    # Per candidate order (first run of an order id in this chunk).
    orders: list[tuple] = field(default_factory=list)  # (order_id, customer_id, placed_at, status, total, hash)
    spans: list[tuple[int, int]] = field(default_factory=list)
    # Later runs of an order id already seen in this chunk: applied after the first run is written.
    repeats: list[tuple[int, int, str, str]] = field(default_factory=list)  # (start, end, hash, status)
    rejects: list[tuple[int, str, list]] = field(default_factory=list)
    accepted_rows: int = 0


class OrderImport:
    """Validates order rows in the main thread while a writer thread stores the previous chunk."""

    def __init__(self, database, positions: dict[str, int], skew: int, rejects: RejectsWriter,
                 summary: ImportSummary, bar) -> None:
        self.database = database
        self.positions = positions
        self.skew = skew
        self.rejects = rejects
        self.summary = summary
        self.bar = bar
        self.touched_customers: set[str] = set()
        self.refresh_everyone = False
        # An order longer than MAX_ORDER_LINES is rejected as soon as it passes the limit, so its
        # rows are never carried from chunk to chunk without bound; its later rows are rejected too.
        self.overlong_order_id: str | None = None

    def run(self, rows: Iterator[tuple[int, list]], chunk_rows: int) -> None:
        """Read, validate and write every chunk, then refresh the customer aggregates."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segrec-import-writer") as writer:
            pending = None
            for chunk_lines, chunk_rows_list in self._chunks(rows, chunk_rows):
                prepared = self.prepare(chunk_lines, chunk_rows_list)
                if pending is not None:
                    self._finish(pending.result())
                pending = writer.submit(self.write, prepared)
            if pending is not None:
                self._finish(pending.result())
        self._refresh_aggregates()

    def _chunks(self, rows: Iterator[tuple[int, list]], chunk_rows: int) -> Iterator[tuple[list, list]]:
        """Chunks of whole orders: the last order of a chunk may continue in the next, so it is carried over."""
        order_column = self.positions["order_id"]
        lines: list[int] = []
        chunk: list[list] = []
        for line, row in rows:
            lines.append(line)
            chunk.append(row)
            if len(chunk) < chunk_rows:
                continue
            split = _last_order_start(chunk, order_column)
            if split == 0:
                if len(chunk) <= MAX_ORDER_LINES:
                    continue  # one order still going: keep reading until it ends
                # Longer than any valid order: hand it on now, where it is rejected (and its
                # further rows with it), so a runaway order never grows the chunk without bound.
                yield lines, chunk
                lines, chunk = [], []
                continue
            yield lines[:split], chunk[:split]
            lines, chunk = lines[split:], chunk[split:]
        if chunk:
            yield lines, chunk

    def prepare(self, lines: list[int], rows: list[list]) -> OrderChunk:
        """Validate a chunk, group its rows into orders, hash each order; no database access."""
        positions = self.positions
        chunk = OrderChunk(lines=lines, rows=rows)
        self.summary.rows += len(rows)
        count = len(rows)
        order_ids = [row[positions["order_id"]] for row in rows]
        customer_ids = [row[positions["customer_id"]] for row in rows]
        placed_texts = [row[positions["placed_at"]] for row in rows]
        skus = [row[positions["sku"]] for row in rows]
        quantity_texts = [row[positions["quantity"]] for row in rows]
        price_texts = [row[positions["unit_price"]] for row in rows]
        if "status" in positions:
            statuses = [row[positions["status"]].strip() or "paid" for row in rows]
        else:
            statuses = ["paid"] * count

        problems: dict[int, list[str]] = {}

        def flag(index: int, reason: str) -> None:
            problems.setdefault(index, []).append(reason)

        for name, values in (("order_id", order_ids), ("customer_id", customer_ids), ("sku", skus)):
            for index, value in enumerate(values):
                if not value or len(value) > MAX_ID_LENGTH:
                    flag(index, f"{name} {id_problem(value)}")
        quantities = [parse_whole_number(text) for text in quantity_texts]
        for index, quantity in enumerate(quantities):
            if quantity is None or not 1 <= quantity <= MAX_QUANTITY:
                flag(index, f"quantity must be a whole number from 1 to {MAX_QUANTITY:,} (got {quantity_texts[index]!r})")
        prices = _parse_prices(price_texts)
        for index, price in enumerate(prices):
            if price is None or not 0 < price <= MAX_MONEY:
                flag(index, f"unit_price must be a number above 0 and at most {MAX_MONEY:,} (got {price_texts[index]!r})")
        dates = DateParser(self.skew)
        placed = []
        for index, text in enumerate(placed_texts):
            value, problem = dates.parse(text)
            placed.append(value)
            if problem:
                flag(index, f"placed_at {problem} (got {text!r})")
        for index, status in enumerate(statuses):
            if status not in ORDER_STATUSES:
                flag(index, f"status must be one of {', '.join(ORDER_STATUSES)} (got {status!r})")

        chunk.order_ids, chunk.customer_ids, chunk.skus = order_ids, customer_ids, skus
        chunk.quantities, chunk.prices = quantities, prices
        first_run: dict[str, tuple[int, str, str]] = {}  # order_id -> (first line, hash, status)
        for start, end in _runs(order_ids):
            order_id = order_ids[start]
            reason = self._order_problem(start, end, order_id, customer_ids, placed, statuses, problems, lines)
            if reason is not None:
                self._reject_order(chunk, start, end, reason, problems)
                continue
            placed_at = placed[start]
            price_2f = [f"{price:.2f}" for price in prices[start:end]]
            content_hash = canonical_order_hash(
                customer_ids[start], placed_at.isoformat(timespec="seconds"),
                skus[start:end], quantities[start:end], price_2f,
            )
            status = statuses[start]
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
            first_run[order_id] = (lines[start], content_hash, status)
            total = round(sum(quantity * price for quantity, price in zip(quantities[start:end], prices[start:end])), 2)
            chunk.orders.append((order_id, customer_ids[start], placed_at, status, total, content_hash))
            chunk.spans.append((start, end))
            chunk.accepted_rows += end - start
        return chunk

    def _order_problem(self, start, end, order_id, customer_ids, placed, statuses, problems, lines) -> str | None:
        """Why a whole order cannot be taken (beyond its own rows' problems), or None."""
        if order_id == self.overlong_order_id and start == 0:
            return f"order {order_id} has more than {MAX_ORDER_LINES} lines"
        if end - start > MAX_ORDER_LINES:
            self.overlong_order_id = order_id
            return f"order {order_id} has more than {MAX_ORDER_LINES} lines"
        for index in range(start, end):
            if index in problems:
                return f"another line of order {order_id} was rejected (line {lines[index]})"
        for name, values in (("customer_id", customer_ids), ("placed_at", placed), ("status", statuses)):
            first = values[start]
            for index in range(start + 1, end):
                if values[index] != first:
                    return f"the lines of order {order_id} disagree on {name} (lines {lines[start]} and {lines[index]})"
        return None

    def _reject_order(self, chunk: OrderChunk, start: int, end: int, reason: str, problems: dict) -> None:
        """Reject every row of an order: a row's own problems first, else the order's reason."""
        for index in range(start, end):
            own = problems.get(index)
            chunk.rejects.append((chunk.lines[index], "; ".join(own) if own else reason, chunk.rows[index]))

    # -- writing (runs in the writer thread) --

    def write(self, chunk: OrderChunk) -> dict:
        """Store one chunk in one transaction; returns what happened to each order."""
        with bulk.raw_connection(self.database) as connection:
            if bulk.dialect_of(connection) == "postgresql":
                return PostgresOrderWriter(connection, chunk).write()
            return SqliteOrderWriter(connection, chunk).write()

    def _finish(self, outcome: dict) -> None:
        """Account for a written chunk (main thread): counts, rejects file, touched customers, progress."""
        chunk: OrderChunk = outcome["chunk"]
        rejected_rows = list(chunk.rejects) + outcome["rejects"]
        rejected_rows.sort(key=lambda item: item[0])
        for line, reason, row in rejected_rows:
            self.rejects.write(line, reason, row)
        self.summary.rejected += len(rejected_rows)
        self.summary.accepted += chunk.accepted_rows - len(outcome["rejects"])
        self.summary.created += outcome["created"]
        self.summary.updated += outcome["updated"]
        self.summary.unchanged += outcome["unchanged"]
        if not self.refresh_everyone:
            self.touched_customers.update(outcome["touched"])
            if len(self.touched_customers) > SMALL_IMPORT_CUSTOMERS:
                self.refresh_everyone = True
                self.touched_customers = set()
        self.bar.update(len(chunk.rows))

    def _refresh_aggregates(self) -> None:
        if self.refresh_everyone:
            with self.database.session() as session:
                refresh_customer_aggregates(session, None)
            self.summary.aggregates_refreshed = "all customers (set-based)"
        elif self.touched_customers:
            with self.database.session() as session:
                refresh_customer_aggregates(session, self.touched_customers)
            self.summary.aggregates_refreshed = f"{len(self.touched_customers):,} customers"


def _last_order_start(chunk: list[list], order_column: int) -> int:
    """Index of the first row of the chunk's last run of one order id."""
    last_id = chunk[-1][order_column]
    index = len(chunk) - 1
    while index > 0 and chunk[index - 1][order_column] == last_id:
        index -= 1
    return index


def _runs(order_ids: list[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of adjacent rows with the same order id."""
    start = 0
    for index in range(1, len(order_ids)):
        if order_ids[index] != order_ids[index - 1]:
            yield start, index
            start = index
    if order_ids:
        yield start, len(order_ids)


def _parse_prices(texts: list[str]) -> list[float | None]:
    """Numbers for a column of price strings; one bad value only slows its own chunk down."""
    try:
        values = [float(text) for text in texts]
    except ValueError:
        return [parse_number(text) for text in texts]
    if all(math.isfinite(value) for value in values):
        return values
    return [value if math.isfinite(value) else None for value in values]


class _OrderWriterBase:
    """Classifies a chunk's orders against what is stored, then writes new orders and status moves."""

    def __init__(self, connection, chunk: OrderChunk) -> None:
        self.connection = connection
        self.chunk = chunk
        self.cursor = connection.cursor()
        self.now = utcnow()
        self.rejects: list[tuple[int, str, list]] = []
        self.created = 0
        self.updated = 0
        self.unchanged = 0
        self.touched: set[str] = set()
        self.status_moves: dict[str, list[str]] = {}

    def write(self) -> dict:
        chunk = self.chunk
        self.begin()
        stored = self.stored_orders() if chunk.orders else {}
        new_positions: list[int] = []
        # What each order id is stored as once this chunk is written: later runs compare with it.
        current: dict[str, tuple[str, str]] = dict(stored)
        for position, order in enumerate(chunk.orders):
            order_id, customer_id, _placed, status, _total, content_hash = order
            previous = stored.get(order_id)
            if previous is None:
                new_positions.append(position)
                current[order_id] = (content_hash, status)
                self.touched.add(customer_id)
                continue
            start, end = chunk.spans[position]
            if self._classify(order_id, customer_id, content_hash, status, previous, start, end):
                current[order_id] = (content_hash, status)
        if new_positions:
            self.insert_new(new_positions)
        for start, end, content_hash, status in chunk.repeats:
            order_id = chunk.order_ids[start]
            previous = current.get(order_id)
            if previous is None:
                self._reject_span(start, end, f"order {order_id} was rejected earlier in this file")
                continue
            if self._classify(order_id, chunk.customer_ids[start], content_hash, status, previous, start, end):
                current[order_id] = (content_hash, status)
        status_moves = self.status_moves
        for status, order_ids in status_moves.items():
            self.update_status(status, order_ids)
        self.cursor.close()
        return {
            "chunk": chunk,
            "rejects": self.rejects,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "touched": self.touched,
        }

    def _classify(self, order_id, customer_id, content_hash, status, previous, start, end) -> bool:
        """Compare an order with its stored version, like ingest.upsert_orders; True on a status move."""
        stored_hash, stored_status = previous
        if stored_hash != content_hash:
            self._reject_span(
                start, end,
                f"conflict: order {order_id} is already stored with a different customer, time or lines",
            )
            return False
        if stored_status == status:
            self.unchanged += 1
            return False
        if (stored_status, status) in STATUS_TRANSITIONS:
            self.status_moves.setdefault(status, []).append(order_id)
            self.touched.add(customer_id)
            self.updated += 1
            return True
        self._reject_span(start, end, f"cannot move order {order_id} from {stored_status} to {status}")
        return False

    def _reject_span(self, start: int, end: int, reason: str) -> None:
        for index in range(start, end):
            self.rejects.append((self.chunk.lines[index], reason, self.chunk.rows[index]))


class PostgresOrderWriter(_OrderWriterBase):
    """COPY into TEMP staging tables, then set-based inserts."""

    ORDER_COLUMNS = ("order_id", "customer_id", "placed_at", "status", "total", "content_hash", "updated_at")
    LINE_COLUMNS = ("order_id", "line_no", "sku", "quantity", "unit_price")

    def begin(self) -> None:
        bulk.tune_postgres_session(self.connection)
        bulk.create_staging_table(self.cursor, "stage_orders", "orders", self.ORDER_COLUMNS)
        now_text = self.now.isoformat(sep=" ")
        escape = bulk.copy_escape
        block = [
            f"{escape(order_id)}\t{escape(customer_id)}\t{placed_at.isoformat(sep=' ')}\t{status}\t{total!r}\t"
            f"{content_hash}\t{now_text}\n"
            for order_id, customer_id, placed_at, status, total, content_hash in self.chunk.orders
        ]
        bulk.copy_text_into(self.cursor, "stage_orders", self.ORDER_COLUMNS, ["".join(block)])

    def stored_orders(self) -> dict[str, tuple[str, str]]:
        self.cursor.execute(
            "SELECT o.order_id, o.content_hash, o.status FROM stage_orders s JOIN orders o ON o.order_id = s.order_id"
        )
        return {order_id: (content_hash, status) for order_id, content_hash, status in self.cursor.fetchall()}

    def insert_new(self, new_positions: list[int]) -> None:
        chunk, cursor = self.chunk, self.cursor
        if len(new_positions) < len(chunk.orders):
            keep = [chunk.orders[position][0] for position in new_positions]
            cursor.execute("DELETE FROM stage_orders WHERE NOT (order_id = ANY(%s))", (keep,))
        now_text = self.now.isoformat(sep=" ")
        # Placeholders first: orders reference customers by foreign key.
        cursor.execute(
            "INSERT INTO customers (customer_id, community_member, opted_out, attributes, placeholder, "
            "paid_orders, net_spend, purchase_days, updated_at) "
            "SELECT customer_id, false, false, '{}'::json, true, 0, 0, 0, %s::timestamp FROM (SELECT DISTINCT customer_id FROM stage_orders) AS named "
            "ON CONFLICT (customer_id) DO NOTHING",
            (now_text,),
        )
        skus = sorted({sku for position in new_positions for sku in _span_values(chunk.skus, chunk.spans[position])})
        bulk.create_staging_table(cursor, "stage_skus", "products", ("sku",))
        bulk.copy_text_into(cursor, "stage_skus", ("sku",), ["".join(f"{bulk.copy_escape(sku)}\n" for sku in skus)])
        cursor.execute(
            "INSERT INTO products (sku, name, price, active, repeat_purchase, placeholder, updated_at) "
            "SELECT sku, sku, 0, false, false, true, %s::timestamp FROM stage_skus ON CONFLICT (sku) DO NOTHING",
            (now_text,),
        )
        cursor.execute(
            f"INSERT INTO orders ({', '.join(self.ORDER_COLUMNS)}) SELECT {', '.join(self.ORDER_COLUMNS)} "
            "FROM stage_orders ON CONFLICT (order_id) DO NOTHING"
        )
        inserted_positions = new_positions
        if cursor.rowcount != len(new_positions):
            # Another writer stored some of these orders since we looked: keep only the rows we wrote
            # (stamped with this chunk's updated_at) and compare the others like re-sends.
            inserted_positions = self._recheck_race(new_positions)
        self.created += len(inserted_positions)
        # Every order here was inserted by this transaction, so none of its lines can exist yet:
        # the lines go straight into order_lines, without a staging table.
        bulk.copy_text_into(cursor, "order_lines", self.LINE_COLUMNS, self._line_blocks(inserted_positions))

    def _recheck_race(self, new_positions: list[int]) -> list[int]:
        chunk = self.chunk
        ids = [chunk.orders[position][0] for position in new_positions]
        self.cursor.execute(
            "SELECT order_id, content_hash, status, updated_at = %s FROM orders WHERE order_id = ANY(%s)",
            (self.now, ids),
        )
        found = {row[0]: row[1:] for row in self.cursor.fetchall()}
        ours = []
        for position in new_positions:
            order_id, customer_id, _placed, status, _total, content_hash = chunk.orders[position]
            stored_hash, stored_status, mine = found[order_id]
            if mine:
                ours.append(position)
                continue
            start, end = chunk.spans[position]
            self._classify(order_id, customer_id, content_hash, status, (stored_hash, stored_status), start, end)
        return ours

    def _line_blocks(self, positions: list[int]) -> Iterator[str]:
        chunk = self.chunk
        escape = bulk.copy_escape
        needs_escape = _any_needs_escape(chunk.order_ids) or _any_needs_escape(chunk.skus)
        block: list[str] = []
        for position in positions:
            start, end = chunk.spans[position]
            order_id = escape(chunk.order_ids[start]) if needs_escape else chunk.order_ids[start]
            for line_no, index in enumerate(range(start, end), start=1):
                sku = escape(chunk.skus[index]) if needs_escape else chunk.skus[index]
                block.append(f"{order_id}\t{line_no}\t{sku}\t{chunk.quantities[index]}\t{chunk.prices[index]!r}\n")
            if len(block) >= bulk.COPY_BLOCK_ROWS:
                yield "".join(block)
                block = []
        if block:
            yield "".join(block)

    def update_status(self, status: str, order_ids: list[str]) -> None:
        self.cursor.execute(
            "UPDATE orders SET status = %s, updated_at = %s WHERE order_id = ANY(%s)", (status, self.now, order_ids)
        )


class SqliteOrderWriter(_OrderWriterBase):
    """executemany in one transaction, holding SQLite's write lock from the start."""

    def begin(self) -> None:
        bulk.begin_sqlite_write(self.connection)

    def stored_orders(self) -> dict[str, tuple[str, str]]:
        stored: dict[str, tuple[str, str]] = {}
        ids = [order[0] for order in self.chunk.orders]
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            self.cursor.execute(f"SELECT order_id, content_hash, status FROM orders WHERE order_id IN ({marks})", part)
            for order_id, content_hash, status in self.cursor.fetchall():
                stored[order_id] = (content_hash, status)
        return stored

    def insert_new(self, new_positions: list[int]) -> None:
        chunk, cursor = self.chunk, self.cursor
        now_text = self.now.strftime(bulk.SQLITE_DATETIME_FORMAT)
        customers = sorted({chunk.orders[position][1] for position in new_positions})
        cursor.executemany(
            "INSERT OR IGNORE INTO customers (customer_id, community_member, opted_out, attributes, placeholder, "
            "paid_orders, net_spend, purchase_days, updated_at) VALUES (?, 0, 0, '{}', 1, 0, 0, 0, ?)",
            [(customer_id, now_text) for customer_id in customers],
        )
        skus = sorted({sku for position in new_positions for sku in _span_values(chunk.skus, chunk.spans[position])})
        cursor.executemany(
            "INSERT OR IGNORE INTO products (sku, name, price, active, repeat_purchase, placeholder, updated_at) "
            "VALUES (?, ?, 0, 0, 0, 1, ?)",
            [(sku, sku, now_text) for sku in skus],
        )
        order_rows = []
        line_rows = []
        for position in new_positions:
            order_id, customer_id, placed_at, status, total, content_hash = chunk.orders[position]
            order_rows.append((order_id, customer_id, placed_at.strftime(bulk.SQLITE_DATETIME_FORMAT), status,
                               total, content_hash, now_text))
            start, end = chunk.spans[position]
            for line_no, index in enumerate(range(start, end), start=1):
                line_rows.append((order_id, line_no, chunk.skus[index], chunk.quantities[index], chunk.prices[index]))
        # The write lock is held since begin(), so nothing was stored between the lookup and here.
        cursor.executemany(
            "INSERT INTO orders (order_id, customer_id, placed_at, status, total, content_hash, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            order_rows,
        )
        cursor.executemany(
            "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) VALUES (?, ?, ?, ?, ?)",
            line_rows,
        )
        self.created += len(order_rows)

    def update_status(self, status: str, order_ids: list[str]) -> None:
        now_text = self.now.strftime(bulk.SQLITE_DATETIME_FORMAT)
        self.cursor.executemany(
            "UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?",
            [(status, now_text, order_id) for order_id in order_ids],
        )


def _span_values(values: list, span: tuple[int, int]) -> list:
    return values[span[0] : span[1]]


def _any_needs_escape(values: list[str]) -> bool:
    """True when some value holds a character COPY text format must escape (rare: checked once per chunk)."""
    joined = "".join(values)
    return "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined


# ---- customers and products ----------------------------------------------------------------------


class RecordImport:
    """Customers or products: validate each row, then upsert the chunk (a later row for an id wins)."""

    def __init__(self, kind: str, database, positions: dict[str, int], skew: int, rejects: RejectsWriter,
                 summary: ImportSummary, bar) -> None:
        self.kind = kind
        self.database = database
        self.positions = positions
        self.dates = DateParser(skew)
        self.rejects = rejects
        self.summary = summary
        self.bar = bar
        if kind == "customers":
            self.table, self.key = "customers", "customer_id"
            self.columns = ("customer_id", "joined_at", "channel", "community_member", "opted_out", "placeholder",
                            "attributes", "paid_orders", "net_spend", "purchase_days", "updated_at")
            self.update_columns = ("joined_at", "channel", "community_member", "opted_out", "placeholder", "updated_at")
            self.parse = self._customer
        else:
            self.table, self.key = "products", "sku"
            self.columns = ("sku", "name", "category", "price", "cost", "stock", "active", "repeat_purchase",
                            "placeholder", "updated_at")
            self.update_columns = self.columns[1:]
            self.parse = self._product

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
            with bulk.raw_connection(self.database) as connection:
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
            if bulk.dialect_of(connection) == "postgresql":
                bulk.tune_postgres_session(connection)
                staging = f"stage_{self.table}"
                bulk.create_staging_table(cursor, staging, self.table, self.columns)
                bulk.copy_rows_into(cursor, staging, self.columns, records)
                cursor.execute(
                    f"SELECT count(DISTINCT s.{self.key}) FROM {staging} s JOIN {self.table} t ON t.{self.key} = s.{self.key}"
                )
                existing = cursor.fetchone()[0]
                written = bulk.insert_from_staging(cursor, staging, self.table, self.columns, [self.key],
                                                   self.update_columns)
            else:
                bulk.begin_sqlite_write(connection)
                existing = _sqlite_existing(cursor, self.table, self.key, sorted({record[0] for record in records}))
                # Reduce to the last record per id first, as PostgreSQL does, so counts agree.
                latest = {record[0]: record for record in records}
                written = bulk.sqlite_bulk_write(cursor, self.table, self.columns, latest.values(), [self.key],
                                                 self.update_columns)
        finally:
            cursor.close()
        return distinct - existing, written, distinct

    def _text(self, row: list, name: str) -> str:
        position = self.positions.get(name)
        return row[position].strip() if position is not None else ""

    def _customer(self, row: list, now: datetime) -> tuple[tuple | None, list[str]]:
        problems = []
        customer_id = row[self.positions["customer_id"]]
        problem = id_problem(customer_id)
        if problem:
            problems.append(f"customer_id {problem}")
        joined_text = self._text(row, "joined_at")
        joined_at = None
        if joined_text:
            joined_at, problem = self.dates.parse(joined_text)
            if problem:
                problems.append(f"joined_at {problem} (got {joined_text!r})")
        channel = self._text(row, "channel") or None
        if channel and len(channel) > 64:
            problems.append("channel is longer than 64 characters")
        community_member = self._boolean(row, "community_member", False, problems)
        opted_out = self._boolean(row, "opted_out", False, problems)
        if problems:
            return None, problems
        return (customer_id, joined_at, channel, community_member, opted_out, False, {}, 0, 0, 0, now), []

    def _product(self, row: list, now: datetime) -> tuple[tuple | None, list[str]]:
        problems = []
        sku = row[self.positions["sku"]]
        problem = id_problem(sku)
        if problem:
            problems.append(f"sku {problem}")
        name = row[self.positions["name"]].strip()
        if not 1 <= len(name) <= 255:
            problems.append("name must have 1 to 255 characters")
        category = self._text(row, "category") or None
        if category and len(category) > 128:
            problems.append("category is longer than 128 characters")
        price = self._money(row, "price", problems, required=True)
        cost = self._money(row, "cost", problems, required=False)
        stock_text = self._text(row, "stock")
        stock = None
        if stock_text:
            stock = parse_whole_number(stock_text)
            if stock is None:
                problems.append(f"stock must be a whole number of 0 or more (got {stock_text!r})")
        active = self._boolean(row, "active", True, problems)
        repeat_purchase = self._boolean(row, "repeat_purchase", False, problems)
        if problems:
            return None, problems
        return (sku, name, category, price, cost, stock, active, repeat_purchase, False, now), []

    def _money(self, row: list, name: str, problems: list[str], *, required: bool) -> float | None:
        text = self._text(row, name)
        if not text:
            if required:
                problems.append(f"{name} is required")
            return None
        value = parse_number(text)
        if value is None or not 0 <= value <= MAX_MONEY:
            problems.append(f"{name} must be a number from 0 to {MAX_MONEY:,} (got {text!r})")
            return None
        return value

    def _boolean(self, row: list, name: str, default: bool, problems: list[str]) -> bool:
        text = self._text(row, name)
        value = parse_boolean(text, default)
        if value is None:
            problems.append(f"{name} must be true or false (got {text!r})")
            return default
        return value


def _sqlite_existing(cursor, table: str, key: str, ids: list[str]) -> int:
    found = 0
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        cursor.execute(f"SELECT count(*) FROM {table} WHERE {key} IN ({marks})", part)
        found += cursor.fetchone()[0]
    return found
