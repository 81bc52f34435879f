"""PlainLoader answers exactly what the schema loads for plainly valid records, and defers on everything else."""

import random
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask
from marshmallow import Schema, ValidationError, fields, validate, validates

from services.recommend.schemas import CartLineSchema, FeedbackEventSchema
from shared.config import load_config
from shared.plainload import PlainLoader


@pytest.fixture
def app_context():
    app = Flask(__name__)
    app.config.update(load_config({}))
    with app.app_context():
        yield


def _time(rng: random.Random) -> object:
    now = datetime.now(timezone.utc)
    if rng.random() < 0.8:
        return (now - timedelta(minutes=rng.randint(1, 600))).isoformat()
    choices = [
        (now - timedelta(minutes=rng.randint(1, 600))).isoformat(),
        (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S"),  # no offset: shop time
        (now - timedelta(days=5)).isoformat(),  # older than the attribution window
        (now + timedelta(days=3)).isoformat(),  # in the future
        "1999-01-01T00:00:00Z", "yesterday", 1700000000, None, "2024-02-30T10:00:00Z",
    ]
    return rng.choice(choices)


def _identifier(rng: random.Random) -> object:
    if rng.random() < 0.9:
        return rng.choice(["sku-1", "C0000001", "ok.id_2"])
    return rng.choice(["sku-1", "C0000001", "a" * 64, "a" * 65, "", "has/slash", "tab\there", 7, None, "ok.id_2"])


def random_event(rng: random.Random) -> object:
    """An event, mostly well formed, with one or two things wrong often enough."""
    kind = rng.choice(["impression", "click", "add_to_cart", "impression", "click", "purchase", None])
    event = {"event_id": _identifier(rng), "type": kind, "occurred_at": _time(rng)}
    for name in ("recommendation_id", "customer_id", "session_id", "sku"):
        if rng.random() < 0.6:
            event[name] = _identifier(rng) if rng.random() < 0.9 else None
    if rng.random() < 0.5:
        event["skus"] = [{"sku": _identifier(rng), "position": rng.choice([1, 2, 3, 1000, 1, 0, 1001, "2", True])}
                         for _ in range(rng.choice([0, 1, 3, 10]))]
    if rng.random() < 0.05:
        event["extra"] = 1
    if rng.random() < 0.05:
        del event["occurred_at"]
    return event if rng.random() > 0.02 else rng.choice([None, [], "event", 3])


def _loaded(schema: Schema, record):
    try:
        return schema.load(record)
    except ValidationError:
        return None


def test_feedback_events_load_as_the_schema_loads_them(app_context):
    rng = random.Random(12)
    schema = FeedbackEventSchema()
    loader = PlainLoader(schema)
    assert loader.supported
    taken = 0
    for _ in range(6000):
        event = random_event(rng)
        plain = loader.load(event)
        if plain is not None:
            taken += 1
            assert plain == schema.load(event)
    assert taken > 150  # hundreds of well-formed events took the fast path and matched


def test_cart_lines_load_as_the_schema_loads_them(app_context):
    rng = random.Random(3)
    schema = CartLineSchema()
    loader = PlainLoader(schema)
    taken = 0
    for _ in range(2000):
        line = {}
        if rng.random() < 0.95:
            line["sku"] = _identifier(rng)
        if rng.random() < 0.7:
            line["quantity"] = rng.choice([1, 2, 10_000, 10_001, 0, -1, "3", 2.0, True, None])
        if rng.random() < 0.05:
            line["note"] = "x"
        plain = loader.load(line)
        if plain is not None:
            taken += 1
            assert plain == schema.load(line)
        elif _loaded(schema, line) is not None:
            # Deferred but loadable: only lines the schema coerces (a quantity sent as "3" or 2.0).
            assert type(line.get("quantity")) is not int
    assert taken > 500


def test_a_schema_with_rules_it_cannot_read_is_never_taken_on():
    class WithFieldHook(Schema):
        name = fields.String()

        @validates("name")
        def check_name(self, value, **kwargs):
            raise ValidationError("no")

    class WithOtherValidator(Schema):
        name = fields.String(validate=validate.Regexp(r"^a"))

    for schema in (WithFieldHook(), WithOtherValidator()):
        loader = PlainLoader(schema)
        assert not loader.supported
        assert loader.load({"name": "abc"}) is None
