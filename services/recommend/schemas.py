"""Request and response schemas of the recommend service (the OpenAPI document is built from them)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

import msgspec
import orjson
from flask import current_app
from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema
from webargs.fields import DelimitedList

from shared.limits import MAX_STOCK
from shared.plainload import PlainContext, PlainId, PlainLoader, PlainTimes, decode_plain
from shared.schemas import (
    DelimitedIdentifier,
    Identifier,
    Money,
    PastDateTime,
    RejectedRecordSchema,
    ScheduledDateTime,
)
from shared.web import BatchRequestMixin, RecordBatch, TolerantList

PROMOTION_KINDS = ("spend_threshold", "free_shipping")
MAX_CART_QUANTITY = 10_000
SURFACES_WITH_UNKNOWN = ("bought_together", "bundles", "cart", "for_you", "campaign", "unknown")


# ---- ingest ------------------------------------------------------------------------------------


class ProductRecordSchema(Schema):
    """A catalogue item to insert or update."""

    sku = Identifier(required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    category = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    price = Money(required=True)
    cost = Money(load_default=None, allow_none=True)
    stock = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0, max=MAX_STOCK))
    active = fields.Boolean(load_default=True)
    repeat_purchase = fields.Boolean(load_default=False)


class PromotionRecordSchema(Schema):
    """A promotion: spend `threshold`, save `discount`, between two dates, optionally in one category."""

    promotion_id = Identifier(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(PROMOTION_KINDS))
    threshold = Money(0, exclusive_minimum=True, required=True)
    discount = Money(load_default=0)
    starts_at = ScheduledDateTime(required=True)
    ends_at = ScheduledDateTime(required=True)
    category = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))

    @validates_schema
    def check_dates_and_discount(self, data, **kwargs):
        if data["ends_at"] <= data["starts_at"]:
            raise ValidationError("must be after starts_at", field_name="ends_at")
        if data["kind"] == "spend_threshold" and data["discount"] >= data["threshold"]:
            raise ValidationError("a spend-threshold discount must be below its threshold", field_name="discount")


class ProductBatchSchema(BatchRequestMixin, Schema):
    """A batch of products: a JSON array, or {"records": [...]}."""

    records = TolerantList(fields.Nested(ProductRecordSchema), required=True)


class PromotionBatchSchema(BatchRequestMixin, Schema):
    """A batch of promotions: a JSON array, or {"records": [...]}."""

    records = TolerantList(fields.Nested(PromotionRecordSchema), required=True)


# ---- recommendations ---------------------------------------------------------------------------


class RecommendationArgsSchema(Schema):
    """Query parameters every recommendation call takes."""

    customer_id = fields.String(load_default=None, validate=validate.Length(max=64),
                                metadata={"description": "who is shopping (experiment assignment, feedback)"})
    session_id = fields.String(load_default=None, validate=validate.Length(max=64),
                               metadata={"description": "the storefront session when no customer is known"})

    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=50))
    category = fields.String(load_default=None, validate=validate.Length(max=128))
    exclude = DelimitedList(DelimitedIdentifier(), load_default=list, validate=validate.Length(max=200),
                                   metadata={"description": "comma-separated skus never to return"})


class PopularArgsSchema(RecommendationArgsSchema):
    tier = fields.String(load_default=None, validate=validate.OneOf(("regular", "silver", "gold", "black")))


class BundleArgsSchema(Schema):
    limit = fields.Integer(load_default=3, validate=validate.Range(min=1, max=10))
    customer_id = fields.String(load_default=None, validate=validate.Length(max=64))
    session_id = fields.String(load_default=None, validate=validate.Length(max=64))


class RecommendedItemSchema(Schema):
    """One recommended item with a reason a merchant can read."""

    sku = fields.String()
    name = fields.String()
    category = fields.String(allow_none=True)
    price = fields.Float()
    score = fields.Float()
    reason = fields.String()


class RecommendationSchema(Schema):
    """Every recommendation answer: items, the model version, an id for attribution, the fallback used."""

    items = fields.List(fields.Nested(RecommendedItemSchema))
    model_version = fields.String(allow_none=True)
    recommendation_id = fields.String()
    fallback = fields.String(allow_none=True, metadata={"description": "null, or what answered instead"})


class BundleSchema(Schema):
    items = fields.List(fields.Nested(RecommendedItemSchema))
    list_price = fields.Float()
    bundle_price = fields.Float()
    saving = fields.Float()
    discount = fields.Float()
    margin = fields.Float(metadata={"description": "gross margin after the bundle discount"})
    reason = fields.String()


class BundlesSchema(RecommendationSchema):
    bundles = fields.List(fields.Nested(BundleSchema))


class CartLineSchema(Schema):
    sku = Identifier(required=True)
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_CART_QUANTITY))


class CartLines(fields.List):
    """A cart's lines. Plainly valid lines are loaded by PlainLoader from CartLineSchema's own declarations
    (the nested schema's per-line load was about 15 % of a cart request in the profile); any other body goes
    through the nested schema, so errors and coercions are exactly the schema's."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is list:
            lines = _PLAIN_CART_LINE.load_many(value)
            if None not in lines:
                return lines
        return super()._deserialize(value, attr, data, **kwargs)


_PLAIN_CART_LINE = PlainLoader(CartLineSchema())


MAX_CART_LINES_IN_REQUEST = 500


class CartRequestSchema(Schema):
    """A cart: its lines and, optionally, who is shopping."""

    customer_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    session_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    items = CartLines(fields.Nested(CartLineSchema), load_default=list,
                      validate=validate.Length(max=MAX_CART_LINES_IN_REQUEST))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=50))
    category = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    exclude = fields.List(Identifier(), load_default=list, validate=validate.Length(max=200))

    def plain_body(self, body: bytes) -> dict | None:
        """What load() answers for a plainly valid cart body (decoded by msgspec), or None: load it instead."""
        cart = decode_plain(_PLAIN_CART, body)
        return None if cart is None else msgspec.to_builtins(cart)


# CartRequestSchema and CartLineSchema as msgspec Structs (CartRequestSchema.plain_body): the body of the
# storefront's cart call decoded and checked in C. Each declaration mirrors the schema's; a value they
# refuse sends the body through the schema. tests/unit/test_plain_body.py checks both load alike.
class _PlainCartLine(msgspec.Struct, forbid_unknown_fields=True):
    sku: PlainId
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_CART_QUANTITY)] = 1


class _PlainCart(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    customer_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    session_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    items: Annotated[list[_PlainCartLine], msgspec.Meta(max_length=MAX_CART_LINES_IN_REQUEST)] = []
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10
    category: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    exclude: Annotated[list[PlainId], msgspec.Meta(max_length=200)] = []


_PLAIN_CART = msgspec.json.Decoder(_PlainCart)


class AddOnSuggestionSchema(Schema):
    items = fields.List(fields.Nested(RecommendedItemSchema))
    total_price = fields.Float()
    overshoot = fields.Float()
    saving = fields.Float()
    reason = fields.String()


class AddOnsSchema(Schema):
    """The best unreached threshold promotion, the gap, and what closes it."""

    promotion_id = fields.String()
    threshold = fields.Float()
    discount = fields.Float()
    category = fields.String(allow_none=True)
    cart_total = fields.Float()
    gap = fields.Float()
    saving = fields.Float()
    suggestions = fields.List(fields.Nested(AddOnSuggestionSchema))


class CartRecommendationSchema(RecommendationSchema):
    cross_sell = fields.List(fields.Nested(RecommendedItemSchema))
    add_ons = fields.Nested(AddOnsSchema, allow_none=True)
    unknown_skus = fields.Integer()


# ---- feedback ----------------------------------------------------------------------------------

FEEDBACK_EVENT_TYPES = ("impression", "click", "add_to_cart")
MAX_SKUS_PER_IMPRESSION = 100
MAX_IMPRESSION_POSITION = 1000


class ShownItemSchema(Schema):
    """One item of an impression, at the position it was shown (1 = first)."""

    sku = Identifier(required=True)
    position = fields.Integer(required=True, validate=validate.Range(min=1, max=MAX_IMPRESSION_POSITION))


class FeedbackEventSchema(Schema):
    """An impression (the skus shown), a click or an add-to-cart, by a customer or a session."""

    event_id = Identifier(required=True)
    type = fields.String(required=True, validate=validate.OneOf(FEEDBACK_EVENT_TYPES))
    recommendation_id = Identifier(load_default=None, allow_none=True)
    customer_id = Identifier(load_default=None, allow_none=True)
    session_id = Identifier(load_default=None, allow_none=True)
    sku = Identifier(load_default=None, allow_none=True)
    skus = fields.List(fields.Nested(ShownItemSchema), load_default=None, allow_none=True,
                       validate=validate.Length(min=1, max=MAX_SKUS_PER_IMPRESSION))
    occurred_at = PastDateTime(required=True)

    @validates_schema
    def check_event(self, data, **kwargs):
        if not data.get("customer_id") and not data.get("session_id"):
            raise ValidationError("give customer_id or session_id", field_name="customer_id")
        kind = data.get("type")
        if kind in ("impression", "click") and not data.get("recommendation_id"):
            raise ValidationError(f"a {kind} names the recommendation_id it belongs to",
                                  field_name="recommendation_id")
        if kind == "impression" and not data.get("skus"):
            raise ValidationError("an impression lists the skus shown", field_name="skus")
        if kind in ("click", "add_to_cart") and not data.get("sku"):
            raise ValidationError(f"a {kind} names its sku", field_name="sku")
        occurred_at = data.get("occurred_at")
        window = timedelta(hours=current_app.config["ATTRIBUTION_WINDOW_HOURS"])
        if occurred_at is not None and occurred_at < datetime.now(timezone.utc) - window:
            raise ValidationError(f"is older than the attribution window ({window.total_seconds() / 3600:g} h)",
                                  field_name="occurred_at")


class FeedbackEvents(TolerantList):
    """Feedback events: plainly valid ones are loaded by PlainLoader from FeedbackEventSchema's declarations,
    the rest by the schema (same result; every error is the schema's)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, plain_context=PlainContext(), **kwargs)

    def load_record(self, item, plain_context=None, **kwargs):
        event = _PLAIN_EVENT.load(item, plain_context)
        if event is not None:
            return event
        return super().load_record(item, **kwargs)


_PLAIN_EVENT = PlainLoader(FeedbackEventSchema())


class FeedbackBatchSchema(Schema):
    """A batch of feedback events: a JSON array, or {"events": [...]}."""

    events = FeedbackEvents(fields.Nested(FeedbackEventSchema), required=True, limit_setting="MAX_FEEDBACK_EVENTS")

    @pre_load
    def wrap_bare_list(self, data, **kwargs):
        if isinstance(data, list):
            return {"events": data}
        return data

    def plain_body(self, body: bytes) -> dict | None:
        """What load() answers for a batch whose every event is plainly valid (decoded by msgspec), or None."""
        decoded = decode_plain(_PLAIN_FEEDBACK, body)
        if decoded is None:
            return None
        events = decoded if type(decoded) is list else decoded.events
        if len(events) > current_app.config["MAX_FEEDBACK_EVENTS"]:
            return None  # 413, from the schema
        times = PlainTimes(days_ahead=0)
        # check_event's attribution window, read once per batch rather than once per event.
        oldest = datetime.now(timezone.utc) - timedelta(hours=current_app.config["ATTRIBUTION_WINDOW_HOURS"])
        loaded = msgspec.to_builtins(events)
        for event, record in zip(events, loaded):
            occurred_at = times.load(event.occurred_at)
            if occurred_at is None or occurred_at < oldest or not _plainly_complete(event):
                return None
            record["occurred_at"] = occurred_at
        return {"events": PlainEvents(loaded)}


class PlainEvents(RecordBatch):
    """A batch whose every event was plainly valid, with the feedback stream's entry already encoded.

    The loaded events hold exactly the stream's fields in its order (FeedbackEventSchema's), and orjson
    writes an aware UTC time as isoformat() does, so the entry is orjson of the events themselves.
    """

    def __init__(self, events: list[dict]) -> None:
        super().__init__(list(enumerate(events)), [])
        self.stream_payload = orjson.dumps(events)


def _plainly_complete(event: _PlainEvent) -> bool:
    """check_event's rules on who, which answer and which skus, for an event msgspec decoded."""
    if event.customer_id is None and event.session_id is None:
        return False  # ids are never empty once decoded
    if event.type != "add_to_cart" and event.recommendation_id is None:
        return False
    if event.type == "impression":
        return event.skus is not None
    return event.sku is not None


# FeedbackEventSchema and ShownItemSchema as msgspec Structs (FeedbackBatchSchema.plain_body), fields in
# the schema's order: a batch decoded and checked in C; a batch with any event they refuse, or one that
# breaks check_event's rules, goes through the schema. tests/unit/test_plain_body.py checks both load alike.
class _PlainShownItem(msgspec.Struct, forbid_unknown_fields=True):
    sku: PlainId
    position: Annotated[int, msgspec.Meta(ge=1, le=MAX_IMPRESSION_POSITION)]


class _PlainEvent(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    event_id: PlainId
    type: Literal[FEEDBACK_EVENT_TYPES]
    recommendation_id: PlainId | None = None
    customer_id: PlainId | None = None
    session_id: PlainId | None = None
    sku: PlainId | None = None
    skus: Annotated[list[_PlainShownItem], msgspec.Meta(min_length=1, max_length=MAX_SKUS_PER_IMPRESSION)] | None = None
    occurred_at: str


class _PlainFeedbackBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[_PlainEvent]


_PLAIN_FEEDBACK = msgspec.json.Decoder(list[_PlainEvent] | _PlainFeedbackBatch)


class FeedbackResultSchema(Schema):
    accepted = fields.Integer()
    rejected = fields.List(fields.Nested(RejectedRecordSchema))


# ---- online metrics and experiments --------------------------------------------------------------

METRIC_GROUPS = ("day", "surface", "model_version", "variant")


class MetricsArgsSchema(Schema):
    """The period (shop-local days, inclusive) and how to group."""

    from_ = fields.Date(data_key="from", required=True)
    to = fields.Date(required=True)
    surface = fields.String(load_default=None, validate=validate.OneOf(SURFACES_WITH_UNKNOWN))
    group_by = DelimitedList(fields.String(validate=validate.OneOf(METRIC_GROUPS)),
                             load_default=lambda: list(METRIC_GROUPS))

    @validates_schema
    def check_period(self, data, **kwargs):
        if data["to"] < data["from_"]:
            raise ValidationError("must not be before from", field_name="to")
        if (data["to"] - data["from_"]).days > 366:
            raise ValidationError("a period is at most 366 days", field_name="to")


class RateSchema(Schema):
    value = fields.Float(allow_none=True)
    ci95_low = fields.Float()
    ci95_high = fields.Float()


class MetricsRowSchema(Schema):
    day = fields.String()
    surface = fields.String()
    model_version = fields.String(allow_none=True)
    variant = fields.String()
    impressions = fields.Integer()
    clicked_impressions = fields.Integer()
    clicks = fields.Integer()
    add_to_carts = fields.Integer()
    ctr = fields.Nested(RateSchema)
    add_to_cart_rate = fields.Nested(RateSchema)
    attributed_orders = fields.Integer()
    attributed_revenue = fields.Float()
    revenue_per_1000_impressions = fields.Float(allow_none=True)


class MetricsSchema(Schema):
    period = fields.Dict()
    group_by = fields.List(fields.String())
    attribution_window_hours = fields.Integer()
    unattributed_events = fields.Integer(metadata={"description": "events whose recommendation_id is unknown"})
    rows = fields.List(fields.Nested(MetricsRowSchema))


class VariantSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    weight = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False, max=1000))


class ExperimentCreateSchema(Schema):
    """An experiment on one surface: variants (the first is the control unless `control` names one)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    surface = fields.String(required=True, validate=validate.OneOf(("bought_together", "bundles", "cart", "for_you")))
    variants = fields.List(fields.Nested(VariantSchema), required=True, validate=validate.Length(min=2, max=5))
    control = fields.String(load_default=None, validate=validate.Length(max=64))
    starts_at = ScheduledDateTime(required=True)
    ends_at = ScheduledDateTime(required=True)
    min_detectable_effect = fields.Float(load_default=None, allow_none=True,
                                         validate=validate.Range(min=0, min_inclusive=False, max=1))

    @validates_schema
    def check_experiment(self, data, **kwargs):
        names = [variant["name"] for variant in data.get("variants") or []]
        if len(set(names)) != len(names):
            raise ValidationError("variant names must differ", field_name="variants")
        if data.get("control") and data["control"] not in names:
            raise ValidationError("must be one of the variants", field_name="control")
        if data.get("ends_at") and data.get("starts_at") and data["ends_at"] <= data["starts_at"]:
            raise ValidationError("must be after starts_at", field_name="ends_at")


class ExperimentSchema(Schema):
    experiment_id = fields.String()
    name = fields.String()
    surface = fields.String()
    variants = fields.List(fields.Dict())
    control = fields.String()
    starts_at = fields.DateTime()
    ends_at = fields.DateTime()
    min_detectable_effect = fields.Float()
    status = fields.String()


class ExperimentReportSchema(Schema):
    experiment = fields.Nested(ExperimentSchema)
    variants = fields.List(fields.Dict())
    comparisons = fields.List(fields.Dict())
    verdict = fields.String()
    conclusion = fields.String()
