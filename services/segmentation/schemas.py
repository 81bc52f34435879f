"""Request and response schemas of the segmentation service (the OpenAPI document is built from them)."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from shared.limits import MAX_ORDER_LINES, MAX_QUANTITY, MIN_UNIT_PRICE, ORDER_STATUSES
from shared.schemas import Identifier, Money, PastDateTime, UtcDateTime, check_attributes, check_id
from shared.web import BatchRequestMixin, TolerantList

EVENT_TYPES = ("view", "add_to_cart", "community_interaction", "follow")


# ---- ingest ------------------------------------------------------------------------------------


class CustomerRecordSchema(Schema):
    """A customer to insert or update."""

    customer_id = Identifier(required=True)
    joined_at = PastDateTime(load_default=None, allow_none=True)
    channel = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    community_member = fields.Boolean(load_default=False)
    opted_out = fields.Boolean(load_default=False)
    attributes = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=dict,
                            validate=check_attributes)


class OrderLineSchema(Schema):
    """One order line: quantity at least 1, unit price at least one cent."""

    sku = Identifier(required=True)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_QUANTITY))
    unit_price = Money(MIN_UNIT_PRICE, required=True)


class OrderRecordSchema(Schema):
    """An order with its lines."""

    order_id = Identifier(required=True)
    customer_id = Identifier(required=True)
    placed_at = PastDateTime(required=True)
    status = fields.String(load_default="paid", validate=validate.OneOf(ORDER_STATUSES))
    lines = fields.List(fields.Nested(OrderLineSchema), required=True, validate=validate.Length(min=1, max=MAX_ORDER_LINES))


class EventRecordSchema(Schema):
    """A behavioural event."""

    event_id = fields.String(load_default=None, allow_none=True, validate=check_id)
    customer_id = Identifier(required=True)
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    sku = fields.String(load_default=None, allow_none=True, validate=check_id)
    occurred_at = PastDateTime(required=True)


class CustomerBatchSchema(BatchRequestMixin, Schema):
    """A batch of customers: a JSON array, or {"records": [...]}."""

    records = TolerantList(fields.Nested(CustomerRecordSchema), required=True)


class OrderBatchSchema(BatchRequestMixin, Schema):
    """A batch of orders: a JSON array, or {"records": [...]}."""

    records = TolerantList(fields.Nested(OrderRecordSchema), required=True)


class EventBatchSchema(BatchRequestMixin, Schema):
    """A batch of events: a JSON array, or {"records": [...]}."""

    records = TolerantList(fields.Nested(EventRecordSchema), required=True)


# ---- segments ----------------------------------------------------------------------------------


class RFMSchema(Schema):
    recency_days = fields.Float(allow_none=True)
    frequency = fields.Integer()
    monetary = fields.Float()
    r = fields.Integer()
    f = fields.Integer()
    m = fields.Integer()
    segment = fields.String()


class TierSchema(Schema):
    name = fields.String()
    since = UtcDateTime(allow_none=True)
    spend_to_next_tier = fields.Float(allow_none=True)


class CLVSchema(Schema):
    p_alive = fields.Float(allow_none=True)
    expected_orders_90d = fields.Float(allow_none=True)
    expected_value_365d = fields.Float(allow_none=True)


class CustomerProfileSchema(Schema):
    """A customer's scores in the current run."""

    customer_id = fields.String()
    run_id = fields.String()
    rfm = fields.Nested(RFMSchema)
    tier = fields.Nested(TierSchema)
    lifecycle = fields.String()
    community_layer = fields.String(allow_none=True)
    clv = fields.Nested(CLVSchema)


class SegmentValueSchema(Schema):
    value = fields.String()
    members = fields.Integer()


class DimensionSchema(Schema):
    dimension = fields.String()
    values = fields.List(fields.Nested(SegmentValueSchema))


class SegmentCatalogueSchema(Schema):
    """Every dimension with its values and member counts."""

    run_id = fields.String()
    customers = fields.Integer()
    dimensions = fields.List(fields.Nested(DimensionSchema))


class MemberSchema(Schema):
    """A segment member with their scores."""

    customer_id = fields.String()
    rfm_segment = fields.String()
    tier = fields.String()
    lifecycle = fields.String()
    community_layer = fields.String(allow_none=True)
    recency_days = fields.Float(allow_none=True)
    frequency = fields.Integer()
    monetary = fields.Float()
    r = fields.Integer()
    f = fields.Integer()
    m = fields.Integer()
    p_alive = fields.Float(allow_none=True)
    expected_orders_90d = fields.Float(allow_none=True)
    expected_value_365d = fields.Float(allow_none=True)


class MemberPageSchema(Schema):
    """One page of members, read from one run."""

    run_id = fields.String()
    items = fields.List(fields.Nested(MemberSchema))
    next_cursor = fields.String(allow_none=True)


class RangeSchema(Schema):
    """Bounds of a numeric filter."""

    gte = fields.Float()
    gt = fields.Float()
    lte = fields.Float()
    lt = fields.Float()

    @validates_schema
    def at_least_one_bound(self, data, **kwargs):
        if not data:
            raise ValidationError("give at least one of gte, gt, lte, lt")


class AudienceFilterField(fields.Field):
    """A filter value: a list of values (OR) for a dimension, or a {gte, lte, ...} range for a number."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            if not value or not all(isinstance(item, str) for item in value):
                raise ValidationError("a non-empty list of values")
            return value
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return RangeSchema().load(value)
        raise ValidationError("a list of values or a range object such as {\"gte\": 500}")


def audience_filters_doc() -> dict:
    """The OpenAPI shape of audience filters: each dimension takes known values, each numeric field a range."""
    from services.segmentation.segments import DIMENSIONS, NUMERIC_FIELDS

    properties = {}
    for name, (_column, values) in DIMENSIONS.items():
        value = {"type": "string", "enum": list(values)}
        properties[name] = {"oneOf": [{"type": "array", "items": value, "minItems": 1}, value]}
    bound = {"type": "number", "minimum": -1e12, "maximum": 1e12}
    range_object = {"type": "object", "properties": {operator: bound for operator in ("gte", "gt", "lte", "lt")},
                    "additionalProperties": False, "minProperties": 1,
                    "description": "bounds of a numeric filter; a lower bound above an upper one is 422"}
    for name in NUMERIC_FIELDS:
        properties[name] = range_object
    return {"type": "object", "properties": properties, "additionalProperties": False}


class AudienceQuerySchema(Schema):
    """An audience: filters combine with AND across fields and OR within a field."""

    filters = fields.Dict(keys=fields.String(), values=AudienceFilterField(), load_default=dict,
                          metadata=audience_filters_doc())
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=512))


class AudienceResultSchema(Schema):
    """An audience's size and one page of it."""

    run_id = fields.String()
    count = fields.Integer()
    items = fields.List(fields.Nested(MemberSchema))
    next_cursor = fields.String(allow_none=True)


class TransitionArgsSchema(Schema):
    dimension = fields.String(required=True)
    from_run = fields.String(required=True)
    to_run = fields.String(load_default=None)


class TransitionSchema(Schema):
    from_ = fields.String(data_key="from", attribute="from", allow_none=True)
    to = fields.String(allow_none=True)
    customers = fields.Integer()


class TransitionsSchema(Schema):
    """Moves between the values of a dimension from one run to another."""

    dimension = fields.String()
    from_run = fields.String()
    to_run = fields.String()
    transitions = fields.List(fields.Nested(TransitionSchema))


# ---- runs --------------------------------------------------------------------------------------


class RunStepSchema(Schema):
    """One step of a run: its status, wall seconds, rows, and when it started and ended (UTC)."""

    name = fields.String()
    status = fields.String()
    seconds = fields.Float(allow_none=True)
    rows = fields.Integer(allow_none=True)
    started_at = fields.String(allow_none=True)
    updated_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    detail = fields.Dict()


class RunSchema(Schema):
    """A training run: status, per-step timings, metrics, and why it was rejected or failed."""

    run_id = fields.String()
    status = fields.String()
    trigger = fields.String()
    as_of = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    published_at = UtcDateTime(allow_none=True)
    current = fields.Boolean()
    steps = fields.List(fields.Nested(RunStepSchema))
    metrics = fields.Dict()
    reason = fields.String(allow_none=True)


class RunListSchema(Schema):
    items = fields.List(fields.Nested(RunSchema))


class RunListArgsSchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=200))


# ---- campaigns ----


CAMPAIGN_OFFER_KINDS = ("percent_off", "amount_off", "free_shipping")
CAMPAIGN_GROUPS = ("treatment", "control")


class CampaignOfferSchema(Schema):
    """The offer every treatment member gets: a time-limited coupon."""

    kind = fields.String(required=True, validate=validate.OneOf(CAMPAIGN_OFFER_KINDS))
    # Percent for percent_off, money for amount_off; free_shipping needs none.
    value = Money(load_default=None)
    valid_days = fields.Integer(load_default=None, validate=validate.Range(min=1, max=365))

    @validates_schema
    def value_fits_kind(self, data, **kwargs):
        value = data.get("value")
        if value is None and data.get("kind") != "free_shipping":
            raise ValidationError("give the offer's value", "value")
        if data.get("kind") == "percent_off" and value is not None and value > 100:
            raise ValidationError("a percentage is at most 100", "value")


class CampaignRecommendationsSchema(Schema):
    """How many personal recommendations each treatment member gets."""

    limit = fields.Integer(load_default=None, validate=validate.Range(min=0, max=50))


class WinBackRequestSchema(Schema):
    """A win-back campaign: the audience (segment query filters; default lifecycle dormant) and what it gets."""

    name = fields.String(load_default=None, validate=validate.Length(min=1, max=255))
    audience = fields.Dict(keys=fields.String(), values=AudienceFilterField(), load_default=None, allow_none=True,
                           metadata=audience_filters_doc())
    holdout_fraction = fields.Float(load_default=None, allow_nan=False, validate=validate.Range(min=0, max=0.9))
    offer = fields.Nested(CampaignOfferSchema, load_default=None, allow_none=True)
    recommendations = fields.Nested(CampaignRecommendationsSchema, load_default=None, allow_none=True)
    frequency_cap_days = fields.Integer(load_default=None, validate=validate.Range(min=0, max=3650))
    webhook_url = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=2048))


class CampaignSkippedSchema(Schema):
    opted_out = fields.Integer()
    global_control = fields.Integer()
    frequency_capped = fields.Integer()


class WebhookDeliverySchema(Schema):
    batch = fields.Integer()
    members = fields.Integer()
    status = fields.String()
    attempts = fields.Integer()
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    delivered_at = UtcDateTime(allow_none=True)


class CampaignWebhookSchema(Schema):
    url = fields.String()
    batches = fields.Integer()
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer())
    deliveries = fields.List(fields.Nested(WebhookDeliverySchema))


class CampaignSchema(Schema):
    """A campaign: status (building, ready, failed), sizes, skipped by reason, webhook deliveries."""

    campaign_id = fields.String()
    name = fields.String()
    status = fields.String()
    run_id = fields.String(allow_none=True)
    model_version = fields.String(allow_none=True)
    created_at = UtcDateTime()
    launched_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    audience_size = fields.Integer()
    treatment_size = fields.Integer()
    control_size = fields.Integer()
    skipped = fields.Nested(CampaignSkippedSchema)
    note = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    definition = fields.Dict()
    webhook = fields.Nested(CampaignWebhookSchema, allow_none=True)


class CampaignMemberSchema(Schema):
    """A campaign member: group, offer (treatment only) and recommended skus."""

    customer_id = fields.String()
    group = fields.String()
    rank = fields.Integer()
    offer = fields.Dict(allow_none=True)
    recommended_skus = fields.List(fields.String())
    contacted_at = UtcDateTime(allow_none=True)
    recommendation_id = fields.String(
        allow_none=True,
        metadata={"description": "sent back with feedback on these skus (POST /v1/feedback, surface campaign); "
                                 "null when the member has no recommended skus"})


class CampaignMemberPageSchema(Schema):
    """One page of a campaign's members in rank order."""

    campaign_id = fields.String()
    items = fields.List(fields.Nested(CampaignMemberSchema))
    next_cursor = fields.String(allow_none=True)


class CampaignMemberArgsSchema(Schema):
    """?limit=, ?cursor= and ?group= (treatment or control)."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(max=512))
    group = fields.String(load_default=None, validate=validate.OneOf(CAMPAIGN_GROUPS))


class CampaignCsvArgsSchema(Schema):
    group = fields.String(load_default=None, validate=validate.OneOf(CAMPAIGN_GROUPS))


class CampaignGroupReportSchema(Schema):
    members = fields.Integer()
    converters = fields.Integer()
    conversion_rate = fields.Float(allow_none=True)
    orders = fields.Integer()
    revenue = fields.Float()
    revenue_per_member = fields.Float(allow_none=True)


class CampaignUpliftSchema(Schema):
    conversion_uplift = fields.Float(allow_none=True)
    ci95_low = fields.Float(allow_none=True)
    ci95_high = fields.Float(allow_none=True)
    ci_method = fields.String()
    relative_uplift = fields.Float(allow_none=True)
    revenue_per_member_uplift = fields.Float(allow_none=True)
    verdict = fields.String()
    conclusion = fields.String()


class CampaignReportSchema(Schema):
    """Paid orders since launch, treatment vs control, and the conversion uplift with a 95 % interval."""

    campaign_id = fields.String()
    launched_at = UtcDateTime(allow_none=True)
    as_of = UtcDateTime()
    treatment = fields.Nested(CampaignGroupReportSchema)
    control = fields.Nested(CampaignGroupReportSchema)
    uplift = fields.Nested(CampaignUpliftSchema)
