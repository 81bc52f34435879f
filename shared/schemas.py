"""Marshmallow pieces both services' schemas.py build on: batch answers, errors, pages, dates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import current_app, has_app_context
from marshmallow import Schema, ValidationError, fields, validate

DEFAULT_FUTURE_SKEW_SECONDS = 86_400


def not_in_future(value: datetime) -> None:
    """Reject timestamps beyond now plus the configured clock skew (default one day)."""
    skew = DEFAULT_FUTURE_SKEW_SECONDS
    if has_app_context():
        skew = current_app.config.get("MAX_FUTURE_SKEW_SECONDS", skew)
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if aware > datetime.now(timezone.utc) + timedelta(seconds=skew):
        raise ValidationError("is in the future")


def Identifier(**kwargs) -> fields.String:
    """An id as clients send it: 1 to 64 characters, stored verbatim."""
    return fields.String(validate=validate.Length(min=1, max=64), **kwargs)


def PastDateTime(**kwargs) -> fields.DateTime:
    """An ISO 8601 timestamp that is not in the future."""
    return fields.DateTime(validate=not_in_future, **kwargs)


def Money(**kwargs) -> fields.Float:
    """A finite amount of money."""
    return fields.Float(allow_nan=False, **kwargs)


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
