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
import hashlib
import itertools
import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import or_, select, update
from tqdm import tqdm

from shared import bulk
from shared.csvstream import FormulaSafeWriter
from shared.ingest import (
    STATUS_TRANSITIONS,
    aggregates_select,
    refresh_customer_aggregates,
    session_timezone,
    utcnow,
)
from shared.limits import (
    ID_FORBIDDEN_PATTERN,
    MAX_ID_LENGTH,
    MAX_MONEY,
    MAX_ORDER_LINES,
    MAX_QUANTITY,
    MAX_STOCK,
    MIN_UNIT_PRICE,
    TimeRules,
    id_problem,
    money_problem,
)
from shared.models import Customer, Order

ORDER_STATUSES = ("paid", "refunded", "cancelled")
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
    chunk_rows: int = 200_000,
    rejects_path=None,
    progress: bool = True,
    config: dict | None = None,
) -> ImportSummary:
    """Import a CSV file of orders, customers or products into `database` (a shared.extensions.Database).

    `config` supplies the time rules (SHOP_TIMEZONE, MIN_PLAUSIBLE_DATE, MAX_FUTURE_SKEW_SECONDS); the
    defaults apply when it is None.
    """
    if kind not in COLUMNS:
        raise ImportFileError(f"unknown import kind {kind!r}: expected one of {', '.join(COLUMNS)}")
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
        positions = _column_positions(kind, header)
        rejects = RejectsWriter(rejects_path, header)
        total, plain = _scan_file(path)
        bar = tqdm(total=total if progress else None, unit=" rows", unit_scale=True, desc=f"import {kind}",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
        try:
            if kind == "orders":
                if plain:
                    batches = _arrow_batches(path, len(header), rejects, summary)
                else:
                    batches = _csv_module_batches(reader, len(header), rejects, summary)
                OrderImport(database, positions, time_rules, rejects, summary, bar).run(batches, chunk_rows)
            else:
                rows = _read_rows(reader, len(header), rejects, summary)
                RecordImport(kind, database, positions, time_rules, rejects, summary, bar).run(rows, chunk_rows)
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
            # The rejects file repeats what the client sent, formulas included: ops open it in a spreadsheet.
            self._writer = FormulaSafeWriter(self._handle)
            self._writer.writerow(["line", "reason", *self.header])
        self._writer.writerow([line, reason, *row])

    def close(self) -> None:
        """Flush and close the file, if any row was rejected."""
        if self._handle is not None:
            self._handle.close()


# ---- shared field rules (the REST schemas' rules, for strings read from CSV) ---------------------


class DateParser:
    """ISO 8601 timestamps as the REST schemas read them (datetime.fromisoformat; no offset means the
    shop's time zone), converted to naive UTC, rejected outside the plausible window (TimeRules).
    Caches each distinct string."""

    def __init__(self, rules: TimeRules) -> None:
        self.rules = rules
        self.limit = rules.latest()
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
            value = self.rules.to_naive_utc(datetime.fromisoformat(text.strip()))
        except (ValueError, OverflowError):
            return None, "not a valid ISO 8601 date and time"
        return self.window(value)

    def window(self, value: datetime) -> tuple[datetime | None, str | None]:
        """(value, None) inside the plausible window, else (None, why)."""
        if value < self.rules.min_date:
            return None, self.rules.window_problem(value)
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


# ---- orders --------------------------------------------------------------------------------------
#
# Orders files are the big ones (millions of lines), so their rows are handled a column at a time:
# pyarrow reads the file in blocks, every rule runs over whole columns (pyarrow compute, numpy,
# pandas), and Python looks at single rows only where a column holds a value the fast check does not
# vouch for. Each such value is then checked by the same scalar rule as before (parse_whole_number,
# parse_number, DateParser, id_problem), so the fast path can only ever agree with the slow one.

# Values the column checks take without a second look; anything else goes through the scalar rule.
PLAIN_QUANTITY = r"^[0-9]{1,9}$"
# At most 15 significant digits: the text and the float read from it are the same number, so the
# text can go to COPY as it is.
PLAIN_PRICE = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"
# Prices whose "%.2f" form is the text itself, padded to two decimals.
TWO_DECIMAL_PRICE = r"^(0|[1-9][0-9]{0,7})(\.[0-9]{1,2})?$"
# Timestamps that pandas and datetime.fromisoformat read alike (years 1000-9999, no week dates,
# no compact forms); pandas says NaT for impossible dates and times, which then take the slow rule.
PLAIN_TIMESTAMP = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?$"
# A timestamp that names its offset (else it is shop-local time).
NAMED_OFFSET = r"(Z|[+-][0-9]{2}:[0-9]{2})$"
# Strings whose JSON form is the string in double quotes (printable ASCII but '"' and '\').
JSON_PLAIN_STRING = r'^[\x20\x21\x23-\x5b\x5d-\x7e]*$'
# Characters COPY text format escapes.
COPY_SPECIAL = r"[\\\t\n\r]"
# Rows per block the pyarrow reader hands over (about 8 MB of CSV).
ARROW_BLOCK_BYTES = 8 << 20
# Rows per block when the csv module reads a file pyarrow cannot number reliably.
CSV_MODULE_BLOCK_ROWS = 50_000
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
# datetime's range in microseconds since 1970: pandas can produce values outside it (year 0).
MIN_MICROS = (datetime.min - EPOCH) // MICROSECOND
MAX_MICROS = (datetime.max - EPOCH) // MICROSECOND


def canonical_order_hash(customer_id: str, placed_at_iso: str, skus, quantities, price_texts) -> str:
    """The same sha256 as shared.ingest.order_content_hash, built without intermediate dicts.

    order_content_hash hashes json.dumps({"customer_id", "placed_at", "lines": [[sku, quantity,
    "price.2f"]]}, separators=(",", ":")); this writes the identical bytes directly (the tests
    compare both on awkward input). The import builds the same bytes column-wise (_order_hashes).
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
class RowBatch:
    """Rows as read from the file: their line numbers and their fields as string columns in header order."""

    lines: np.ndarray
    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def row(self, index: int) -> list[str]:
        """The fields of one row, as written to the rejects file."""
        return [column[index].as_py() for column in self.table.columns]

    def slice(self, start: int, end: int | None = None) -> RowBatch:
        """Rows start to end (a view, no copy)."""
        end = len(self) if end is None else end
        return RowBatch(self.lines[start:end], self.table.slice(start, end - start))


def _concat_batches(first: RowBatch | None, second: RowBatch) -> RowBatch:
    if first is None or len(first) == 0:
        return second
    return RowBatch(np.concatenate([first.lines, second.lines]), pa.concat_tables([first.table, second.table]))


def _scan_file(path: Path) -> tuple[int, bool]:
    """(data lines, plain): newlines minus the header for the progress bar, and whether the file has no
    quote character, no blank line and no lone carriage return, so that data row k is on line k + 2."""
    newlines = 0
    plain = True
    carried = b""  # a block's last byte when it is a carriage return: its line feed may come next
    last_byte = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            newlines += block.count(b"\n")
            if not plain:
                continue
            data = carried + block
            carried = b""
            if data.endswith(b"\r"):
                carried, data = b"\r", data[:-1]
            seam = last_byte + data
            if (b'"' in data or b"\n\n" in seam or b"\n\r\n" in seam
                    or data.count(b"\r") != data.count(b"\r\n")):
                plain = False
            if data:
                last_byte = data[-1:]
    if carried:
        plain = False
    return max(newlines - 1, 0), plain


def _arrow_batches(path: Path, width: int, rejects: RejectsWriter, summary: ImportSummary) -> Iterator[RowBatch]:
    """Batches from pyarrow's streaming CSV reader, for a plain file (see _scan_file).

    pyarrow cannot say on which line a row of the wrong width is; at the first such row the rest of
    the file is read by the csv module instead, which rejects it with its line number.
    """
    names = [f"column_{position}" for position in range(width)]
    next_line = 2
    try:
        # Opening already parses the first block.
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1, block_size=ARROW_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in names},
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid:
        reader = None
    while reader is not None:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid:
            reader.close()
            break
        if batch.num_rows:
            lines = np.arange(next_line, next_line + batch.num_rows, dtype=np.int64)
            next_line += batch.num_rows
            yield RowBatch(lines, pa.Table.from_batches([batch]))
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        next(rows)  # the header
        # A plain file has one row per line: skip the rows already handed over.
        for _row in itertools.islice(rows, next_line - 2):
            pass
        yield from _csv_module_batches(rows, width, rejects, summary)


def _csv_module_batches(reader, width: int, rejects: RejectsWriter, summary: ImportSummary) -> Iterator[RowBatch]:
    """Batches from the csv module: for files with quoted fields, blank lines or rows of the wrong width."""
    lines: list[int] = []
    rows: list[list] = []
    for line, row in _read_rows(reader, width, rejects, summary):
        lines.append(line)
        rows.append(row)
        if len(rows) >= CSV_MODULE_BLOCK_ROWS:
            yield _batch_from_rows(lines, rows, width)
            lines, rows = [], []
    if rows:
        yield _batch_from_rows(lines, rows, width)


def _batch_from_rows(lines: list[int], rows: list[list], width: int) -> RowBatch:
    columns = list(zip(*rows))
    arrays = [pa.array(column, pa.string()) for column in columns]
    return RowBatch(np.array(lines, dtype=np.int64),
                    pa.table(arrays, names=[f"column_{position}" for position in range(width)]))


def _order_chunks(batches: Iterator[RowBatch], chunk_rows: int, order_position: int) -> Iterator[RowBatch]:
    """Chunks of whole orders of about chunk_rows rows; an order longer than MAX_ORDER_LINES is cut
    after max(chunk_rows, MAX_ORDER_LINES + 1) rows, where it gets rejected, so a chunk stays bounded."""
    buffered: RowBatch | None = None
    for batch in batches:
        buffered = _concat_batches(buffered, batch)
        while True:
            cut = _chunk_cut(buffered.table.column(order_position), chunk_rows, at_end=False)
            if cut is None:
                break
            yield buffered.slice(0, cut)
            buffered = buffered.slice(cut)
    while buffered is not None and len(buffered):
        cut = _chunk_cut(buffered.table.column(order_position), chunk_rows, at_end=True)
        yield buffered.slice(0, cut)
        buffered = buffered.slice(cut)


def _chunk_cut(order_ids: pa.ChunkedArray, chunk_rows: int, at_end: bool) -> int | None:
    """Rows to hand over as the next chunk, or None to read more first."""
    size = len(order_ids)
    if size < chunk_rows:
        return size if at_end else None
    window = order_ids.slice(0, chunk_rows)
    changes = np.flatnonzero(_changes(window))
    if len(changes):
        return int(changes[-1]) + 1  # up to the start of the last order in the window
    # The first chunk_rows rows are one order: it ends where the order id first changes.
    limit = max(chunk_rows, MAX_ORDER_LINES + 1)
    rest = np.flatnonzero(_changes(order_ids.slice(0, min(size, limit + 1))))
    if len(rest):
        run_end = int(rest[0]) + 1
        return run_end if run_end <= MAX_ORDER_LINES else limit
    if size >= limit:
        return limit
    return size if at_end else None


def _changes(values) -> np.ndarray:
    """For each row but the first: whether its value differs from the row before."""
    if len(values) < 2:
        return np.zeros(0, dtype=bool)
    different = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1))
    return _to_numpy_bool(different)


def _to_numpy_bool(values) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _bad_ids(values: pa.StringArray) -> np.ndarray:
    """Which ids break id_problem's rules (length 1 to MAX_ID_LENGTH, no "/" or control characters)."""
    lengths = pc.utf8_length(values).to_numpy()
    return (lengths < 1) | (lengths > MAX_ID_LENGTH) | _matches(values, ID_FORBIDDEN_PATTERN)


def unit_price_ok(prices: np.ndarray) -> np.ndarray:
    """Which unit prices the REST schema takes (MIN_UNIT_PRICE to MAX_MONEY); NaN fails."""
    return (prices >= MIN_UNIT_PRICE) & (prices <= MAX_MONEY)


def _column(table: pa.Table, position: int) -> pa.StringArray:
    return table.column(position).combine_chunks()


def _matches(values: pa.Array, pattern: str) -> np.ndarray:
    return _to_numpy_bool(pc.match_substring_regex(values, pattern))


@dataclass
class OrderChunk:
    """One chunk of order rows after validation: whole orders, each a span of adjacent rows.

    Row columns cover every row of the chunk; order columns cover the orders to store (the first run
    of each valid order id in the chunk), in file order.
    """

    batch: RowBatch
    # Per row.
    order_ids: pa.Array | None = None
    customer_ids: pa.Array | None = None
    skus: pa.Array | None = None
    quantities: np.ndarray | None = None
    prices: np.ndarray | None = None
    price_copy_texts: pa.Array | None = None
    line_numbers: np.ndarray | None = None
    # Per order to store.
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order_order_ids: pa.Array | None = None
    order_customer_ids: pa.Array | None = None
    order_placed_texts: pa.Array | None = None
    order_statuses: pa.Array | None = None
    order_totals: list[float] = field(default_factory=list)
    order_hashes: list[str] = field(default_factory=list)
    # Later runs of an order id already seen in this chunk: applied after the first run is written.
    repeats: list[tuple[int, int, str, str]] = field(default_factory=list)  # (start, end, hash, status)
    rejects: list[tuple[int, str, list]] = field(default_factory=list)
    accepted_rows: int = 0

    @property
    def order_count(self) -> int:
        return len(self.starts)

    def order_lists(self) -> tuple[list, list, list]:
        """(order ids, content hashes, statuses) of the orders to store, as Python lists."""
        return self.order_order_ids.to_pylist(), self.order_hashes, self.order_statuses.to_pylist()


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
            for chunk in _order_chunks(batches, chunk_rows, self.positions["order_id"]):
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
        chunk = OrderChunk(batch=batch)
        count = len(batch)
        self.summary.rows += count
        order_ids = _column(table, positions["order_id"])
        customer_ids = _column(table, positions["customer_id"])
        skus = _column(table, positions["sku"])
        problems: dict[int, list[str]] = {}

        def flag(index: int, reason: str) -> None:
            problems.setdefault(int(index), []).append(reason)

        # The checks run in the order of the REST schema's fields, so a row's reasons read the same.
        for name, values in (("order_id", order_ids), ("customer_id", customer_ids), ("sku", skus)):
            for index in np.flatnonzero(_bad_ids(values)):
                flag(index, f"{name} {id_problem(values[index].as_py())}")
        quantity_texts = _column(table, positions["quantity"])
        quantities, quantity_ok = _parse_quantity_column(quantity_texts)
        for index in np.flatnonzero(~quantity_ok):
            flag(index, f"quantity must be a whole number from 1 to {MAX_QUANTITY:,} "
                        f"(got {quantity_texts[index].as_py()!r})")
        price_texts = _column(table, positions["unit_price"])
        prices, plain_prices = _parse_price_column(price_texts)
        for index in np.flatnonzero(~unit_price_ok(prices)):  # NaN (unreadable) fails too
            flag(index, f"unit_price must be a number from {MIN_UNIT_PRICE} to {MAX_MONEY:,} "
                        f"(got {price_texts[index].as_py()!r})")
        placed_texts = _column(table, positions["placed_at"])
        placed, placed_problems = _parse_timestamp_column(placed_texts, DateParser(self.time_rules))
        for index, problem in placed_problems.items():
            flag(index, f"placed_at {problem} (got {placed_texts[index].as_py()!r})")
        statuses = _status_column(table.column(positions["status"]).combine_chunks() if "status" in positions
                                  else None, count)
        known_status = _to_numpy_bool(pc.is_in(statuses, value_set=pa.array(ORDER_STATUSES)))
        for index in np.flatnonzero(~known_status):
            flag(index, f"status must be one of {', '.join(ORDER_STATUSES)} (got {statuses[index].as_py()!r})")

        chunk.order_ids, chunk.customer_ids, chunk.skus = order_ids, customer_ids, skus
        chunk.quantities, chunk.prices = quantities, prices
        chunk.price_copy_texts = _price_copy_texts(price_texts, prices, plain_prices)

        # Orders are runs of adjacent rows with one order id.
        order_changes = _changes(order_ids)
        starts = np.concatenate([[0], np.flatnonzero(order_changes) + 1]).astype(np.int64)
        ends = np.append(starts[1:], count).astype(np.int64)
        lengths = ends - starts
        chunk.line_numbers = np.arange(count, dtype=np.int64) - np.repeat(starts, lengths) + 1
        # Whether every order's lines agree on customer, time and status: within a run, none of
        # them may change (compared as read; the slow path compares the parsed times).
        field_changes = order_changes | _changes(customer_ids) | _changes(placed_texts) | _changes(statuses)
        agree = bool(np.array_equal(field_changes, order_changes))
        run_order_ids = order_ids.take(starts)
        distinct_ids = pc.count_distinct(run_order_ids).as_py() == len(starts)
        continues_overlong = (self.overlong_order_id is not None and count > 0
                              and order_ids[0].as_py() == self.overlong_order_id)

        run_customer_ids = customer_ids.take(starts)
        run_placed = placed[starts]
        run_statuses = statuses.take(starts)
        hashes = _order_hashes(run_customer_ids, run_placed, skus, quantities, prices, price_texts, starts, ends)
        totals = _order_totals(quantities, prices, starts, ends)

        if not problems and agree and distinct_ids and lengths.max(initial=0) <= MAX_ORDER_LINES \
                and not continues_overlong:
            stored_runs = np.arange(len(starts))
            chunk.accepted_rows = count
        else:
            stored_runs = self._check_runs(chunk, problems, customer_ids, placed, statuses, starts, ends,
                                           hashes, run_order_ids.to_pylist(), run_statuses.to_pylist())
        chunk.starts, chunk.ends = starts[stored_runs], ends[stored_runs]
        chunk.order_order_ids = run_order_ids.take(stored_runs)
        chunk.order_customer_ids = run_customer_ids.take(stored_runs)
        chunk.order_placed_texts = _storage_texts(run_placed[stored_runs])
        chunk.order_statuses = run_statuses.take(stored_runs)
        chunk.order_totals = [totals[run] for run in stored_runs.tolist()]
        chunk.order_hashes = [hashes[run] for run in stored_runs.tolist()]
        return chunk

    def _check_runs(self, chunk: OrderChunk, problems: dict, customer_ids, placed, statuses, starts, ends,
                    hashes: list[str], run_order_ids: list[str], run_statuses: list[str]) -> np.ndarray:
        """Order by order, for a chunk with a bad row, disagreeing lines, an overlong order or an order id
        seen twice: rejects, repeats, and which runs to store (their indexes)."""
        customers = customer_ids.to_pylist()
        placed_values = placed.tolist()
        status_values = statuses.to_pylist()
        lines = chunk.batch.lines
        stored_runs: list[int] = []
        first_run: dict[str, tuple[int, str, str]] = {}  # order_id -> (first line, hash, status)
        for run, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            order_id = run_order_ids[run]
            reason = self._order_problem(start, end, order_id, customers, placed_values, status_values,
                                         problems, lines)
            if reason is not None:
                self._reject_order(chunk, start, end, reason, problems)
                continue
            content_hash, status = hashes[run], run_statuses[run]
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
            chunk.rejects.append((int(chunk.batch.lines[index]), "; ".join(own) if own else reason,
                                  chunk.batch.row(index)))

    # -- writing (runs in the writer thread) --

    def write(self, chunk: OrderChunk) -> dict:
        """Store one chunk in one transaction; returns what happened to each order."""
        with bulk.raw_connection(self.database) as connection:
            if bulk.dialect_of(connection) == "postgresql":
                writer = PostgresOrderWriter(connection, chunk, self.copy_directly)
                outcome = writer.write()
                if not writer.copied_directly:
                    self.copy_directly = False
                return outcome
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
        self.bar.update(len(chunk.batch))

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


def refresh_all_aggregates_by_join(session) -> None:
    """Every customer's aggregates, as shared.ingest.refresh_customer_aggregates(session, None) sets them,
    with two joins instead of one correlated subquery per column and customer (about 2.5x faster on
    PostgreSQL); rows whose values do not change are not rewritten."""
    customers = Customer.__table__
    aggregates = aggregates_select(session_timezone(session)).group_by(Order.customer_id).subquery()
    names = ("first_paid_at", "last_paid_at", "paid_orders", "net_spend", "purchase_days")
    changed = or_(*[customers.c[name].is_distinct_from(aggregates.c[name]) for name in names])
    session.execute(
        update(customers)
        .values({name: aggregates.c[name] for name in names})
        .where(customers.c.customer_id == aggregates.c.customer_id, changed)
    )
    # Customers without a paid order: aggregates empty.
    paid = select(Order.customer_id).where(Order.customer_id == customers.c.customer_id, Order.status == "paid")
    session.execute(
        update(customers)
        .values(first_paid_at=None, last_paid_at=None, paid_orders=0, net_spend=0, purchase_days=0)
        .where(~paid.exists(),
               or_(customers.c.first_paid_at.is_not(None), customers.c.last_paid_at.is_not(None),
                   customers.c.paid_orders != 0, customers.c.net_spend != 0, customers.c.purchase_days != 0))
    )


def _parse_quantity_column(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(quantities, valid) for a column of quantity texts; valid means a whole number from 1 to MAX_QUANTITY."""
    plain = _matches(texts, PLAIN_QUANTITY)
    quantities = np.zeros(len(texts), dtype=np.int64)
    quantities[plain] = pc.cast(texts.filter(pa.array(plain)), pa.int64()).to_numpy()
    valid = plain.copy()
    for index in np.flatnonzero(~plain):
        number = parse_whole_number(texts[index].as_py())
        if number is not None and 1 <= number <= MAX_QUANTITY:
            quantities[index] = number
            valid[index] = True
    return quantities, valid & (quantities >= 1) & (quantities <= MAX_QUANTITY)


def _parse_price_column(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(prices, plain): the numbers (NaN where a text is not a finite number) and which texts were plain."""
    plain = _matches(texts, PLAIN_PRICE)
    prices = np.full(len(texts), np.nan)
    prices[plain] = pc.cast(texts.filter(pa.array(plain)), pa.float64()).to_numpy()
    for index in np.flatnonzero(~plain):
        number = parse_number(texts[index].as_py())
        if number is not None:
            prices[index] = number
    return prices, plain


def _price_copy_texts(texts: pa.StringArray, prices: np.ndarray, plain: np.ndarray) -> pa.Array:
    """unit_price as COPY text: a plain text as it is (the same number), else the float's repr."""
    if plain.all():
        return texts
    values = texts.to_pylist()
    for index in np.flatnonzero(~plain):
        values[index] = repr(float(prices[index]))
    return pa.array(values, pa.string())


def _parse_timestamp_column(texts: pa.StringArray, dates: DateParser) -> tuple[np.ndarray, dict[int, str]]:
    """(microseconds since 1970 as naive UTC, {row: problem}) with DateParser's rules."""
    micros = np.zeros(len(texts), dtype=np.int64)
    plain = _matches(texts, PLAIN_TIMESTAMP)
    if plain.any():
        # The lines of an order share their time: parse each distinct text once.
        encoded = texts.filter(pa.array(plain)).dictionary_encode()
        distinct_values, distinct_readable = _parse_distinct_times(encoded.dictionary, dates.rules.shop_timezone)
        indices = encoded.indices.to_numpy()
        micros[plain] = distinct_values[indices]
        plain[np.flatnonzero(plain)[~distinct_readable[indices]]] = False
    limit = (dates.limit - EPOCH) // MICROSECOND
    earliest = (dates.rules.min_date - EPOCH) // MICROSECOND
    problems = {int(index): "is in the future" for index in np.flatnonzero(plain & (micros > limit))}
    too_early = dates.rules.window_problem(dates.rules.min_date - MICROSECOND)
    problems.update({int(index): too_early for index in np.flatnonzero(plain & (micros < earliest))})
    for index in np.flatnonzero(~plain):
        value, problem = dates.parse(texts[index].as_py())
        if problem:
            problems[int(index)] = problem
        else:
            micros[index] = (value - EPOCH) // MICROSECOND
    return micros, problems


def _parse_distinct_times(texts: pa.StringArray, shop_timezone: str) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since 1970 as naive UTC, readable) of plain timestamp texts; a text without an offset
    is shop-local time. Unreadable ones (NaT, out of range, a local time a clock change skips or repeats)
    are left to the scalar rule, which says why or resolves them as zoneinfo does."""
    parsed = pd.to_datetime(pd.Series(texts.to_numpy(zero_copy_only=False), dtype=object),
                            format="ISO8601", utc=True, errors="coerce")
    values = parsed.dt.tz_convert(None)
    readable = ~parsed.isna().to_numpy()
    naive = ~_matches(texts, NAMED_OFFSET)
    if naive.any():
        # Read as UTC above; localize them instead, away from the ends of pandas' nanosecond range.
        years = values.dt.year.to_numpy()
        local = naive & readable & (years > 1680) & (years < 2260)
        localized = (pd.DatetimeIndex(values[local]).tz_localize(shop_timezone, ambiguous="NaT", nonexistent="NaT")
                     .tz_convert(None))
        values = values.copy()
        values[local] = localized
        readable = readable & ~(naive & ~local)
        readable[np.flatnonzero(local)[pd.isna(localized)]] = False
    micros = values.to_numpy(dtype="datetime64[us]").view(np.int64)
    # NaT and values beyond datetime's range go to the slow rule, which says why.
    readable = readable & (micros >= MIN_MICROS) & (micros <= MAX_MICROS) & ~pd.isna(values).to_numpy()
    return micros, readable


def _status_column(texts: pa.StringArray | None, count: int) -> pa.Array:
    """Statuses as REST reads them: surrounding space stripped, empty or absent means paid."""
    if texts is None:
        return pa.array(["paid"] * count, pa.string())
    if _to_numpy_bool(pc.is_in(texts, value_set=pa.array(ORDER_STATUSES))).all():
        return texts
    return pa.array([text.strip() or "paid" for text in texts.to_pylist()], pa.string())


def _json_strings(values: pa.Array) -> pa.Array:
    """Each string as json.dumps writes it (ASCII, escaped), like encode_basestring_ascii."""
    plain = _matches(values, JSON_PLAIN_STRING)
    if plain.all():
        return pc.binary_join_element_wise('"', values, '"', "")
    return pa.array([encode_basestring_ascii(value) for value in values.to_pylist()], pa.string())


def _order_hashes(customer_ids: pa.Array, placed_micros: np.ndarray, skus: pa.Array, quantities: np.ndarray,
                  prices: np.ndarray, price_texts: pa.StringArray, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """The content hash of each run (canonical_order_hash's bytes, built column-wise; one sha256 per order)."""
    price_2f = _two_decimal_texts(price_texts, prices)
    line_json = pc.binary_join_element_wise(
        "[", _json_strings(skus), ",", pc.cast(pa.array(quantities), pa.string()), ',"', price_2f, '"]', "")
    offsets = pa.array(np.append(starts, ends[-1] if len(ends) else 0), pa.int32())
    lines_json = pc.binary_join(pa.ListArray.from_arrays(offsets, line_json), ",")
    placed_iso = _iso_seconds(placed_micros)
    canonical = pc.binary_join_element_wise(
        '{"customer_id":', _json_strings(customer_ids), ',"placed_at":"', placed_iso, '","lines":[', lines_json,
        "]}", "")
    data = memoryview(canonical.buffers()[2]) if len(canonical) else memoryview(b"")
    bounds = np.frombuffer(canonical.buffers()[1], dtype=np.int32, count=len(canonical) + 1,
                           offset=canonical.offset * 4).tolist()
    sha256 = hashlib.sha256
    return [sha256(data[bounds[index]:bounds[index + 1]]).hexdigest() for index in range(len(canonical))]


def _iso_seconds(micros: np.ndarray) -> pa.Array:
    """datetime.isoformat(timespec="seconds") of each naive UTC time: whole seconds, rounded down."""
    seconds = np.floor_divide(micros, 1_000_000).astype("datetime64[s]")
    return pa.array(np.datetime_as_string(seconds, unit="s"), pa.string())


def _storage_texts(micros: np.ndarray) -> pa.Array:
    """Each time as 'YYYY-MM-DD HH:MM:SS.ffffff': how SQLAlchemy stores DateTime on SQLite, and
    plain timestamp input for PostgreSQL."""
    date_and_time = pc.utf8_replace_slice(_iso_seconds(micros), 10, 11, " ")
    fraction = pc.utf8_lpad(pc.cast(pa.array(np.mod(micros, 1_000_000)), pa.string()), 6, "0")
    return pc.binary_join_element_wise(date_and_time, fraction, ".")


def _two_decimal_texts(texts: pa.StringArray, prices: np.ndarray) -> pa.Array:
    """f"{price:.2f}" of each price: a plain text with at most two decimals is that text, padded."""
    simple = _matches(texts, TWO_DECIMAL_PRICE)
    if simple.all():
        dot = pc.find_substring(texts, ".").to_numpy()
        decimals = np.where(dot < 0, 0, pc.utf8_length(texts).to_numpy() - dot - 1)
        padding = np.array(["", "", ""], dtype=object)[decimals]
        padding[dot < 0] = ".00"
        padding[decimals == 1] = "0"
        return pc.binary_join_element_wise(texts, pa.array(padding, pa.string()), "")
    return pa.array([f"{price:.2f}" for price in prices.tolist()], pa.string())


def _order_totals(quantities: np.ndarray, prices: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[float]:
    """round(sum(quantity * price), 2) per run: the products are the same floats as in Python, and the
    builtin sum adds them in order, exactly as shared.ingest.order_total does."""
    products = (quantities.astype(np.float64) * prices).tolist()
    return [round(sum(products[start:end]), 2) for start, end in zip(starts.tolist(), ends.tolist())]


def _copy_escaped(values: pa.Array) -> pa.Array:
    """Strings escaped for COPY text format (only when some value needs it)."""
    if not _matches(values, COPY_SPECIAL).any():
        return values
    for special, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        values = pc.replace_substring(values, special, escaped)
    return values


def _copy_block(columns: list) -> memoryview:
    """One COPY text block from string columns: one row per line, fields separated by tabs."""
    last = pc.binary_join_element_wise(columns[-1], "\n", "")
    rows = pc.binary_join_element_wise(*columns[:-1], last, "\t")
    if len(rows) == 0:
        return memoryview(b"")
    bounds = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    # The rows' characters lie back to back in the array's data buffer: hand that over without a copy.
    return memoryview(rows.buffers()[2])[int(bounds[0]):int(bounds[-1])]


class _OrderWriterBase:
    """Classifies a chunk's orders against what is stored, then writes new orders and status moves."""

    copied_directly = False

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
        current: dict[str, tuple[str, str]] = {}
        if chunk.order_count and self.insert_all_new():
            # Every order was new: stored as is, nothing to compare.
            self.created += chunk.order_count
            self.touched.update(pc.unique(chunk.order_customer_ids).to_pylist())
            if chunk.repeats:
                order_ids, hashes, statuses = chunk.order_lists()
                current = {order_id: (content_hash, status)
                           for order_id, content_hash, status in zip(order_ids, hashes, statuses)}
        elif chunk.order_count:
            current = self._classify_and_insert()
        for start, end, content_hash, status in chunk.repeats:
            order_id = chunk.order_ids[start].as_py()
            previous = current.get(order_id)
            if previous is None:
                self._reject_span(start, end, f"order {order_id} was rejected earlier in this file")
                continue
            if self._classify(order_id, chunk.customer_ids[start].as_py(), content_hash, status, previous,
                              start, end):
                current[order_id] = (content_hash, status)
        for status, order_ids in self.status_moves.items():
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

    def insert_all_new(self) -> bool:
        """Store every order of the chunk if none is stored yet; False (nothing written) otherwise."""
        return False

    def _classify_and_insert(self) -> dict[str, tuple[str, str]]:
        """Compare each order with its stored version, insert the new ones; returns what each id is stored as."""
        chunk = self.chunk
        stored = self.stored_orders()
        order_ids, hashes, statuses = chunk.order_lists()
        customer_ids = chunk.order_customer_ids.to_pylist()
        new_positions: list[int] = []
        # What each order id is stored as once this chunk is written: later runs compare with it.
        current: dict[str, tuple[str, str]] = dict(stored)
        for position, order_id in enumerate(order_ids):
            content_hash, status = hashes[position], statuses[position]
            previous = stored.get(order_id)
            if previous is None:
                new_positions.append(position)
                current[order_id] = (content_hash, status)
                self.touched.add(customer_ids[position])
                continue
            start, end = int(chunk.starts[position]), int(chunk.ends[position])
            if self._classify(order_id, customer_ids[position], content_hash, status, previous, start, end):
                current[order_id] = (content_hash, status)
        if new_positions:
            self.insert_new(np.array(new_positions, dtype=np.int64))
        return current

    def _classify(self, order_id, customer_id, content_hash, status, previous, start, end) -> bool:
        """Compare an order with its stored version, like ingest.upsert_orders; True on a status move."""
        stored_hash, stored_status = previous
        if stored_hash != content_hash:
            self._reject_span(
                start, end,
                f"conflict: order {order_id} is already stored with a different customer, time or lines "
                "(if it was listed earlier in this file: the lines of one order must be on adjacent rows)",
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
            self.rejects.append((int(self.chunk.batch.lines[index]), reason, self.chunk.batch.row(index)))

    def _row_positions(self, positions: np.ndarray) -> np.ndarray:
        """Row indexes of the lines of the given orders (positions in the chunk's order columns)."""
        chunk = self.chunk
        starts, ends = chunk.starts[positions], chunk.ends[positions]
        lengths = ends - starts
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + offsets


class PostgresOrderWriter(_OrderWriterBase):
    """COPY straight into orders and order_lines when no order of the chunk is stored yet; else COPY
    into a TEMP staging table, compare, and insert the new orders set-based."""

    ORDER_COLUMNS = ("order_id", "customer_id", "placed_at", "status", "total", "content_hash", "updated_at")
    LINE_COLUMNS = ("order_id", "line_no", "sku", "quantity", "unit_price")

    def __init__(self, connection, chunk: OrderChunk, copy_directly: bool) -> None:
        super().__init__(connection, chunk)
        self.copy_directly = copy_directly
        self.now_text = self.now.isoformat(sep=" ")

    def begin(self) -> None:
        bulk.tune_postgres_session(self.connection)

    def _orders_block(self, positions: np.ndarray | None = None) -> memoryview:
        chunk = self.chunk
        columns = [
            _copy_escaped(chunk.order_order_ids), _copy_escaped(chunk.order_customer_ids), chunk.order_placed_texts,
            chunk.order_statuses, pc.cast(pa.array(chunk.order_totals, pa.float64()), pa.string()),
            pa.array(chunk.order_hashes, pa.string()), pa.array([self.now_text] * chunk.order_count, pa.string()),
        ]
        if positions is not None:
            indexes = pa.array(positions)
            columns = [column.take(indexes) for column in columns]
        return _copy_block(columns)

    def _placeholders(self, customer_ids: pa.Array, row_positions: np.ndarray) -> None:
        """Placeholder customers and products for ids not stored yet (orders reference customers by foreign key)."""
        cursor = self.cursor
        customers = pc.unique(customer_ids)
        bulk.create_staging_table(cursor, "stage_customer_ids", "customers", ("customer_id",))
        bulk.copy_text_into(cursor, "stage_customer_ids", ("customer_id",), [_copy_block([_copy_escaped(customers)])])
        cursor.execute(
            "INSERT INTO customers (customer_id, community_member, opted_out, attributes, placeholder, "
            "paid_orders, net_spend, purchase_days, updated_at) "
            "SELECT customer_id, false, false, '{}'::json, true, 0, 0, 0, %s::timestamp FROM stage_customer_ids "
            "ORDER BY customer_id ON CONFLICT (customer_id) DO NOTHING",
            (self.now_text,),
        )
        skus = pc.unique(self.chunk.skus.take(pa.array(row_positions)))
        bulk.create_staging_table(cursor, "stage_skus", "products", ("sku",))
        bulk.copy_text_into(cursor, "stage_skus", ("sku",), [_copy_block([_copy_escaped(skus)])])
        cursor.execute(
            "INSERT INTO products (sku, name, price, active, repeat_purchase, placeholder, updated_at) "
            "SELECT sku, sku, 0, false, false, true, %s::timestamp FROM stage_skus ORDER BY sku "
            "ON CONFLICT (sku) DO NOTHING",
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
            bulk.copy_text_into(cursor, "orders", self.ORDER_COLUMNS, [self._orders_block()])
        except psycopg.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT copy_directly")
            return False
        cursor.execute("RELEASE SAVEPOINT copy_directly")
        # Every order here was inserted by this transaction, so none of its lines can exist yet.
        bulk.copy_text_into(cursor, "order_lines", self.LINE_COLUMNS, [self._lines_block(all_positions)])
        self.copied_directly = True
        return True

    def stored_orders(self) -> dict[str, tuple[str, str]]:
        cursor = self.cursor
        bulk.create_staging_table(cursor, "stage_orders", "orders", self.ORDER_COLUMNS)
        bulk.copy_text_into(cursor, "stage_orders", self.ORDER_COLUMNS, [self._orders_block()])
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
        if len(inserted_positions):
            bulk.copy_text_into(cursor, "order_lines", self.LINE_COLUMNS, [self._lines_block(inserted_positions)])

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
            _copy_escaped(chunk.order_ids.take(rows)),
            pc.cast(pa.array(chunk.line_numbers).take(rows), pa.string()),
            _copy_escaped(chunk.skus.take(rows)),
            pc.cast(pa.array(chunk.quantities).take(rows), pa.string()),
            chunk.price_copy_texts.take(rows),
        ]
        return _copy_block(columns)

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
        now_text = self.now.strftime(bulk.SQLITE_DATETIME_FORMAT)
        indexes = pa.array(new_positions)
        customer_ids = chunk.order_customer_ids.take(indexes)
        cursor.executemany(
            "INSERT OR IGNORE INTO customers (customer_id, community_member, opted_out, attributes, placeholder, "
            "paid_orders, net_spend, purchase_days, updated_at) VALUES (?, 0, 0, '{}', 1, 0, 0, 0, ?)",
            [(customer_id, now_text) for customer_id in sorted(pc.unique(customer_ids).to_pylist())],
        )
        rows = self._row_positions(new_positions)
        row_indexes = pa.array(rows)
        line_skus = chunk.skus.take(row_indexes)
        cursor.executemany(
            "INSERT OR IGNORE INTO products (sku, name, price, active, repeat_purchase, placeholder, updated_at) "
            "VALUES (?, ?, 0, 0, 0, 1, ?)",
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
            "INSERT INTO orders (order_id, customer_id, placed_at, status, total, content_hash, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            order_rows,
        )
        line_rows = zip(
            chunk.order_ids.take(row_indexes).to_pylist(), chunk.line_numbers[rows].tolist(), line_skus.to_pylist(),
            chunk.quantities[rows].tolist(), chunk.prices[rows].tolist(),
        )
        cursor.executemany(
            "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) VALUES (?, ?, ?, ?, ?)",
            line_rows,
        )
        self.created += len(positions)

    def update_status(self, status: str, order_ids: list[str]) -> None:
        now_text = self.now.strftime(bulk.SQLITE_DATETIME_FORMAT)
        self.cursor.executemany(
            "UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?",
            [(status, now_text, order_id) for order_id in order_ids],
        )


# ---- customers and products ----------------------------------------------------------------------


class RecordImport:
    """Customers or products: validate each row, then upsert the chunk (a later row for an id wins)."""

    def __init__(self, kind: str, database, positions: dict[str, int], time_rules: TimeRules,
                 rejects: RejectsWriter, summary: ImportSummary, bar) -> None:
        self.kind = kind
        self.database = database
        self.positions = positions
        self.dates = DateParser(time_rules)
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
            if stock is None or stock > MAX_STOCK:
                problems.append(f"stock must be a whole number from 0 to {MAX_STOCK:,} (got {stock_text!r})")
                stock = None
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
        if value is None or money_problem(value) is not None:
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
