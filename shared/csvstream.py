"""Stream query results as CSV text chunks with flat memory (no Flask here)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator

log = logging.getLogger("segrec.csv")

# A text cell starting with one of these is a formula to Excel, WPS and LibreOffice (OWASP CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    """A text cell that a spreadsheet would run as a formula, prefixed with a single quote (OWASP's rule).

    Numbers are written as numbers (a negative amount stays -5.0); only text is changed.
    """
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


class FormulaSafeWriter:
    """csv.writer whose text cells never start a formula: every CSV segrec writes goes through it."""

    def __init__(self, handle, **options) -> None:
        self._writer = csv.writer(handle, **options)

    def writerow(self, row) -> None:
        """Write one row, neutralising formula-like text cells."""
        self._writer.writerow([neutralise_cell(value) for value in row])

    def writerows(self, rows) -> None:
        """Write many rows, neutralising formula-like text cells."""
        for row in rows:
            self.writerow(row)


def stream_rows_as_csv(session, result, header, what: str, batch_rows: int = 5000,
                       to_row: Callable | None = None, logger: logging.Logger = log) -> Iterator[str]:
    """Yield the header and then `batch_rows` rows at a time from a streaming result.

    The session and the result are closed when the stream ends, fails, or the client drops it (that
    last case is logged once, with how far it got), so a dropped download never leaks a connection.
    """
    buffer = io.StringIO()
    writer = FormulaSafeWriter(buffer)
    writer.writerow(header)
    rows_sent = 0
    try:
        for partition in result.partitions(batch_rows):
            writer.writerows(partition if to_row is None else (to_row(row) for row in partition))
            rows_sent += len(partition)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue()
    except GeneratorExit:
        logger.warning("csv export of %s dropped by the client after %d rows", what, rows_sent)
        raise
    finally:
        result.close()
        session.close()
