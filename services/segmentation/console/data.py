"""Reads the console needs that the API has no function for: lists of campaigns and runs, a customer's
orders, the customers behind one flow between two runs, and audience CSVs. No Flask here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from services.segmentation import segments
from shared.csvstream import stream_rows_as_csv
from shared.models import Campaign, CustomerScore, Order, OrderLine, Product, Run

log = logging.getLogger("segrec.console.data")

CAMPAIGN_LIST_LIMIT = 100
ORDER_HISTORY_LIMIT = 20
FLOW_COLUMNS = ("customer_id", "from_value", "to_value", "monetary", "expected_value_365d")


def list_campaigns(session: Session, limit: int = CAMPAIGN_LIST_LIMIT) -> list[dict]:
    """Newest campaigns first, with their sizes."""
    rows = session.execute(select(Campaign).order_by(Campaign.created_at.desc()).limit(limit)).scalars()
    return [
        {"campaign_id": row.campaign_id, "name": row.name, "status": row.status, "created_at": row.created_at,
         "audience_size": row.audience_size, "treatment_size": row.treatment_size,
         "control_size": row.control_size}
        for row in rows
    ]


def stored_runs(session: Session, limit: int = 20) -> list[str]:
    """Recent runs whose score rows are still kept (older ones are pruned), newest first."""
    recent = session.execute(select(Run.run_id).order_by(Run.created_at.desc()).limit(limit)).scalars().all()
    kept = []
    for run_id in recent:
        # One index probe per run (the score indexes lead with run_id), not a scan of every score row.
        if session.execute(select(CustomerScore.customer_id).where(CustomerScore.run_id == run_id).limit(1)).first():
            kept.append(run_id)
    return kept


def customer_orders(session: Session, customer_id: str, limit: int = ORDER_HISTORY_LIMIT) -> list[dict]:
    """A customer's latest orders with their lines (sku, name, quantity, price)."""
    orders = session.execute(
        select(Order).where(Order.customer_id == customer_id).order_by(Order.placed_at.desc()).limit(limit)
    ).scalars().all()
    lines: dict[str, list[dict]] = {order.order_id: [] for order in orders}
    if orders:
        rows = session.execute(
            select(OrderLine.order_id, OrderLine.sku, OrderLine.quantity, OrderLine.unit_price, Product.name)
            .outerjoin(Product, Product.sku == OrderLine.sku)
            .where(OrderLine.order_id.in_(list(lines)))
            .order_by(OrderLine.order_id, OrderLine.line_no)
        ).all()
        for order_id, sku, quantity, unit_price, name in rows:
            lines[order_id].append({"sku": sku, "name": name or sku, "quantity": quantity,
                                    "unit_price": float(unit_price)})
    return [
        {"order_id": order.order_id, "placed_at": order.placed_at, "status": order.status,
         "total": float(order.total), "lines": lines[order.order_id]}
        for order in orders
    ]


def product_choices(session: Session, limit: int = 500) -> list[dict]:
    """Active catalogue items for the recommendation preview's pickers, best sellers are not known here."""
    rows = session.execute(
        select(Product.sku, Product.name, Product.price).where(Product.active.is_(True), Product.placeholder.is_(False))
        .order_by(Product.sku).limit(limit)
    ).all()
    return [{"sku": sku, "name": name, "price": float(price)} for sku, name, price in rows]


def _flow_statement(dimension: str, from_run: str, to_run: str, from_value: str, to_value: str):
    column_name = segments.dimension_column(dimension).key
    old, new = aliased(CustomerScore), aliased(CustomerScore)
    return (
        select(new.customer_id, getattr(old, column_name), getattr(new, column_name), new.monetary,
               new.expected_value_365d)
        .select_from(old)
        .join(new, (new.customer_id == old.customer_id) & (new.run_id == to_run))
        .where(old.run_id == from_run, getattr(old, column_name) == from_value,
               getattr(new, column_name) == to_value)
    ), new


def flow_members(session: Session, dimension: str, runs: tuple[str, str], values: tuple[str, str],
                 after: str | None, limit: int) -> dict:
    """One page of the customers who moved from values[0] in runs[0] to values[1] in runs[1]."""
    statement, new = _flow_statement(dimension, *runs, *values)
    if after:
        statement = statement.where(new.customer_id > after)
    rows = session.execute(statement.order_by(new.customer_id).limit(limit + 1)).all()
    items = [dict(zip(FLOW_COLUMNS, row)) for row in rows[:limit]]
    next_after = items[-1]["customer_id"] if len(rows) > limit else None
    return {"items": items, "next_after": next_after}


def stream_flow_csv(session: Session, dimension: str, runs: tuple[str, str], values: tuple[str, str],
                    batch_rows: int = 5000) -> Iterator[str]:
    """The customers behind one flow as CSV (the session is closed when the stream ends)."""
    statement, new = _flow_statement(dimension, *runs, *values)
    statement = statement.order_by(new.customer_id).execution_options(stream_results=True, yield_per=batch_rows)
    result = session.execute(statement)
    return stream_rows_as_csv(session, result, FLOW_COLUMNS, f"flow {dimension} {values}", batch_rows, logger=log)


def stream_audience_csv(session: Session, filters: dict, batch_rows: int = 5000) -> Iterator[str]:
    """An audience's members as CSV with the columns, order and format of the API's segment CSV."""
    run_id = segments.require_current_run(session)
    members = segments.audience_statement(run_id, filters).subquery()
    statement = (
        select(*(getattr(CustomerScore, name) for name in segments.MEMBER_COLUMNS))
        .where(CustomerScore.run_id == run_id, CustomerScore.customer_id.in_(select(members.c.customer_id)))
        .order_by(CustomerScore.customer_id)
        .execution_options(stream_results=True, yield_per=batch_rows)
    )
    result = session.execute(statement)
    return stream_rows_as_csv(session, result, segments.MEMBER_COLUMNS, "console audience", batch_rows, logger=log)


def audience_page(session: Session, run_id: str, filters: dict, after: str | None, limit: int) -> dict:
    """One page of an audience's members in customer id order (the count comes from the aggregates)."""
    # The audience's own WHERE clause with whole rows selected: keyset order lets the database stop early.
    statement = segments.audience_statement(run_id, filters).with_only_columns(CustomerScore)
    if after:
        statement = statement.where(CustomerScore.customer_id > after)
    rows = session.execute(statement.order_by(CustomerScore.customer_id).limit(limit + 1)).scalars().all()
    items = [segments.score_to_dict(row) for row in rows[:limit]]
    return {"items": items, "next_after": items[-1]["customer_id"] if len(rows) > limit else None}
