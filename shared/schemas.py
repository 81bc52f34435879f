"""Marshmallow pieces both services' schemas.py build on: batch answers, errors, pages, dates."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import current_app, has_app_context
from marshmallow import Schema, ValidationError, fields, validate

from shared.limits import MAX_ID_LENGTH, MAX_MONEY, MAX_SCHEDULE_DAYS_AHEAD, TimeRules, attributes_problem, id_problem


def time_rules() -> TimeRules:
    """The time rules of the current app's configuration (the defaults outside an app)."""
    if has_app_context():
        return TimeRules.from_config(current_app.config)
    return TimeRules()


class UtcDateTime(fields.DateTime):
    """A date-time answered in UTC with its offset ("...Z"); stored times are naive UTC."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class ShopDateTime(UtcDateTime):
    """An ISO 8601 timestamp: with an offset as given, without one in the shop's time zone (SHOP_TIMEZONE).

    Loads as an aware UTC datetime; rejected outside the plausible window (MIN_PLAUSIBLE_DATE to now
    plus MAX_FUTURE_SKEW_SECONDS, or plus `days_ahead` days for times that may be scheduled ahead).
    """

    def __init__(self, *, days_ahead: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.days_ahead = days_ahead

    def _deserialize(self, value, attr, data, **kwargs) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        rules = time_rules()
        try:
            naive_utc = rules.to_naive_utc(parsed)
        except (OverflowError, ValueError) as error:
            raise ValidationError("is outside the range of dates") from error
        problem = rules.window_problem(naive_utc, self.days_ahead)
        if problem is not None:
            raise ValidationError(problem)
        return naive_utc.replace(tzinfo=timezone.utc)


def check_id(value: str) -> None:
    """Reject ids that are empty, too long, or hold "/", control characters or lone surrogates."""
    problem = id_problem(value)
    if problem is not None:
        raise ValidationError(problem)


# The id rule as the OpenAPI documents state it (check_id is the authority; it also refuses lone surrogates).
ID_DOCUMENTED_PATTERN = r"^[^/\x00-\x1f\x7f-\x9f]*$"


class DocumentedLength(validate.Length):
    """minLength/maxLength in the OpenAPI document only: check_id gives the error, in its own words."""

    def __call__(self, value):
        return value


class DocumentedPattern(validate.Regexp):
    """A pattern in the OpenAPI document only: check_id gives the error, in its own words."""

    def __call__(self, value):
        return value


def Identifier(**kwargs) -> fields.String:
    """An id as clients send it: 1 to 64 characters, no "/" or control characters, stored verbatim."""
    documented = [DocumentedLength(min=1, max=MAX_ID_LENGTH), DocumentedPattern(ID_DOCUMENTED_PATTERN)]
    return fields.String(validate=[*documented, check_id], **kwargs)


def check_no_comma(value: str) -> None:
    """Reject a comma inside one id of a comma-separated list (it would have split the id in two)."""
    if "," in value:
        raise ValidationError("must not contain a comma")


def DelimitedIdentifier() -> fields.String:
    """An id inside a comma-separated query list (?exclude=a,b): the rules of Identifier, and no comma."""
    documented = [DocumentedLength(min=1, max=MAX_ID_LENGTH), DocumentedPattern(r"^[^,/\x00-\x1f\x7f-\x9f]*$")]
    return fields.String(validate=[*documented, check_no_comma, check_id])


def PastDateTime(**kwargs) -> ShopDateTime:
    """A timestamp that is not in the future (shop-local when it has no offset)."""
    return ShopDateTime(**kwargs)


def ScheduledDateTime(**kwargs) -> ShopDateTime:
    """A timestamp that may lie up to MAX_SCHEDULE_DAYS_AHEAD days ahead (promotion dates)."""
    return ShopDateTime(days_ahead=MAX_SCHEDULE_DAYS_AHEAD, **kwargs)


def Money(minimum: float = 0, *, exclusive_minimum: bool = False, **kwargs) -> fields.Float:
    """A finite amount of money from `minimum` to MAX_MONEY."""
    bounds = validate.Range(min=minimum, min_inclusive=not exclusive_minimum, max=MAX_MONEY)
    return fields.Float(allow_nan=False, validate=bounds, **kwargs)


def check_attributes(value: dict) -> None:
    """Reject attribute objects beyond MAX_ATTRIBUTES_BYTES serialized or MAX_ATTRIBUTES_DEPTH deep."""
    problem = attributes_problem(value)
    if problem is not None:
        raise ValidationError(problem)


# Every error code the APIs answer with (the `code` of the error envelope).
ERROR_CODES = (
    "bad_request", "malformed_json", "bad_cursor", "idempotency_key_required", "unauthorized", "forbidden",
    "not_found", "method_not_allowed", "conflict", "payload_too_large", "batch_too_large", "uri_too_long",
    "unsupported_media_type", "validation_error", "rate_limited", "header_fields_too_large", "internal_error",
    "unavailable", "feedback_backlog", "error",
)


class ErrorSchema(Schema):
    """What went wrong: the HTTP status again, a stable code, a message for people, details per field."""

    status = fields.Integer(required=True)
    code = fields.String(required=True, validate=validate.OneOf(ERROR_CODES),
                         metadata={"description": "A stable code a client can act on: " + ", ".join(ERROR_CODES)})
    message = fields.String(required=True)
    details = fields.Dict(required=True)
    request_id = fields.String(metadata={"description": "The request's id (X-Request-ID), for the logs"})


class ErrorEnvelopeSchema(Schema):
    """The one error envelope every endpoint answers with: {"error": {"status", "code", "message", "details"}}."""

    error = fields.Nested(ErrorSchema, required=True)


class RejectedRecordSchema(Schema):
    """One rejected record of a batch."""

    index = fields.Integer(required=True)
    id = fields.String(allow_none=True)
    errors = fields.Dict(required=True)


class BatchResultSchema(Schema):
    """The per-record answer of every batch write."""

    accepted = fields.Integer(required=True)
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    rejected = fields.List(fields.Nested(RejectedRecordSchema), required=True)


class PageArgsSchema(Schema):
    """?limit= and ?cursor= of every paged list."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(max=512))
