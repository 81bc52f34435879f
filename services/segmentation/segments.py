"""Read side of segmentation: profiles, segment catalogue, member pages, CSV export, audiences, transitions.

Every read names one run (the current one, or the one a cursor carries), so a list never mixes runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from services.segmentation.community import COMMUNITY_LAYERS
from services.segmentation.lifecycle import LIFECYCLE_STAGES
from services.segmentation.rfm import SEGMENT_NAMES
from services.segmentation.tiers import TIERS
from shared.errors import BadCursor, InvalidRequest, NotFound, Unavailable
from shared.models import Customer, CustomerScore, Run
from shared.runs import current_run_id
from shared.csvstream import stream_rows_as_csv
from shared.cursors import decode_cursor, encode_cursor

log = logging.getLogger("segrec.segments")

# Dimension name -> (column, the values ops can ask for).
DIMENSIONS: dict[str, tuple] = {
    "rfm_segment": (CustomerScore.rfm_segment, tuple(SEGMENT_NAMES)),
    "tier": (CustomerScore.tier, tuple(TIERS)),
    "lifecycle": (CustomerScore.lifecycle, tuple(dict.fromkeys((*LIFECYCLE_STAGES, "prospect")))),
    "community_layer": (CustomerScore.community_layer, tuple(COMMUNITY_LAYERS)),
}
# Numeric fields an audience may filter on with ranges.
NUMERIC_FIELDS = {
    "recency_days": CustomerScore.recency_days,
    "frequency": CustomerScore.frequency,
    "monetary": CustomerScore.monetary,
    "r": CustomerScore.r,
    "f": CustomerScore.f,
    "m": CustomerScore.m,
    "p_alive": CustomerScore.p_alive,
    "expected_orders_90d": CustomerScore.expected_orders_90d,
    "expected_value_365d": CustomerScore.expected_value_365d,
    "spend_to_next_tier": CustomerScore.spend_to_next_tier,
}
RANGE_OPERATORS = ("gte", "gt", "lte", "lt")
MEMBER_COLUMNS = (
    "customer_id", "rfm_segment", "tier", "lifecycle", "community_layer", "recency_days", "frequency", "monetary",
    "r", "f", "m", "p_alive", "expected_orders_90d", "expected_value_365d",
)


def require_current_run(session: Session) -> str:
    """The current run id, or Unavailable before the first publish."""
    run_id = current_run_id(session)
    if run_id is None:
        raise Unavailable("no scoring run has been published yet; start one with POST /v1/runs")
    return run_id


def dimension_column(dimension: str, value: str | None = None):
    """The column of a dimension; 404 listing the valid dimensions or values when unknown."""
    if dimension not in DIMENSIONS:
        raise NotFound(f"unknown dimension '{dimension}'", {"dimension": sorted(DIMENSIONS)})
    column, values = DIMENSIONS[dimension]
    if value is not None and value not in values:
        raise NotFound(f"unknown {dimension} value '{value}'", {"valid_values": list(values)})
    return column


def score_to_dict(score: CustomerScore) -> dict:
    """A score row as the member fields ops read."""
    return {name: getattr(score, name) for name in MEMBER_COLUMNS}


def customer_profile(session: Session, customer_id: str) -> dict:
    """A customer's scores in the current run."""
    run_id = require_current_run(session)
    score = session.get(CustomerScore, (run_id, customer_id))
    if score is None:
        if session.get(Customer, customer_id) is None:
            raise NotFound(f"no customer {customer_id}")
        raise NotFound(f"customer {customer_id} arrived after the current run {run_id}; scored tonight")
    return {
        "customer_id": customer_id,
        "run_id": run_id,
        "rfm": {
            "recency_days": score.recency_days, "frequency": score.frequency, "monetary": score.monetary,
            "r": score.r, "f": score.f, "m": score.m, "segment": score.rfm_segment,
        },
        "tier": {"name": score.tier, "since": score.tier_since, "spend_to_next_tier": score.spend_to_next_tier},
        "lifecycle": score.lifecycle,
        "community_layer": score.community_layer,
        "clv": {
            "p_alive": score.p_alive,
            "expected_orders_90d": score.expected_orders_90d,
            "expected_value_365d": score.expected_value_365d,
        },
    }


def segment_catalogue(session: Session) -> dict:
    """Every dimension with each of its values and member counts in the current run."""
    run_id = require_current_run(session)
    dimensions = []
    for name, (column, values) in DIMENSIONS.items():
        counts = dict(
            session.execute(
                select(column, func.count()).where(CustomerScore.run_id == run_id).group_by(column)
            ).all()
        )
        dimensions.append(
            {"dimension": name, "values": [{"value": value, "members": int(counts.get(value, 0))} for value in values]}
        )
    total = session.execute(select(func.count()).where(CustomerScore.run_id == run_id)).scalar_one()
    return {"run_id": run_id, "customers": int(total), "dimensions": dimensions}


@dataclass(frozen=True)
class Page:
    """One page of a list read from one run."""

    items: list[dict]
    next_cursor: str | None
    run_id: str


def _page_run(session: Session, cursor: str | None, kind: str) -> tuple[str, str | None]:
    """The run and position a page reads: from the cursor, else the current run from the start."""
    payload = decode_cursor(cursor)
    if payload is None:
        return require_current_run(session), None
    if payload.get("kind") != kind or not isinstance(payload.get("run"), str):
        raise BadCursor("this cursor belongs to another list", {"cursor": ["does not match this list"]})
    run = session.get(Run, payload["run"])
    still_stored = session.execute(
        select(CustomerScore.customer_id).where(CustomerScore.run_id == payload["run"]).limit(1)
    ).first()
    if run is None or still_stored is None:
        raise BadCursor("this cursor's run is no longer kept; start the list again", {"cursor": ["stale"]})
    return payload["run"], payload.get("after")


def _keyset_page(session: Session, run_id: str, conditions: list, after: str | None, limit: int,
                 kind: str) -> Page:
    statement = select(CustomerScore).where(CustomerScore.run_id == run_id, *conditions)
    if after is not None:
        statement = statement.where(CustomerScore.customer_id > after)
    rows = list(session.execute(statement.order_by(CustomerScore.customer_id).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        next_cursor = encode_cursor({"kind": kind, "run": run_id, "after": rows[-1].customer_id})
    return Page([score_to_dict(row) for row in rows], next_cursor, run_id)


def segment_members(session: Session, dimension: str, value: str, limit: int, cursor: str | None) -> Page:
    """One page of a segment's members, in customer id order."""
    column = dimension_column(dimension, value)
    kind = f"members:{dimension}:{value}"
    run_id, after = _page_run(session, cursor, kind)
    return _keyset_page(session, run_id, [column == value], after, limit, kind)


def stream_segment_csv(session: Session, dimension: str, value: str, batch_rows: int = 5000) -> Iterator[str]:
    """The whole segment as CSV text chunks, read with a server-side cursor so memory stays flat."""
    column = dimension_column(dimension, value)
    run_id = require_current_run(session)
    statement = (
        select(*(getattr(CustomerScore, name) for name in MEMBER_COLUMNS))
        .where(CustomerScore.run_id == run_id, column == value)
        .order_by(CustomerScore.customer_id)
        .execution_options(stream_results=True, yield_per=batch_rows)
    )
    result = session.execute(statement)
    return stream_rows_as_csv(session, result, MEMBER_COLUMNS, f"{dimension}={value}", batch_rows, logger=log)


def audience_conditions(filters: dict) -> list:
    """AND across fields, OR within a field; numeric fields take gte/gt/lte/lt bounds."""
    conditions = []
    for field_name, wanted in filters.items():
        if field_name in DIMENSIONS:
            column, values = DIMENSIONS[field_name]
            unknown = [value for value in wanted if value not in values]
            if unknown:
                raise InvalidRequest(f"unknown {field_name} values: {', '.join(map(str, unknown))}",
                                     {field_name: [f"choose from {', '.join(values)}"]})
            conditions.append(column.in_(list(wanted)))
        elif field_name in NUMERIC_FIELDS:
            conditions.append(_range_condition(field_name, NUMERIC_FIELDS[field_name], wanted))
        else:
            raise InvalidRequest(f"unknown filter field '{field_name}'",
                                 {field_name: [f"filter on {', '.join([*DIMENSIONS, *NUMERIC_FIELDS])}"]})
    return conditions


def _range_condition(field_name: str, column, bounds: dict):
    lower = max((bounds[op] for op in ("gte", "gt") if op in bounds), default=None)
    upper = min((bounds[op] for op in ("lte", "lt") if op in bounds), default=None)
    if lower is not None and upper is not None and lower > upper:
        raise InvalidRequest(f"impossible range for {field_name}: lower bound {lower} above upper bound {upper}",
                             {field_name: ["the range is empty"]})
    parts = []
    operators = {"gte": column.__ge__, "gt": column.__gt__, "lte": column.__le__, "lt": column.__lt__}
    for op, bound in bounds.items():
        parts.append(operators[op](bound))
    return and_(*parts)


def query_audience(session: Session, filters: dict, limit: int, cursor: str | None) -> dict:
    """An ad-hoc audience: its size and its first (or next) page."""
    conditions = audience_conditions(filters)
    kind = "audience"
    run_id, after = _page_run(session, cursor, kind)
    count = session.execute(
        select(func.count()).where(CustomerScore.run_id == run_id, *conditions)
    ).scalar_one()
    page = _keyset_page(session, run_id, conditions, after, limit, kind)
    return {"run_id": run_id, "count": int(count), "items": page.items, "next_cursor": page.next_cursor}


def audience_statement(run_id: str, filters: dict):
    """SELECT of the customer ids matching an audience in a run (campaigns build on it)."""
    return select(CustomerScore.customer_id).where(CustomerScore.run_id == run_id, *audience_conditions(filters))


def transitions(session: Session, dimension: str, from_run: str | None, to_run: str | None) -> dict:
    """How many customers moved from each value to each value between two runs."""
    column = dimension_column(dimension)
    to_run = to_run or require_current_run(session)
    if from_run is None:
        raise InvalidRequest("give from_run", {"from_run": ["required"]})
    for run_id in (from_run, to_run):
        if session.get(Run, run_id) is None:
            raise NotFound(f"no run {run_id}")
    old = select(CustomerScore.customer_id, column.label("value")).where(CustomerScore.run_id == from_run).subquery()
    new = select(CustomerScore.customer_id, column.label("value")).where(CustomerScore.run_id == to_run).subquery()
    rows = session.execute(
        select(old.c.value, new.c.value, func.count())
        .select_from(old.join(new, old.c.customer_id == new.c.customer_id))
        .group_by(old.c.value, new.c.value)
    ).all()
    moves = [{"from": source, "to": target, "customers": int(count)} for source, target, count in rows]
    moves.sort(key=lambda move: (-move["customers"], str(move["from"]), str(move["to"])))
    return {"dimension": dimension, "from_run": from_run, "to_run": to_run, "transitions": moves}
