"""Storefront feedback in (POST /v1/feedback) and the online metrics it feeds out (GET /v1/recommendations/metrics)."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from prometheus_client import Counter

from services.recommend.feedback import FeedbackBacklog, FeedbackWriter, StreamFull
from services.recommend.online_metrics import online_metrics
from services.recommend.schemas import FeedbackBatchSchema, FeedbackResultSchema, MetricsArgsSchema, MetricsSchema
from shared.web import LabelledChildren, PlainQueryBlueprint, json_response, record_id, require_scope

blp = PlainQueryBlueprint("feedback", __name__, url_prefix="/v1", description="Storefront feedback and online metrics")
writer = FeedbackWriter()

FEEDBACK_EVENTS = Counter("segrec_feedback_events_total", "Feedback events accepted into the stream, by type",
                          ["type"])
FEEDBACK_EVENTS_BY_TYPE = LabelledChildren(FEEDBACK_EVENTS)
FEEDBACK_REJECTED = Counter("segrec_feedback_events_rejected_total", "Feedback events rejected per record")
FEEDBACK_REFUSED = Counter("segrec_feedback_batches_refused_total",
                           "Feedback batches refused with 503 because the stream was at its bound")


@blp.route("/feedback")
class Feedback(MethodView):
    @require_scope("feedback:write")
    @blp.arguments(FeedbackBatchSchema())
    @blp.response(202, FeedbackResultSchema)
    def post(self, batch):
        """Impressions, clicks and add-to-carts of recommendation answers; stored asynchronously (202)"""
        events = [event for _index, event in batch["events"].accepted]
        rejected = [{"index": index, "id": record_id(record, "event_id"), "errors": errors}
                    for index, record, errors in batch["events"].rejected]
        if events:
            try:
                writer.append(events, current_app.config["FEEDBACK_STREAM_MAX_LENGTH"],
                              getattr(batch["events"], "stream_payload", None))
            except StreamFull as full:
                FEEDBACK_REFUSED.inc()
                raise FeedbackBacklog(current_app.config["FEEDBACK_RETRY_AFTER_SECONDS"]) from full
            by_type: dict[str, int] = {}
            for event in events:
                by_type[event["type"]] = by_type.get(event["type"], 0) + 1
            for kind, count in by_type.items():
                FEEDBACK_EVENTS_BY_TYPE(kind).inc(count)
        if rejected:
            FEEDBACK_REJECTED.inc(len(rejected))
        return json_response({"accepted": len(events), "rejected": rejected}, status=202)


@blp.route("/recommendations/metrics")
class Metrics(MethodView):
    @require_scope("analytics:read")
    @blp.arguments(MetricsArgsSchema(), location="query")
    @blp.response(200, MetricsSchema)
    def get(self, args):
        """Impressions, CTR, add-to-cart rate, attributed orders and revenue per surface, model, variant and day"""
        return json_response(online_metrics(args["from_"], args["to"], args["group_by"], args["surface"],
                                            current_app.config))
