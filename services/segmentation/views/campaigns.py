"""Win-back campaigns: create (idempotent), read, members (pages and CSV) and the uplift report."""

from __future__ import annotations

from flask import Response, current_app, g, request, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint

from services.segmentation import campaigns
from services.segmentation.campaigns import tasks
from services.segmentation.schemas import (
    CampaignCsvArgsSchema,
    CampaignMemberArgsSchema,
    CampaignMemberPageSchema,
    CampaignReportSchema,
    CampaignSchema,
    WinBackRequestSchema,
)
from shared.extensions import db
from shared.web import require_scope

blp = Blueprint("campaigns", __name__, url_prefix="/v1", description="Win-back campaigns")

IDEMPOTENCY_HEADER = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": True,
    "schema": {"type": "string", "maxLength": 128},
    "description": "Same key and same body: the same campaign. Same key, other body: 409.",
}


@blp.route("/campaigns/win-back")
class WinBack(MethodView):
    @require_scope("campaigns:write", rate_class="campaigns:create")
    @blp.arguments(WinBackRequestSchema())
    @blp.response(202, CampaignSchema)
    @blp.alt_response(200, schema=CampaignSchema, description="A retry with the same key and body: that campaign")
    @blp.doc(parameters=[IDEMPOTENCY_HEADER])
    def post(self, body):
        """Create a win-back campaign; its members are built in the background"""
        with db.session() as session:
            outcome = campaigns.create_win_back(session, current_app.config, request.headers.get("Idempotency-Key"),
                                                body, api_key_id=g.principal.key_id)
        if outcome.needs_build:
            tasks.enqueue_build(outcome.campaign["campaign_id"], current_app.config)
        return outcome.campaign, 202 if outcome.created else 200


@blp.route("/campaigns/<campaign_id>")
class CampaignDetail(MethodView):
    @require_scope("campaigns:write", rate_class="campaigns:read")
    @blp.response(200, CampaignSchema)
    def get(self, campaign_id):
        """A campaign: status, audience, treatment and control sizes, skipped by reason, webhook deliveries"""
        with db.session() as session:
            return campaigns.get_campaign(session, campaign_id)


@blp.route("/campaigns/<campaign_id>/members")
class CampaignMembers(MethodView):
    @require_scope("campaigns:write", rate_class="campaigns:read")
    @blp.arguments(CampaignMemberArgsSchema(), location="query")
    @blp.response(200, CampaignMemberPageSchema)
    def get(self, args, campaign_id):
        """One page of a ready campaign's members in rank order: group, offer, recommended skus"""
        with db.session() as session:
            return campaigns.member_page(session, campaign_id, args["limit"], args["cursor"], args["group"])


@blp.route("/campaigns/<campaign_id>/members.csv")
class CampaignMembersCsv(MethodView):
    @require_scope("campaigns:write", rate_class="campaigns:export")
    @blp.arguments(CampaignCsvArgsSchema(), location="query")
    @blp.response(200, content_type="text/csv")
    def get(self, args, campaign_id):
        """A ready campaign's members as a streamed CSV for the messaging tool"""
        # The session lives as long as the stream; the generator closes it, also when the client leaves.
        session = db.open_session()
        try:
            chunks = campaigns.stream_members_csv(session, campaign_id, args["group"])
        except Exception:
            session.close()
            raise
        return Response(
            stream_with_context(chunks),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}.csv"'},
        )


@blp.route("/campaigns/<campaign_id>/report")
class CampaignReport(MethodView):
    @require_scope("campaigns:write", rate_class="campaigns:read")
    @blp.response(200, CampaignReportSchema)
    def get(self, campaign_id):
        """Paid orders and revenue since launch, treatment vs control, uplift with a 95 % confidence interval"""
        with db.session() as session:
            return campaigns.campaign_report(session, campaign_id, current_app.config)
