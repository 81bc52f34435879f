"""Customer profiles, segment lists (pages and CSV), audiences and transitions."""

from __future__ import annotations

from flask import Response, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint

from services.segmentation import segments
from services.segmentation.schemas import (
    AudienceQuerySchema,
    AudienceResultSchema,
    CustomerProfileSchema,
    MemberPageSchema,
    SegmentCatalogueSchema,
    TransitionArgsSchema,
    TransitionsSchema,
)
from shared.extensions import db
from shared.schemas import PageArgsSchema
from shared.web import require_scope

blp = Blueprint("segments", __name__, url_prefix="/v1", description="Customer profiles and segment lists")


@blp.route("/customers/<customer_id>")
class CustomerProfile(MethodView):
    @require_scope("segments:read")
    @blp.response(200, CustomerProfileSchema)
    def get(self, customer_id):
        """A customer's RFM, tier, lifecycle, community layer and lifetime value"""
        with db.session() as session:
            return segments.customer_profile(session, customer_id)


@blp.route("/segments")
class SegmentCatalogue(MethodView):
    @require_scope("segments:read")
    @blp.response(200, SegmentCatalogueSchema)
    def get(self):
        """Every dimension with its values and member counts in the current run"""
        with db.session() as session:
            return segments.segment_catalogue(session)


@blp.route("/segments/<dimension>/<value>/members")
class SegmentMembers(MethodView):
    @require_scope("segments:read")
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, MemberPageSchema)
    def get(self, page_args, dimension, value):
        """One page of a segment's members with their scores"""
        with db.session() as session:
            page = segments.segment_members(session, dimension, value, page_args["limit"], page_args["cursor"])
        return {"run_id": page.run_id, "items": page.items, "next_cursor": page.next_cursor}


@blp.route("/segments/<dimension>/<value>/members.csv")
class SegmentMembersCsv(MethodView):
    @require_scope("segments:export")
    @blp.response(200, content_type="text/csv")
    def get(self, dimension, value):
        """The whole segment as a streamed CSV"""
        # The session lives as long as the stream; the generator closes it, also when the client leaves.
        session = db.open_session()
        try:
            chunks = segments.stream_segment_csv(session, dimension, value)
        except Exception:
            session.close()
            raise
        filename = f"segment-{dimension}-{value}.csv".replace(" ", "_").replace("'", "")
        return Response(
            stream_with_context(chunks),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


@blp.route("/segments/query")
class AudienceQuery(MethodView):
    @require_scope("segments:read")
    @blp.arguments(AudienceQuerySchema())
    @blp.response(200, AudienceResultSchema)
    def post(self, query):
        """An ad-hoc audience: AND across fields, OR within a field; its size and first page"""
        with db.session() as session:
            return segments.query_audience(session, query["filters"], query["limit"], query["cursor"])


@blp.route("/segments/transitions")
class Transitions(MethodView):
    @require_scope("segments:read")
    @blp.arguments(TransitionArgsSchema(), location="query")
    @blp.response(200, TransitionsSchema)
    def get(self, args):
        """How many customers moved from each value to each value between two runs"""
        with db.session() as session:
            return segments.transitions(session, args["dimension"], args["from_run"], args["to_run"])
