"""The REST schemas' rules for strings read from CSV: per value (scalar) and per column (fast path).

Orders files are the big ones (millions of lines), so their rows are handled a column at a time:
pyarrow reads the file in blocks, every rule runs over whole columns (pyarrow compute, numpy,
pandas), and Python looks at single rows only where a column holds a value the fast check does not
vouch for. Each such value is then checked by the same scalar rule (parse_whole_number, parse_number,
DateParser, id_problem), so the fast path can only ever agree with the slow one. The limits are
shared.limits', which the REST schemas read too.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shared.ingest.arrays import matches, to_numpy_bool
from shared.limits import (
    ID_FORBIDDEN_PATTERN,
    MAX_ID_LENGTH,
    MAX_MONEY,
    MAX_QUANTITY,
    MAX_STOCK,
    MIN_UNIT_PRICE,
    ORDER_STATUSES,
    TimeRules,
    id_problem,
    money_problem,
)

# Booleans as marshmallow's fields.Boolean reads them.
TRUTHY = {"1", "true", "t", "yes", "y", "on"}
FALSY = {"0", "false", "f", "no", "n", "off"}
# Values the column checks take without a second look; anything else goes through the scalar rule.
PLAIN_QUANTITY = r"^[0-9]{1,9}$"
# At most 15 significant digits: the text and the float read from it are the same number, so the
# text can go to COPY as it is.
PLAIN_PRICE = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"
# Timestamps that pandas and datetime.fromisoformat read alike (years 1000-9999, no week dates,
# no compact forms); pandas says NaT for impossible dates and times, which then take the slow rule.
PLAIN_TIMESTAMP = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?$"
# A timestamp that names its offset (else it is shop-local time).
NAMED_OFFSET = r"(Z|[+-][0-9]{2}:[0-9]{2})$"
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
# datetime's range in microseconds since 1970: pandas can produce values outside it (year 0).
MIN_MICROS = (datetime.min - EPOCH) // MICROSECOND
MAX_MICROS = (datetime.max - EPOCH) // MICROSECOND


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


def bad_ids(values: pa.StringArray) -> np.ndarray:
    """Which ids break id_problem's rules (length 1 to MAX_ID_LENGTH, no "/" or control characters)."""
    lengths = pc.utf8_length(values).to_numpy()
    return (lengths < 1) | (lengths > MAX_ID_LENGTH) | matches(values, ID_FORBIDDEN_PATTERN)


def unit_price_ok(prices: np.ndarray) -> np.ndarray:
    """Which unit prices the REST schema takes (MIN_UNIT_PRICE to MAX_MONEY); NaN fails."""
    return (prices >= MIN_UNIT_PRICE) & (prices <= MAX_MONEY)


def parse_quantity_column(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(quantities, valid) for a column of quantity texts; valid means a whole number from 1 to MAX_QUANTITY."""
    plain = matches(texts, PLAIN_QUANTITY)
    quantities = np.zeros(len(texts), dtype=np.int64)
    quantities[plain] = pc.cast(texts.filter(pa.array(plain)), pa.int64()).to_numpy()
    valid = plain.copy()
    for index in np.flatnonzero(~plain):
        number = parse_whole_number(texts[index].as_py())
        if number is not None and 1 <= number <= MAX_QUANTITY:
            quantities[index] = number
            valid[index] = True
    return quantities, valid & (quantities >= 1) & (quantities <= MAX_QUANTITY)


def parse_price_column(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(prices, plain): the numbers (NaN where a text is not a finite number) and which texts were plain."""
    plain = matches(texts, PLAIN_PRICE)
    prices = np.full(len(texts), np.nan)
    prices[plain] = pc.cast(texts.filter(pa.array(plain)), pa.float64()).to_numpy()
    for index in np.flatnonzero(~plain):
        number = parse_number(texts[index].as_py())
        if number is not None:
            prices[index] = number
    return prices, plain


def price_copy_texts(texts: pa.StringArray, prices: np.ndarray, plain: np.ndarray) -> pa.Array:
    """unit_price as COPY text: a plain text as it is (the same number), else the float's repr."""
    if plain.all():
        return texts
    values = texts.to_pylist()
    for index in np.flatnonzero(~plain):
        values[index] = repr(float(prices[index]))
    return pa.array(values, pa.string())


def parse_timestamp_column(texts: pa.StringArray, dates: DateParser) -> tuple[np.ndarray, dict[int, str]]:
    """(microseconds since 1970 as naive UTC, {row: problem}) with DateParser's rules."""
    micros = np.zeros(len(texts), dtype=np.int64)
    plain = matches(texts, PLAIN_TIMESTAMP)
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
    naive = ~matches(texts, NAMED_OFFSET)
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


def status_column(texts: pa.StringArray | None, count: int) -> pa.Array:
    """Statuses as REST reads them: surrounding space stripped, empty or absent means paid."""
    if texts is None:
        return pa.array(["paid"] * count, pa.string())
    if to_numpy_bool(pc.is_in(texts, value_set=pa.array(ORDER_STATUSES))).all():
        return texts
    return pa.array([text.strip() or "paid" for text in texts.to_pylist()], pa.string())


class RowRules:
    """Customer and product rows as the REST schemas judge records: (row tuple, []) or (None, reasons).

    Row tuples are in CUSTOMER_COLUMNS / PRODUCT_COLUMNS order.
    """

    def __init__(self, positions: dict[str, int], dates: DateParser) -> None:
        self.positions = positions
        self.dates = dates

    def _text(self, row: list, name: str) -> str:
        position = self.positions.get(name)
        return row[position].strip() if position is not None else ""

    def customer(self, row: list, now: datetime) -> tuple[tuple | None, list[str]]:
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
        # In CUSTOMER_COLUMNS order: no attributes from a file, not a placeholder, empty aggregates.
        return (customer_id, joined_at, channel, community_member, opted_out, {}, False, 0, 0, 0, now), []

    def product(self, row: list, now: datetime) -> tuple[tuple | None, list[str]]:
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
