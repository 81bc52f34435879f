"""Ingest endpoints: customers, orders and events, answered per record."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from services.segmentation.schemas import CustomerBatchSchema, EventBatchSchema, OrderBatchSchema
from shared import ingest
from shared.schemas import BatchResultSchema
from shared.web import require_scope, run_batch

blp = Blueprint("ingest", __name__, url_prefix="/v1", description="Send customers, orders and events")


@blp.route("/customers")
class Customers(MethodView):
    @require_scope("ingest:write")
    @blp.arguments(CustomerBatchSchema())
    @blp.response(200, BatchResultSchema)
    def post(self, batch):
        """Upsert customers"""
        return run_batch(batch["records"], "customer_id", ingest.upsert_customers)


@blp.route("/orders")
class Orders(MethodView):
    @require_scope("ingest:write")
    @blp.arguments(OrderBatchSchema())
    @blp.response(200, BatchResultSchema)
    def post(self, batch):
        """Upsert orders: same id and content is a no-op, paid to refunded an update, other changes a conflict"""
        return run_batch(batch["records"], "order_id", ingest.upsert_orders)


@blp.route("/events")
class Events(MethodView):
    @require_scope("ingest:write")
    @blp.arguments(EventBatchSchema())
    @blp.response(200, BatchResultSchema)
    def post(self, batch):
        """Record behavioural events (a re-sent event is stored once)"""
        return run_batch(batch["records"], "event_id", ingest.insert_events)
