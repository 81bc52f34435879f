"""Reading CSV files: the header, rows with their line numbers, pyarrow blocks, chunks of whole orders."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from shared.csvstream import FormulaSafeWriter
from shared.ingest.arrays import changes
from shared.ingest.columns import IMPORT_COLUMNS
from shared.limits import MAX_ORDER_LINES

if TYPE_CHECKING:
    from shared.ingest.importer import ImportSummary

# Rows per block the pyarrow reader hands over (about 8 MB of CSV).
ARROW_BLOCK_BYTES = 8 << 20
# Rows per block when the csv module reads a file pyarrow cannot number reliably.
CSV_MODULE_BLOCK_ROWS = 50_000


class ImportFileError(ValueError):
    """The file cannot be imported at all (no header, a required column missing)."""


def column_positions(kind: str, header: list[str]) -> dict[str, int]:
    """Where each known column is in the header; a missing required column stops the import."""
    names = [name.strip().lower() for name in header]
    required, optional = IMPORT_COLUMNS[kind]
    missing = [name for name in required if name not in names]
    if missing:
        raise ImportFileError(
            f"the header lacks required column(s) {', '.join(missing)}; a {kind} file needs "
            f"{','.join(required)} and may have {','.join(optional)}"
        )
    return {name: names.index(name) for name in (*required, *optional) if name in names}


def read_rows(reader, width: int, rejects: RejectsWriter, summary: ImportSummary) -> Iterator[tuple[int, list]]:
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
            self._writer = FormulaSafeWriter(self._handle)
            self._writer.writerow(["line", "reason", *self.header])
        self._writer.writerow([line, reason, *row])

    def close(self) -> None:
        """Flush and close the file, if any row was rejected."""
        if self._handle is not None:
            self._handle.close()


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


def scan_file(path: Path) -> tuple[int, bool]:
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


def arrow_batches(path: Path, width: int, rejects: RejectsWriter, summary: ImportSummary) -> Iterator[RowBatch]:
    """Batches from pyarrow's streaming CSV reader, for a plain file (see scan_file).

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
        yield from csv_module_batches(rows, width, rejects, summary)


def csv_module_batches(reader, width: int, rejects: RejectsWriter, summary: ImportSummary) -> Iterator[RowBatch]:
    """Batches from the csv module: for files with quoted fields, blank lines or rows of the wrong width."""
    lines: list[int] = []
    rows: list[list] = []
    for line, row in read_rows(reader, width, rejects, summary):
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


def order_chunks(batches: Iterator[RowBatch], chunk_rows: int, order_position: int) -> Iterator[RowBatch]:
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
    order_starts = np.flatnonzero(changes(window))
    if len(order_starts):
        return int(order_starts[-1]) + 1  # up to the start of the last order in the window
    # The first chunk_rows rows are one order: it ends where the order id first changes.
    limit = max(chunk_rows, MAX_ORDER_LINES + 1)
    rest = np.flatnonzero(changes(order_ids.slice(0, min(size, limit + 1))))
    if len(rest):
        run_end = int(rest[0]) + 1
        return run_end if run_end <= MAX_ORDER_LINES else limit
    if size >= limit:
        return limit
    return size if at_end else None
