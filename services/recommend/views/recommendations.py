"""Recommendation endpoints: product page, bundles, cart, for-you and popular."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from prometheus_client import Counter

from services.recommend.schemas import (
    BundleArgsSchema,
    BundlesSchema,
    CartRecommendationSchema,
    CartRequestSchema,
    PopularArgsSchema,
    RecommendationArgsSchema,
    RecommendationSchema,
)
from services.recommend.experiments import RunningExperiments, assign_variant
from services.recommend.feedback import ServedContext, served_log, served_record
from services.recommend.model_families import CANDIDATE_FAMILIES
from services.recommend.serving import Recommender, Request
from services.recommend.store import reader
from shared.web import (
    FALLBACKS_BY_KIND,
    RECOMMENDATIONS_BY_KIND,
    LabelledChildren,
    PlainQueryBlueprint,
    json_response,
    require_scope,
)

blp = PlainQueryBlueprint("recommendations", __name__, url_prefix="/v1",
                          description="Recommendations for the storefront")
recommender = Recommender(reader)
experiments = RunningExperiments()

SERVED = Counter("segrec_recommendations_served_total", "Recommendation answers served, by surface and variant",
                 ["surface", "variant"])
SERVED_BY_SURFACE = LabelledChildren(SERVED)


def answered(kind: str, answer: dict):
    """Count the answer (and the fallback it used, if any) for the fallback rate, then send it."""
    RECOMMENDATIONS_BY_KIND(kind).inc()
    if answer.get("fallback"):
        FALLBACKS_BY_KIND(answer["fallback"]).inc()
    return json_response(answer)


def _request(args: dict) -> Request:
    return Request(limit=args["limit"], category=args.get("category"), exclude=args.get("exclude"))


def _context(surface: str, customer_id: str | None, session_id: str | None) -> ServedContext:
    """Who is served, and the variant of the experiment running on the surface (if any) they are in."""
    context = ServedContext(customer_id, session_id)
    experiment = experiments.running(surface, current_app.config["EXPERIMENT_CACHE_SECONDS"])
    if experiment is not None and context.unit:
        context.variant = assign_variant(experiment["experiment_id"], experiment["variants"], context.unit)
        context.experiment_id = experiment["experiment_id"]
    return context


def _candidate(context: ServedContext) -> str | None:
    """The candidate family the shopper's variant names, or None (the chosen model's lists serve)."""
    return context.variant if context.variant in CANDIDATE_FAMILIES else None


def _served(answer: dict, surface: str, context: ServedContext):
    """Log the answer for attribution (buffered, see ServedLog) and send it."""
    config = current_app.config
    served_log.configure(config["SERVED_LOG_BATCH"], config["SERVED_LOG_FLUSH_SECONDS"],
                         config["SERVED_STREAM_MAX_LENGTH"])
    served_log.append(served_record(answer, surface, context))
    SERVED_BY_SURFACE(surface, context.variant).inc()
    return answered(surface, answer)


@blp.route("/items/<sku>/bought-together")
class BoughtTogether(MethodView):
    @require_scope("recs:read")
    @blp.arguments(RecommendationArgsSchema(), location="query")
    @blp.response(200, RecommendationSchema)
    def get(self, args, sku):
        """Items bought with this one (an unknown sku gets popular items, with `fallback` set)"""
        context = _context("bought_together", args.get("customer_id"), args.get("session_id"))
        if context.variant == "popular":
            return _served(recommender.popular(_request(args)), "bought_together", context)
        return _served(recommender.bought_together(sku, _request(args), _candidate(context)), "bought_together",
                       context)


@blp.route("/items/<sku>/bundles")
class Bundles(MethodView):
    @require_scope("recs:read")
    @blp.arguments(BundleArgsSchema(), location="query")
    @blp.response(200, BundlesSchema)
    def get(self, args, sku):
        """2-3 item bundles with this one: list price, bundle price and margin after the discount"""
        context = _context("bundles", args.get("customer_id"), args.get("session_id"))
        if context.variant == "popular":
            answer = recommender.popular(Request(limit=args["limit"]))
            return _served({**answer, "bundles": []}, "bundles", context)
        return _served(recommender.bundles(sku, args["limit"]), "bundles", context)


@blp.route("/cart/recommendations")
class CartRecommendations(MethodView):
    @require_scope("recs:read")
    @blp.arguments(CartRequestSchema())
    @blp.response(200, CartRecommendationSchema)
    def post(self, cart):
        """Cross-sell for a cart, and add-ons that reach the best threshold promotion not yet reached"""
        context = _context("cart", cart["customer_id"], cart.get("session_id"))
        if context.variant == "popular":
            answer = recommender.popular(_request(cart))
            return _served({**answer, "cross_sell": answer["items"], "add_ons": None, "unknown_skus": 0}, "cart",
                           context)
        return _served(recommender.cart(cart["customer_id"], cart["items"], _request(cart), _candidate(context)),
                       "cart", context)


@blp.route("/customers/<customer_id>/recommendations")
class ForYou(MethodView):
    @require_scope("recs:read")
    @blp.arguments(RecommendationArgsSchema(), location="query")
    @blp.response(200, RecommendationSchema)
    def get(self, args, customer_id):
        """A personal list; falls back to the customer's tier, then to what is trending"""
        context = _context("for_you", customer_id, args.get("session_id"))
        if context.variant == "popular":
            return _served(recommender.popular(_request(args)), "for_you", context)
        return _served(recommender.for_you(customer_id, _request(args)), "for_you", context)


@blp.route("/popular")
class Popular(MethodView):
    @require_scope("recs:read")
    @blp.arguments(PopularArgsSchema(), location="query")
    @blp.response(200, RecommendationSchema)
    def get(self, args):
        """Popular items, optionally within a category or a membership tier"""
        return answered("popular", recommender.popular(_request(args), args["tier"]))
