"""Stream query results as CSV text chunks with flat memory (no Flask here)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator

log = logging.getLogger("segrec.csv")


def stream_rows_as_csv(session, result, header, what: str, batch_rows: int = 5000,
                       to_row: Callable | None = None, logger: logging.Logger = log) -> Iterator[str]:
    """Yield the header and then `batch_rows` rows at a time from a streaming result.

    The session and the result are closed when the stream ends, fails, or the client drops it (that
    last case is logged once, with how far it got), so a dropped download never leaks a connection.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
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
