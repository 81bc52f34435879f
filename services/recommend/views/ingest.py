"""Catalogue ingest: products and promotions, answered per record."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from services.recommend.schemas import ProductBatchSchema, PromotionBatchSchema
from shared import ingest
from shared.schemas import BatchResultSchema
from shared.web import require_scope, run_batch

blp = Blueprint("catalogue", __name__, url_prefix="/v1", description="Send the catalogue and promotions")


@blp.route("/products")
class Products(MethodView):
    @require_scope("ingest:write")
    @blp.arguments(ProductBatchSchema())
    @blp.response(200, BatchResultSchema)
    def post(self, batch):
        """Upsert products"""
        return run_batch(batch["records"], "sku", ingest.upsert_products)


@blp.route("/promotions")
class Promotions(MethodView):
    @require_scope("ingest:write")
    @blp.arguments(PromotionBatchSchema())
    @blp.response(200, BatchResultSchema)
    def post(self, batch):
        """Upsert promotions"""
        return run_batch(batch["records"], "promotion_id", ingest.upsert_promotions)
