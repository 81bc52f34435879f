"""Request and response schemas of the recommend service (the OpenAPI document is built from them)."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from webargs.fields import DelimitedList

from shared.limits import MAX_STOCK
from shared.schemas import DelimitedIdentifier, Identifier, Money, ScheduledDateTime
from shared.web import BatchRequestMixin, TolerantList

PROMOTION_KINDS = ("spend_threshold", "free_shipping")


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

    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=50))
    category = fields.String(load_default=None, validate=validate.Length(max=128))
    exclude = DelimitedList(DelimitedIdentifier(), load_default=list, validate=validate.Length(max=200),
                                   metadata={"description": "comma-separated skus never to return"})


class PopularArgsSchema(RecommendationArgsSchema):
    tier = fields.String(load_default=None, validate=validate.OneOf(("regular", "silver", "gold", "black")))


class BundleArgsSchema(Schema):
    limit = fields.Integer(load_default=3, validate=validate.Range(min=1, max=10))


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
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=1, max=10_000))


class CartRequestSchema(Schema):
    """A cart: its lines and, optionally, who is shopping."""

    customer_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    items = fields.List(fields.Nested(CartLineSchema), load_default=list, validate=validate.Length(max=500))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=50))
    category = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    exclude = fields.List(Identifier(), load_default=list, validate=validate.Length(max=200))


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
