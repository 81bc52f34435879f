"""Online metrics of recommendation answers from stored feedback and orders: pure, no database.

Definitions (the README repeats them):
- impressions: impression events (one per answer shown); an event whose recommendation_id was never
  served (an older model's answer, a typo) counts under surface "unknown" and in `unattributed_events`;
- CTR: the share of impressions whose answer got at least one click; add-to-cart rate likewise with
  add_to_cart events carrying the answer's recommendation_id; both with 95 % Wilson intervals;
- attributed orders and revenue: a paid order line is attributed to the last click on the same sku by
  the same customer (a session's clicks count for the customer the session is mapped to by any event
  carrying both ids) within the attribution window before the order; the line's revenue goes to the
  answer that click came from. An order counts once per group it has attributed lines in;
- days are shop-local (SHOP_TIMEZONE): impressions by the day they occurred, orders by the day placed.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from shared.statistics import Z_95, wilson_interval

UNKNOWN_SURFACE = "unknown"
ALL = "all"


@dataclass(frozen=True)
class Served:
    """Where an answer came from."""

    surface: str
    model_version: str | None
    variant: str


UNKNOWN = Served(UNKNOWN_SURFACE, None, UNKNOWN_SURFACE)


@dataclass(frozen=True)
class StoredEvent:
    """A stored feedback event, joined to its served answer (None when the recommendation_id is unknown)."""

    type: str
    recommendation_id: str | None
    customer_id: str | None
    session_id: str | None
    sku: str | None
    occurred_at: datetime
    served: Served | None


@dataclass(frozen=True)
class OrderLine:
    """A paid order line: who bought which sku when, for how much."""

    order_id: str
    customer_id: str
    sku: str
    placed_at: datetime
    revenue: float


@dataclass(frozen=True)
class Period:
    """[start, end) in naive UTC, the shop's zone for days, and the attribution window."""

    start: datetime
    end: datetime
    zone: ZoneInfo
    window: timedelta


class Totals:
    """Counters of one group."""

    __slots__ = ("impressions", "clicked_impressions", "carted_impressions", "clicks", "add_to_carts", "orders",
                 "revenue", "revenue_by_answer")

    def __init__(self) -> None:
        self.impressions = 0
        self.clicked_impressions = 0
        self.carted_impressions = 0
        self.clicks = 0
        self.add_to_carts = 0
        self.orders: set[str] = set()
        self.revenue = 0.0
        # recommendation_id -> attributed revenue (for the spread of revenue per impression).
        self.revenue_by_answer: dict[str, float] = defaultdict(float)


def local_day(moment: datetime, zone: ZoneInfo) -> str:
    """The shop-local day of a naive UTC time."""
    return moment.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone).date().isoformat()


def rate(successes: int, trials: int) -> dict:
    """A proportion with its 95 % Wilson interval."""
    low, high = wilson_interval(successes, trials)
    return {"value": successes / trials if trials else None, "ci95_low": round(low, 6), "ci95_high": round(high, 6)}


def session_customers(events: list[StoredEvent]) -> dict[str, str]:
    """session_id -> customer_id, from events that carry both (the last one seen wins)."""
    mapping: dict[str, str] = {}
    for event in sorted(events, key=lambda item: item.occurred_at):
        if event.session_id and event.customer_id:
            mapping[event.session_id] = event.customer_id
    return mapping


class ClickIndex:
    """Clicks by (customer, sku), sorted by time, for last-touch lookups."""

    def __init__(self, events: list[StoredEvent], sessions: dict[str, str]) -> None:
        by_key: dict[tuple[str, str], list[tuple[datetime, tuple[Served, str | None]]]] = defaultdict(list)
        for event in events:
            if event.type != "click" or not event.sku:
                continue
            customer = event.customer_id or sessions.get(event.session_id or "")
            if customer:
                by_key[(customer, event.sku)].append((event.occurred_at,
                                                      (event.served or UNKNOWN, event.recommendation_id)))
        self.times: dict[tuple[str, str], list[datetime]] = {}
        self.served: dict[tuple[str, str], list[tuple[Served, str | None]]] = {}
        for key, clicks in by_key.items():
            clicks.sort(key=lambda click: click[0])
            self.times[key] = [click[0] for click in clicks]
            self.served[key] = [click[1] for click in clicks]

    def last_touch(self, customer: str, sku: str, moment: datetime,
                   window: timedelta) -> tuple[Served, str | None] | None:
        """The answer (and its recommendation_id) of the last click on `sku` by `customer` in [moment - window, moment], or None."""
        times = self.times.get((customer, sku))
        if not times:
            return None
        position = bisect.bisect_right(times, moment) - 1
        if position < 0 or times[position] < moment - window:
            return None
        return self.served[(customer, sku)][position]


def group_key(served: Served, day: str, group_by: list[str]) -> tuple:
    values = {"day": day, "surface": served.surface, "model_version": served.model_version, "variant": served.variant}
    return tuple(values[name] if name in group_by else ALL for name in ("day", "surface", "model_version", "variant"))


def aggregate(events: list[StoredEvent], lines: list[OrderLine], period: Period, group_by: list[str],
              surface: str | None = None) -> dict:
    """Per-group counters, rates and attributed revenue; `events` may start a window before the period.

    `surface` keeps one surface's figures; last touch is still decided among the clicks of every surface.
    """
    groups: dict[tuple, Totals] = defaultdict(Totals)
    clicked = {event.recommendation_id for event in events if event.type == "click"}
    carted = {event.recommendation_id for event in events if event.type == "add_to_cart" and event.recommendation_id}
    unattributed = 0
    for event in events:
        if not period.start <= event.occurred_at < period.end:
            continue
        if surface is not None and (event.served or UNKNOWN).surface != surface:
            continue
        if event.served is None and event.recommendation_id is not None:
            unattributed += 1
        totals = groups[group_key(event.served or UNKNOWN, local_day(event.occurred_at, period.zone), group_by)]
        if event.type == "impression":
            totals.impressions += 1
            totals.clicked_impressions += event.recommendation_id in clicked
            totals.carted_impressions += event.recommendation_id in carted
        elif event.type == "click":
            totals.clicks += 1
        else:
            totals.add_to_carts += 1
    clicks = ClickIndex(events, session_customers(events))
    for line in lines:
        if not period.start <= line.placed_at < period.end:
            continue
        touch = clicks.last_touch(line.customer_id, line.sku, line.placed_at, period.window)
        if touch is None or (surface is not None and touch[0].surface != surface):
            continue
        served, recommendation_id = touch
        totals = groups[group_key(served, local_day(line.placed_at, period.zone), group_by)]
        totals.orders.add(line.order_id)
        totals.revenue += line.revenue
        totals.revenue_by_answer[recommendation_id or ""] += line.revenue
    ordered = sorted(groups.items(), key=lambda item: str(item[0]))
    return {"unattributed_events": unattributed, "rows": [metrics_row(key, totals) for key, totals in ordered],
            "totals": dict(ordered)}


def metrics_row(key: tuple, totals: Totals) -> dict:
    """One group's figures as the metrics endpoint answers them."""
    day, surface, model_version, variant = key
    revenue = round(totals.revenue, 2)
    return {
        "day": day,
        "surface": surface,
        "model_version": model_version,
        "variant": variant,
        "impressions": totals.impressions,
        "clicked_impressions": totals.clicked_impressions,
        "clicks": totals.clicks,
        "add_to_carts": totals.add_to_carts,
        "ctr": rate(totals.clicked_impressions, totals.impressions),
        "add_to_cart_rate": rate(totals.carted_impressions, totals.impressions),
        "attributed_orders": len(totals.orders),
        "attributed_revenue": revenue,
        "revenue_per_1000_impressions": round(1000 * revenue / totals.impressions, 4) if totals.impressions else None,
    }


def revenue_per_impression(totals: Totals) -> dict:
    """Mean attributed revenue per impression with a 95 % normal interval (impressions without revenue count 0)."""
    n = totals.impressions
    if n == 0:
        return {"value": None, "ci95_low": None, "ci95_high": None}
    mean = totals.revenue / n
    sum_of_squares = sum(value * value for value in totals.revenue_by_answer.values())
    variance = max(0.0, sum_of_squares / n - mean * mean) * n / max(n - 1, 1)
    half_width = Z_95 * math.sqrt(variance / n)
    return {"value": round(mean, 6), "ci95_low": round(mean - half_width, 6), "ci95_high": round(mean + half_width, 6)}
