"""Console pages of win-back campaigns: the list, the launch form, and one campaign with its report."""

from __future__ import annotations

import uuid

from flask import current_app, redirect, render_template, request, url_for
from flask_babel import gettext
from marshmallow import ValidationError

from services.segmentation import campaigns
from services.segmentation.campaigns import tasks
from services.segmentation.console import charts, data
from services.segmentation.console.access import console_page
from services.segmentation.console.blueprint import bp
from services.segmentation.console.forms import AUDIENCE_DIMENSIONS, audience_filters, win_back_body
from services.segmentation.console.labels import verdict_label
from services.segmentation.schemas import CAMPAIGN_OFFER_KINDS, WinBackRequestSchema
from services.segmentation import segments
from shared.extensions import db


def _form_context(errors: dict | None = None, form=None) -> dict:
    config = current_app.config
    return {
        "errors": errors or {},
        "form": form or {},
        "idempotency_key": (form or {}).get("idempotency_key") or uuid.uuid4().hex,
        "offer_kinds": CAMPAIGN_OFFER_KINDS,
        "dimensions": AUDIENCE_DIMENSIONS,
        "choices": {dimension: segments.DIMENSIONS[dimension][1] for dimension in AUDIENCE_DIMENSIONS},
        "default_audience": campaigns.DEFAULT_AUDIENCE,
        "defaults": {
            "holdout_percent": round(float(config["CAMPAIGN_DEFAULT_HOLDOUT_FRACTION"]) * 100, 2),
            "frequency_cap_days": int(config["CAMPAIGN_DEFAULT_FREQUENCY_CAP_DAYS"]),
            "recommendations": int(config["CAMPAIGN_DEFAULT_RECOMMENDATIONS"]),
            "offer_days": int(config["CAMPAIGN_DEFAULT_OFFER_DAYS"]),
        },
    }


@bp.get("/campaigns", endpoint="campaigns")
@console_page("campaigns:write")
def campaigns_page():
    """Every campaign, newest first, and the win-back form with its live audience count."""
    with db.session() as session:
        items = data.list_campaigns(session)
    return render_template("console/campaigns.html", items=items, **_form_context())


@bp.post("/campaigns/win-back")
@console_page("campaigns:write")
def launch_win_back():
    """Create the campaign as POST /v1/campaigns/win-back does, with the Idempotency-Key the form carries."""
    audience = audience_filters(request.form) or dict(campaigns.DEFAULT_AUDIENCE)
    try:
        body = WinBackRequestSchema().load(win_back_body(request.form, audience))
    except ValidationError as error:
        with db.session() as session:
            items = data.list_campaigns(session)
        return render_template("console/campaigns.html", items=items,
                               **_form_context(error.messages, request.form)), 422
    with db.session() as session:
        outcome = campaigns.create_win_back(session, current_app.config, request.form.get("idempotency_key"), body)
    if outcome.needs_build:
        tasks.enqueue_build(outcome.campaign["campaign_id"], current_app.config)
    return redirect(url_for("console.campaign", campaign_id=outcome.campaign["campaign_id"]), code=303)


def report_charts(report: dict) -> dict:
    """Conversion of each group with its 95 % Wilson interval, and the uplift with its 95 % interval."""
    groups = [("treatment", gettext("Treatment")), ("control", gettext("Control"))]
    points, intervals = [], []
    for name, _label in groups:
        totals = report[name]
        points.append(totals["conversion_rate"])
        intervals.append(campaigns.wilson_interval(totals["converters"], totals["members"])
                         if totals["members"] else (None, None))
    labels = {"point": gettext("Conversion"), "interval": gettext("Interval (95 %)")}
    uplift = report["uplift"]
    return {
        "conversion": charts.interval_chart([label for _name, label in groups], points, intervals, labels),
        "uplift": charts.interval_chart([gettext("Uplift (treatment - control)")], [uplift["conversion_uplift"]],
                                        [(uplift["ci95_low"], uplift["ci95_high"])],
                                        {"point": gettext("Uplift"), "interval": gettext("Interval (95 %)")}),
    }


@bp.get("/campaigns/<campaign_id>")
@console_page("campaigns:write")
def campaign(campaign_id):
    """One campaign: building progress, sizes, members, webhook deliveries and the report."""
    with db.session() as session:
        detail = campaigns.get_campaign(session, campaign_id)
        members, report = None, None
        if detail["status"] == "ready":
            members = campaigns.member_page(session, campaign_id, int(current_app.config["CONSOLE_PAGE_SIZE"]),
                                            request.args.get("cursor") or None, None)
            report = campaigns.campaign_report(session, campaign_id, current_app.config)
    return render_template("console/campaign.html", campaign=detail, members=members, report=report,
                           charts=report_charts(report) if report else None,
                           verdict=verdict_label(report["uplift"]["verdict"]) if report else None)
