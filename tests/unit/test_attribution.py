"""Last-touch attribution and online metrics from stored feedback (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from services.recommend.attribution import OrderLine, Period, Served, StoredEvent, aggregate

T0 = datetime(2026, 12, 1, 2, 0)  # 10:00 in Shanghai
CART = Served("cart", "m1", "current")
TOGETHER = Served("bought_together", "m1", "popular")
PERIOD = Period(datetime(2026, 11, 30, 16, 0), datetime(2026, 12, 1, 16, 0), ZoneInfo("Asia/Shanghai"),
                timedelta(hours=24))


def event(kind, recommendation_id, served, at, customer=None, session=None, sku=None) -> StoredEvent:
    return StoredEvent(kind, recommendation_id, customer, session, sku, at, served)


def figures(result) -> dict:
    return {row["surface"]: (row["impressions"], row["clicked_impressions"], row["attributed_orders"],
                             row["attributed_revenue"]) for row in result["rows"]}


def test_the_last_click_within_the_window_takes_the_sale():
    events = [
        event("impression", "r1", CART, T0, customer="c1"),
        event("click", "r1", CART, T0 + timedelta(minutes=1), customer="c1", sku="A"),
        event("impression", "r2", TOGETHER, T0 + timedelta(minutes=5), customer="c1"),
        event("click", "r2", TOGETHER, T0 + timedelta(minutes=6), customer="c1", sku="A"),
    ]
    lines = [OrderLine("o1", "c1", "A", T0 + timedelta(hours=1), 30.0),
             OrderLine("o1", "c1", "B", T0 + timedelta(hours=1), 5.0)]
    result = aggregate(events, lines, PERIOD, ["surface"])
    assert figures(result) == {"bought_together": (1, 1, 1, 30.0), "cart": (1, 1, 0, 0.0)}


def test_a_click_older_than_the_window_or_after_the_order_takes_nothing():
    events = [event("click", "r1", CART, T0 - timedelta(hours=25), customer="c1", sku="A"),
              event("click", "r2", CART, T0 + timedelta(hours=2), customer="c1", sku="A")]
    lines = [OrderLine("o1", "c1", "A", T0 + timedelta(hours=1), 30.0)]
    result = aggregate(events, lines, PERIOD, ["surface"])
    assert figures(result) == {"cart": (0, 0, 0, 0.0)}


def test_a_session_counts_for_the_customer_it_is_mapped_to():
    events = [event("click", "r1", CART, T0, session="s1", sku="A"),
              event("add_to_cart", "r1", CART, T0, customer="c9", session="s1", sku="A")]
    lines = [OrderLine("o1", "c9", "A", T0 + timedelta(hours=3), 12.5)]
    assert figures(aggregate(events, lines, PERIOD, ["surface"])) == {"cart": (0, 0, 1, 12.5)}


def test_unknown_answers_count_under_unknown_and_days_are_shop_local():
    late = datetime(2026, 11, 30, 17, 0)  # 01:00 on 1 December in Shanghai
    events = [event("impression", "old", None, late, customer="c1"),
              event("impression", "r1", CART, T0, customer="c2")]
    result = aggregate(events, [], PERIOD, ["day", "surface"])
    assert result["unattributed_events"] == 1
    assert [(row["day"], row["surface"]) for row in result["rows"]] == [("2026-12-01", "cart"),
                                                                       ("2026-12-01", "unknown")]


def test_surface_filter_keeps_last_touch_across_surfaces():
    events = [event("click", "r1", CART, T0, customer="c1", sku="A"),
              event("click", "r2", TOGETHER, T0 + timedelta(minutes=1), customer="c1", sku="A")]
    lines = [OrderLine("o1", "c1", "A", T0 + timedelta(hours=1), 30.0)]
    result = aggregate(events, lines, PERIOD, ["surface"], surface="cart")
    assert figures(result) == {"cart": (0, 0, 0, 0.0)}
