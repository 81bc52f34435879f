"""Recommendation endpoints: product page, bundles, cart, for-you and popular."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from services.recommend.schemas import (
    BundleArgsSchema,
    BundlesSchema,
    CartRecommendationSchema,
    CartRequestSchema,
    PopularArgsSchema,
    RecommendationArgsSchema,
    RecommendationSchema,
)
from services.recommend.serving import Recommender, Request
from services.recommend.store import reader
from shared.web import FALLBACKS, RECOMMENDATIONS, json_response, require_scope

blp = Blueprint("recommendations", __name__, url_prefix="/v1", description="Recommendations for the storefront")
recommender = Recommender(reader)


def answered(kind: str, answer: dict):
    """Count the answer (and the fallback it used, if any) for the fallback rate, then send it."""
    RECOMMENDATIONS.labels(kind).inc()
    if answer.get("fallback"):
        FALLBACKS.labels(answer["fallback"]).inc()
    return json_response(answer)


def _request(args: dict) -> Request:
    return Request(limit=args["limit"], category=args.get("category"), exclude=args.get("exclude"))


@blp.route("/items/<sku>/bought-together")
class BoughtTogether(MethodView):
    @require_scope("recs:read")
    @blp.arguments(RecommendationArgsSchema(), location="query")
    @blp.response(200, RecommendationSchema)
    def get(self, args, sku):
        """Items bought with this one (an unknown sku gets popular items, with `fallback` set)"""
        return answered("bought_together", recommender.bought_together(sku, _request(args)))


@blp.route("/items/<sku>/bundles")
class Bundles(MethodView):
    @require_scope("recs:read")
    @blp.arguments(BundleArgsSchema(), location="query")
    @blp.response(200, BundlesSchema)
    def get(self, args, sku):
        """2-3 item bundles with this one: list price, bundle price and margin after the discount"""
        return answered("bundles", recommender.bundles(sku, args["limit"]))


@blp.route("/cart/recommendations")
class CartRecommendations(MethodView):
    @require_scope("recs:read")
    @blp.arguments(CartRequestSchema())
    @blp.response(200, CartRecommendationSchema)
    def post(self, cart):
        """Cross-sell for a cart, and add-ons that reach the best threshold promotion not yet reached"""
        return answered("cart", recommender.cart(cart["customer_id"], cart["items"], _request(cart)))


@blp.route("/customers/<customer_id>/recommendations")
class ForYou(MethodView):
    @require_scope("recs:read")
    @blp.arguments(RecommendationArgsSchema(), location="query")
    @blp.response(200, RecommendationSchema)
    def get(self, args, customer_id):
        """A personal list; falls back to the customer's tier, then to what is trending"""
        return answered("for_you", recommender.for_you(customer_id, _request(args)))


@blp.route("/popular")
class Popular(MethodView):
    @require_scope("recs:read")
    @blp.arguments(PopularArgsSchema(), location="query")
    @blp.response(200, RecommendationSchema)
    def get(self, args):
        """Popular items, optionally within a category or a membership tier"""
        return answered("popular", recommender.popular(_request(args), args["tier"]))
