"""Console pages over segments: overview, movements between runs, the segment explorer and a customer."""

from __future__ import annotations

from flask import Response, current_app, jsonify, render_template, request, stream_with_context, url_for
from flask_babel import gettext

from services.recommend.serving import Request as RecommendationRequest
from services.segmentation import segments
from services.segmentation.console import aggregates, charts, data
from services.segmentation.console.access import allows, console_page
from services.segmentation.console.blueprint import bp
from services.segmentation.console.forms import AUDIENCE_DIMENSIONS, audience_filters, audience_query_string
from services.segmentation.console.labels import value_label
from services.segmentation.console.recommendations import recommender
from services.segmentation.lifecycle import LIFECYCLE_STAGES, PROSPECT
from shared import runs
from shared.errors import NotFound
from shared.extensions import db
from shared.ingest import utcnow

GRID_SIZE = aggregates.GRID_SIZE
MOVEMENT_DIMENSIONS = ("tier", "lifecycle")


def _ttl() -> int:
    return int(current_app.config["CONSOLE_AGGREGATE_TTL_SECONDS"])


def _previous_aggregates(current_id: str) -> dict | None:
    """The aggregates of the run published before the current one, if its scores (or cache) remain."""
    previous_id = runs.get_pointer(runs.PREVIOUS_RUN)
    if previous_id is None or previous_id == current_id:
        return None
    previous = aggregates.run_aggregates(previous_id, _ttl())
    return previous if previous["customers"] else None


def _counts_chart(counts: dict, changes: dict, dimension: str, order) -> dict:
    values = [value for value in order if value in counts] + sorted(set(counts) - set(order))
    notes = []
    for value in values:
        delta = changes.get(value)
        notes.append("" if delta is None else f"{delta:+d}")
    return charts.bar_chart([value_label(dimension, value) for value in values], [counts[value] for value in values],
                            gettext("Customers"), notes)


def overview_charts(current: dict, changes: dict) -> dict:
    """The overview's four charts from a run's aggregates."""
    counts = current["counts"]
    stages = [stage for stage in (*LIFECYCLE_STAGES, PROSPECT) if stage in counts["lifecycle"]]
    return {
        "tiers": _counts_chart(counts["tier"], changes["tier"], "tier", segments.DIMENSIONS["tier"][1]),
        "grid": charts.rf_heatmap(current["grid"], (gettext("F score (frequency)"), gettext("R score (recency)")),
                                  GRID_SIZE, {"avg": gettext("avg"), "customers": gettext("Customers")}),
        "funnel": charts.funnel_chart([value_label("lifecycle", stage) for stage in stages],
                                      [counts["lifecycle"][stage] for stage in stages], gettext("Customers")),
        "layers": _counts_chart(counts["community_layer"], changes["community_layer"], "community_layer",
                                ("potential", "active", "high_value", "")),
    }


@bp.get("/overview")
@console_page("segments:read")
def overview():
    """Counts, tiers, the R x F grid, the lifecycle funnel and community layers, with the change since last run."""
    current_id = runs.current_run_id()
    if current_id is None:
        return render_template("console/no_run.html")
    current = aggregates.run_aggregates(current_id, _ttl())
    previous = _previous_aggregates(current_id)
    changes = aggregates.change(current, previous)
    run = runs.get_run(current_id)
    model_age_hours = None
    if run.published_at is not None:
        model_age_hours = round((utcnow() - run.published_at).total_seconds() / 3600, 1)
    return render_template(
        "console/overview.html", run=run, current=current, previous=previous, changes=changes,
        orders_30d=aggregates.paid_orders_last_days(30, int(current_app.config["CONSOLE_LIVE_COUNT_TTL_SECONDS"])),
        model_age_hours=model_age_hours, charts=overview_charts(current, changes),
    )


def _movement_runs() -> tuple[list[str], str | None, str | None]:
    with db.session() as session:
        kept = data.stored_runs(session)
    to_run = request.args.get("to_run") or runs.current_run_id()
    default_from = runs.get_pointer(runs.PREVIOUS_RUN)
    if default_from not in kept:
        default_from = next((run_id for run_id in kept if run_id != to_run), None)
    return kept, request.args.get("from_run") or default_from, to_run


@bp.get("/movements")
@console_page("segments:read")
def movements():
    """Sankeys of tier and lifecycle moves between two runs; each flow opens its customers."""
    kept, from_run, to_run = _movement_runs()
    sankeys, moves = {}, {}
    if from_run and to_run and from_run != to_run:
        for dimension in MOVEMENT_DIMENSIONS:
            result = aggregates.transitions(dimension, from_run, to_run, _ttl())
            moves[dimension] = result["transitions"]
            sankeys[dimension] = charts.sankey_chart(
                result["transitions"], lambda value, d=dimension: value_label(d, value),
                (gettext("(before)"), gettext("(after)")))
    return render_template("console/movements.html", kept=kept, from_run=from_run, to_run=to_run,
                           sankeys=sankeys, moves=moves, dimensions=MOVEMENT_DIMENSIONS)


def _flow_args() -> tuple[str, tuple[str, str], tuple[str, str]]:
    dimension = request.args.get("dimension", "tier")
    segments.dimension_column(dimension)
    flow_runs = (request.args.get("from_run", ""), request.args.get("to_run", ""))
    values = (request.args.get("from", ""), request.args.get("to", ""))
    if not all(flow_runs) or not all(values):
        raise NotFound(gettext("Choose two runs and a flow."))
    return dimension, flow_runs, values


@bp.get("/movements/flow")
@console_page("segments:read")
def flow():
    """The customers behind one flow, paged."""
    dimension, flow_runs, values = _flow_args()
    with db.session() as session:
        page = data.flow_members(session, dimension, flow_runs, values, request.args.get("after"),
                                 int(current_app.config["CONSOLE_PAGE_SIZE"]))
    moves = aggregates.transitions(dimension, *flow_runs, _ttl())["transitions"]
    page["count"] = next((move["customers"] for move in moves
                          if (move["from"], move["to"]) == values), 0)
    return render_template("console/flow.html", dimension=dimension, flow_runs=flow_runs, values=values, page=page)


@bp.get("/movements/flow.csv")
@console_page("segments:export")
def flow_csv():
    """The customers behind one flow as CSV."""
    dimension, flow_runs, values = _flow_args()
    session = db.open_session()
    try:
        chunks = data.stream_flow_csv(session, dimension, flow_runs, values)
    except Exception:
        session.close()
        raise
    filename = f"flow-{dimension}-{values[0]}-to-{values[1]}.csv".replace(" ", "_").replace("'", "")
    return Response(stream_with_context(chunks), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/explorer")
@console_page("segments:read")
def explorer():
    """The audience query as a form: count, a paged member table and a CSV link."""
    filters = audience_filters(request.args)
    result = None
    if request.args.get("go") or filters:
        run_id = request.args.get("run") or runs.current_run_id()
        if run_id is None:
            return render_template("console/no_run.html")
        with db.session() as session:
            result = data.audience_page(session, run_id, filters, request.args.get("after") or None,
                                        int(current_app.config["CONSOLE_PAGE_SIZE"]))
        result.update(run_id=run_id, count=aggregates.audience_size(run_id, filters, _ttl()))
    query = audience_query_string(request.args)
    return render_template("console/explorer.html", result=result, query=query, filters=filters,
                           dimensions=AUDIENCE_DIMENSIONS, choices={d: segments.DIMENSIONS[d][1]
                                                                    for d in AUDIENCE_DIMENSIONS})


@bp.get("/explorer.csv")
@console_page("segments:export")
def explorer_csv():
    """The explorer's audience as CSV, in the API's segment CSV format."""
    session = db.open_session()
    try:
        chunks = data.stream_audience_csv(session, audience_filters(request.args))
    except Exception:
        session.close()
        raise
    return Response(stream_with_context(chunks), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="audience.csv"'})


@bp.get("/audience-count")
@console_page("segments:read")
def audience_count():
    """The live count of an audience (the campaign form asks while it is filled in)."""
    run_id = runs.current_run_id()
    if run_id is None:
        return jsonify({"count": 0})
    return jsonify({"count": aggregates.audience_size(run_id, audience_filters(request.args), _ttl())})


@bp.get("/customer")
@console_page("segments:read")
def customer():
    """A customer's profile, orders and what the storefront would recommend now."""
    customer_id = (request.args.get("customer_id") or "").strip()
    if not customer_id:
        return render_template("console/customer.html", customer_id="", profile=None)
    with db.session() as session:
        profile = segments.customer_profile(session, customer_id)
        orders = data.customer_orders(session, customer_id)
    recommended = None
    if allows("recs:read"):
        recommended = recommender.for_you(customer_id, RecommendationRequest(limit=10))
    return render_template("console/customer.html", customer_id=customer_id, profile=profile, orders=orders,
                           recommended=recommended, explorer_url=url_for("console.explorer"))
