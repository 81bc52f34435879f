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


# ---- PostgreSQL ------------------------------------------------------------------------------------


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
        assignments = _assignments(update_columns)
        changed = _differs(table, update_columns, "EXCLUDED", "IS DISTINCT FROM")
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


# ---- SQLite ----------------------------------------------------------------------------------------


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
        f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {_assignments(update_columns, 'excluded')} "
        f"WHERE {_differs(table, update_columns, 'excluded', 'IS NOT')}"
    )


def _assignments(update_columns: Sequence[str], excluded: str = "EXCLUDED") -> str:
    return ", ".join(f"{column} = {excluded}.{column}" for column in update_columns)


def _differs(table: str, update_columns: Sequence[str], excluded: str, operator: str) -> str:
    """A condition true when any updated column (other than updated_at) would change: NULL-safe."""
    compared = [column for column in update_columns if column != "updated_at"]
    return "(" + " OR ".join(f"{table}.{column} {operator} {excluded}.{column}" for column in compared) + ")"


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


# ---- both ------------------------------------------------------------------------------------------


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
