"""Load stored feedback, served answers and paid orders for a period and compute the online metrics.

The recommend service owns this: it receives the feedback and serves the answers the metrics are about;
orders are read from the shared database the segmentation service ingests them into.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from services.recommend.attribution import OrderLine, Period, Served, StoredEvent, aggregate
from shared.extensions import db
from shared.models import FeedbackEvent, Order, ServedRecommendation
from shared.models import OrderLine as OrderLineRow


def shop_period(day_from: date, day_to: date, config) -> Period:
    """Shop-local days [day_from, day_to] as naive UTC [start, end)."""
    zone = ZoneInfo(config["SHOP_TIMEZONE"])
    utc = ZoneInfo("UTC")

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=zone).astimezone(utc).replace(tzinfo=None)

    return Period(midnight(day_from), midnight(day_to + timedelta(days=1)), zone,
                  timedelta(hours=config["ATTRIBUTION_WINDOW_HOURS"]))


def load_events(session, start: datetime, end: datetime, experiment_id: str | None = None) -> list[StoredEvent]:
    """Feedback events in [start, end) with the answer each belongs to (None when never served)."""
    query = (
        select(FeedbackEvent.type, FeedbackEvent.recommendation_id, FeedbackEvent.customer_id,
               FeedbackEvent.session_id, FeedbackEvent.sku, FeedbackEvent.occurred_at,
               ServedRecommendation.surface, ServedRecommendation.model_version, ServedRecommendation.variant)
        .outerjoin(ServedRecommendation, ServedRecommendation.recommendation_id == FeedbackEvent.recommendation_id)
        .where(FeedbackEvent.occurred_at >= start, FeedbackEvent.occurred_at < end)
    )
    if experiment_id is not None:
        query = query.where(ServedRecommendation.experiment_id == experiment_id)
    events = []
    for row in session.execute(query):
        served = Served(row.surface, row.model_version, row.variant) if row.surface is not None else None
        events.append(StoredEvent(row.type, row.recommendation_id, row.customer_id, row.session_id, row.sku,
                                  row.occurred_at, served))
    return events


def load_paid_lines(session, start: datetime, end: datetime) -> list[OrderLine]:
    """Lines of paid orders placed in [start, end)."""
    query = (
        select(Order.order_id, Order.customer_id, Order.placed_at, OrderLineRow.sku, OrderLineRow.quantity,
               OrderLineRow.unit_price)
        .join(OrderLineRow, OrderLineRow.order_id == Order.order_id)
        .where(Order.status == "paid", Order.placed_at >= start, Order.placed_at < end)
    )
    return [OrderLine(row.order_id, row.customer_id, row.sku, row.placed_at, float(row.quantity * row.unit_price))
            for row in session.execute(query)]


def online_metrics(day_from: date, day_to: date, group_by: list[str], surface: str | None, config) -> dict:
    """The metrics answer for shop-local days day_from..day_to, grouped as asked."""
    period = shop_period(day_from, day_to, config)
    with db.session() as session:
        # Clicks up to one window before the period can still attribute orders placed inside it.
        events = load_events(session, period.start - period.window, period.end)
        lines = load_paid_lines(session, period.start, period.end)
    result = aggregate(events, lines, period, list(group_by), surface)
    return {
        "period": {"from": day_from.isoformat(), "to": day_to.isoformat(), "timezone": config["SHOP_TIMEZONE"]},
        "group_by": list(group_by),
        "attribution_window_hours": config["ATTRIBUTION_WINDOW_HOURS"],
        "unattributed_events": result["unattributed_events"],
        "rows": result["rows"],
    }
