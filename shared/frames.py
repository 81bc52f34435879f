"""Move whole tables between the database and pandas quickly: COPY on PostgreSQL, plain SQL on SQLite."""

from __future__ import annotations

import io
import re
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow
from pyarrow import csv as pyarrow_csv
from sqlalchemy import text
from sqlalchemy.engine import Engine


def text_hashes(values) -> np.ndarray:
    """uint64 hashes of unique text ids: the same number in every process and on every machine.

    pandas' hash of the text with its fixed key. The ids are unique, so pandas' categorize step (8 s for
    4M order ids) would only repeat the work.
    """
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


def id_range_condition(column: str, low: str | None, high: str | None) -> tuple[str, dict]:
    """(" AND column >= :low AND column < :high", parameters) for ids in [low, high); an open end adds nothing."""
    sql, params = "", {}
    if low is not None:
        sql, params["low"] = sql + f" AND {column} >= :low", low
    if high is not None:
        sql, params["high"] = sql + f" AND {column} < :high", high
    return sql, params


def read_frame(engine: Engine, query: str, params: dict | None = None, date_columns: tuple[str, ...] = (),
               dtypes: dict | None = None, date_errors: str = "raise") -> pd.DataFrame:
    """Run a SELECT and return a DataFrame; on PostgreSQL the rows travel as COPY CSV (several times faster).

    date_errors="coerce" reads a date pandas cannot hold (beyond its nanosecond range) as NaT.
    """
    params = params or {}
    if engine.dialect.name == "postgresql":
        frame = _read_with_copy(engine, query, params, dtypes)
    else:
        # SQLite compares timestamps as text, so bind them in the format SQLAlchemy stores.
        params = {name: _sqlite_value(value) for name, value in params.items()}
        with engine.connect() as connection:
            frame = pd.read_sql_query(text(query), connection, params=params, dtype=dtypes)
    for column in date_columns:
        frame[column] = pd.to_datetime(frame[column], format="ISO8601", errors=date_errors)
    return frame


SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _sqlite_value(value):
    if isinstance(value, datetime):
        return value.strftime(SQLITE_DATETIME_FORMAT)
    return value


def _read_with_copy(engine: Engine, query: str, params: dict, dtypes: dict | None) -> pd.DataFrame:
    from psycopg import sql

    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()
        # COPY cannot take bind parameters, so values are quoted client-side by psycopg as literals.
        literal_query = sql.SQL(_to_psycopg_placeholders(query)).format(
            **{name: sql.Literal(value) for name, value in params.items()}
        )
        buffer = io.BytesIO()
        with cursor.copy(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(literal_query)) as copy:
            for block in copy:
                buffer.write(block)
        raw.driver_connection.commit()
    finally:
        raw.close()
    buffer.seek(0)
    # pyarrow parses CSV (timestamps included) several times faster than pandas' own parser, and
    # keeps PostgreSQL's NULL (an unquoted empty field) apart from an empty string ("").
    column_types = {name: pyarrow.string() for name, dtype in (dtypes or {}).items() if dtype is str}
    table = pyarrow_csv.read_csv(
        buffer,
        convert_options=pyarrow_csv.ConvertOptions(
            column_types=column_types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    return table.to_pandas()


def _to_psycopg_placeholders(query: str) -> str:
    """Turn SQLAlchemy's ':name' parameters into psycopg.sql's '{name}' fields."""
    escaped = query.replace("{", "{{").replace("}", "}}")
    return re.sub(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)", r"{\1}", escaped)


def write_frame(engine: Engine, table: str, frame: pd.DataFrame, chunk_rows: int = 100_000) -> int:
    """Append a DataFrame's rows to `table` (columns by name); returns the row count."""
    if frame.empty:
        return 0
    if engine.dialect.name == "postgresql":
        return _write_with_copy(engine, table, frame)
    columns = list(frame.columns)
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, len(frame), chunk_rows):
            cursor.executemany(statement, _python_rows(frame.iloc[start : start + chunk_rows]))
        raw.commit()
    finally:
        raw.close()
    return len(frame)


def _python_rows(frame: pd.DataFrame) -> list[tuple]:
    """Rows as tuples of plain Python values (None for missing), which sqlite3 can bind."""
    columns = []
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series):
            values = [None if pd.isna(value) else value.strftime(SQLITE_DATETIME_FORMAT) for value in series]
        else:
            values = series.astype(object).where(series.notna(), None).tolist()
            values = [value.item() if isinstance(value, np.generic) else value for value in values]
        columns.append(values)
    return list(zip(*columns))


def _write_with_copy(engine: Engine, table: str, frame: pd.DataFrame) -> int:
    from psycopg import sql

    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="", date_format="%Y-%m-%d %H:%M:%S.%f")
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
            sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(column) for column in frame.columns)
        )
        with cursor.copy(statement) as copy:
            while block := buffer.read(1 << 20):
                copy.write(block)
        raw.driver_connection.commit()
    finally:
        raw.close()
    return len(frame)
