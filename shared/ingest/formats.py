"""Fast bulk loading: PostgreSQL COPY into a staging table, SQLite executemany in one transaction.

The ORM and even SQLAlchemy Core cost several microseconds per row; a history import or a demo shop
of millions of rows cannot afford that. These helpers work on the raw DBAPI connection instead:

- PostgreSQL: rows are formatted as COPY text (tab-separated, `\\N` for NULL) and streamed with
  `COPY ... FROM STDIN` into a TEMP table, then moved with one set-based
  `INSERT ... SELECT ... ON CONFLICT` so a re-run (or a concurrent REST write) never fails on a key.
- SQLite: `executemany` of `INSERT OR IGNORE` / `INSERT ... ON CONFLICT DO UPDATE` in large chunks
  inside the caller's transaction (one fsync per transaction, not per row).

Values written here must look exactly like what SQLAlchemy writes, because both paths share tables:
naive UTC timestamps (SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff' text, compared as strings), booleans as
t/f (PostgreSQL) or 1/0 (SQLite), JSON as text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

# SQLAlchemy's own storage format for DateTime on SQLite: rows written here sort and compare
# (as text) exactly like rows written through the ORM.
SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Rows per executemany call on SQLite and per COPY write block on PostgreSQL.
SQLITE_CHUNK_ROWS = 20_000
COPY_BLOCK_ROWS = 20_000

# COPY text format escapes: backslash first, then the characters that would end a field or a row.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@contextlib.contextmanager
def raw_connection(database) -> Iterator:
    """The DBAPI connection behind `database` (a shared.extensions.Database): commit on success, roll back on error."""
    connection = database.engine.raw_connection()
    try:
        yield connection
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()


def dialect_of(connection) -> str:
    """'postgresql' or 'sqlite' for a raw DBAPI connection (or SQLAlchemy's pool proxy of one)."""
    driver = getattr(connection, "driver_connection", connection)
    module = type(driver).__module__
    if module.startswith("psycopg"):
        return "postgresql"
    if module.startswith("sqlite3"):
        return "sqlite"
    raise ValueError(f"unsupported DBAPI connection: {module}")


# ---- value formatting ----------------------------------------------------------------------------


def copy_escape(text: str) -> str:
    """Escape one text value for PostgreSQL COPY text format."""
    return text.translate(_COPY_ESCAPES)


def copy_value(value: object) -> str:
    """One Python value as a field of COPY text format."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return copy_escape(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return copy_escape(json.dumps(value))
    return str(value)


def copy_text(rows: Iterable[Sequence]) -> str:
    """Rows of Python values as one COPY text block (one line per row).

    Formatted column by column: a column of one plain type (the usual case) is converted with one
    C-level map, and its strings are escaped only when the column holds a character that needs it.
    """
    rows = list(rows)
    if not rows:
        return ""
    columns = [_copy_column(column) for column in zip(*rows)]
    return "\n".join(map("\t".join, zip(*columns))) + "\n"


def _copy_column(values: tuple) -> Sequence[str]:
    kinds = set(map(type, values))
    if kinds == {str}:
        joined = "".join(values)
        if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
            return [copy_escape(value) for value in values]
        return values
    if kinds == {int}:
        return list(map(str, values))
    if kinds == {float}:
        return list(map(repr, values))
    return [copy_value(value) for value in values]


def sqlite_value(value: object) -> object:
    """One Python value as SQLAlchemy would bind it on SQLite."""
    if isinstance(value, datetime):
        return value.strftime(SQLITE_DATETIME_FORMAT)
    if value is True:
        return 1
    if value is False:
        return 0
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def sqlite_rows(rows: Iterable[Sequence]) -> list[tuple]:
    """Rows of Python values converted for sqlite3."""
    return [tuple(sqlite_value(value) for value in row) for row in rows]


# ---- SQL pieces both databases use ---------------------------------------------------------------


def set_columns(update_columns: Sequence[str], excluded: str = "EXCLUDED") -> str:
    """SET list taking each updated column from the proposed row."""
    return ", ".join(f"{column} = {excluded}.{column}" for column in update_columns)


def differs(table: str, update_columns: Sequence[str], excluded: str, operator: str) -> str:
    """A condition true when any updated column (other than updated_at) would change: NULL-safe."""
    compared = [column for column in update_columns if column != "updated_at"]
    return "(" + " OR ".join(f"{table}.{column} {operator} {excluded}.{column}" for column in compared) + ")"


# ---- transactions ----------------------------------------------------------------------------------


def begin_sqlite_write(connection) -> None:
    """Take SQLite's write lock up front so a concurrent writer waits instead of failing mid-import."""
    if dialect_of(connection) == "sqlite":
        driver = getattr(connection, "driver_connection", connection)
        if not driver.in_transaction:
            driver.execute("BEGIN IMMEDIATE")


def tune_postgres_session(connection) -> None:
    """Session settings for a bulk load: commits need not wait for the WAL flush (a crash loses
    at most the last chunks, which a re-run of the idempotent import writes again)."""
    if dialect_of(connection) == "postgresql":
        cursor = connection.cursor()
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.close()
