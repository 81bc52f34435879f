"""What the edge accepts: limits and rules shared by the REST schemas and the CSV importer.

Each limit is written here once; the marshmallow schemas (shared/schemas.py and the services'
schemas.py) and the importer (shared/ingest/) both read it from here, so a file and a request
body are judged alike. Time rules read three settings (SHOP_TIMEZONE, MIN_PLAUSIBLE_DATE,
MAX_FUTURE_SKEW_SECONDS; defaults in shared/config.py) through `TimeRules`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from shared.config import DEFAULTS

# Ids (customer_id, order_id, sku, promotion_id, event_id).
MAX_ID_LENGTH = 64
# "/" cannot be part of an id: ids are path segments (GET /v1/customers/{id}).
FORBIDDEN_ID_CHARACTERS = "/"
# Orders.
ORDER_STATUSES = ("paid", "refunded", "cancelled")
MAX_ORDER_LINES = 500
MAX_QUANTITY = 100_000
# The smallest price that is a price: below one cent an order would be stored as a paid 0.00.
MIN_UNIT_PRICE = 0.01
# Money (unit_price, price, cost, threshold, discount, offer values) and stock.
MAX_MONEY = 10_000_000
MAX_STOCK = 1_000_000_000
# Customer attributes: a small JSON object, not a document store.
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_ATTRIBUTES_DEPTH = 5
# Promotions may be scheduled ahead, but not for another century.
MAX_SCHEDULE_DAYS_AHEAD = 3660

# A control character (Unicode category Cc) or a lone surrogate (Cs) anywhere in the text.
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same test as a pyarrow/RE2 pattern over UTF-8 columns (which cannot hold surrogates).
ID_FORBIDDEN_PATTERN = r"[/\x00-\x1f\x7f-\x9f]"


def id_problem(text: str) -> str | None:
    """Why a value is not a valid id (1 to 64 characters, no "/", no control characters), or None."""
    if not text:
        return f"is required (1 to {MAX_ID_LENGTH} characters)"
    if len(text) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if FORBIDDEN_ID_CHARACTERS in text:
        return 'must not contain "/"'
    found = _CONTROL_OR_SURROGATE.search(text)
    if found is not None:
        kind = "a lone surrogate" if unicodedata.category(found.group()) == "Cs" else "a control character"
        return f"must not contain {kind} (U+{ord(found.group()):04X})"
    return None


def json_depth(value: object) -> int:
    """Nesting depth of a JSON value (a scalar is 0, {} or [] is 1), without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_ATTRIBUTES_DEPTH:
            return deepest  # deep enough to reject: no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def attributes_problem(value: object) -> str | None:
    """Why a customer's attributes object is too big or too deep, or None."""
    if json_depth(value) > MAX_ATTRIBUTES_DEPTH:
        return f"is nested deeper than {MAX_ATTRIBUTES_DEPTH} levels"
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        return f"is {size:,} bytes as JSON; at most {MAX_ATTRIBUTES_BYTES:,}"
    return None


def money_problem(value: float, *, minimum: float = 0.0, exclusive_minimum: bool = False) -> str | None:
    """Why an amount of money is out of range, or None (NaN and infinities are never money)."""
    if value != value or value in (float("inf"), float("-inf")):
        return "must be a finite number"
    if value < minimum or (exclusive_minimum and value == minimum) or value > MAX_MONEY:
        lower = f"above {minimum:g}" if exclusive_minimum else f"from {minimum:g}"
        return f"must be {lower} to {MAX_MONEY:,}"
    return None


@dataclass(frozen=True)
class TimeRules:
    """How timestamps from clients are read: the shop's zone for naive ones, and the plausible window."""

    shop_timezone: str = str(DEFAULTS["SHOP_TIMEZONE"])
    min_date: datetime = datetime.fromisoformat(str(DEFAULTS["MIN_PLAUSIBLE_DATE"]))
    future_skew_seconds: int = int(DEFAULTS["MAX_FUTURE_SKEW_SECONDS"])

    @classmethod
    def from_config(cls, config) -> TimeRules:
        """The rules a configuration sets (a dict or Flask's app.config)."""
        return cls(
            shop_timezone=str(config.get("SHOP_TIMEZONE", DEFAULTS["SHOP_TIMEZONE"])),
            min_date=parse_min_date(config.get("MIN_PLAUSIBLE_DATE", DEFAULTS["MIN_PLAUSIBLE_DATE"])),
            future_skew_seconds=int(config.get("MAX_FUTURE_SKEW_SECONDS", DEFAULTS["MAX_FUTURE_SKEW_SECONDS"])),
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.shop_timezone)

    def latest(self, days_ahead: int = 0) -> datetime:
        """The latest acceptable time, naive UTC: now plus the allowed clock skew (and days_ahead)."""
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        return now + timedelta(seconds=self.future_skew_seconds, days=days_ahead)

    def to_naive_utc(self, value: datetime) -> datetime:
        """An aware time in UTC, a naive one read as shop-local time; naive UTC out (may raise OverflowError)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.zone)
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def window_problem(self, naive_utc: datetime, days_ahead: int = 0) -> str | None:
        """Why a naive UTC time is outside the plausible window, or None."""
        if naive_utc < self.min_date:
            return f"is before {self.min_date:%Y-%m-%d} (MIN_PLAUSIBLE_DATE)"
        if naive_utc > self.latest(days_ahead):
            if days_ahead:
                return f"is more than {days_ahead} days ahead"
            return "is in the future"
        return None


def parse_min_date(value: object) -> datetime:
    """MIN_PLAUSIBLE_DATE as a naive UTC datetime (a date or an ISO 8601 date and time)."""
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed
