"""The msgspec fast paths of the cart and feedback bodies answer exactly what the schemas load, or defer."""

import json
import random
import re
from datetime import datetime, timezone

import msgspec
import orjson
import pytest
from flask import Flask
from marshmallow import ValidationError
from webargs.core import parse_json

from services.recommend.feedback import event_payload
from services.recommend.schemas import CartRequestSchema, FeedbackBatchSchema
from shared.config import load_config
from shared.errors import BatchTooLarge
from shared.limits import id_problem
from shared.plainload import PlainId, decode_plain
from tests.unit.test_plainload import _identifier, random_event


@pytest.fixture
def app_context():
    app = Flask(__name__)
    app.config.update(load_config({"MAX_FEEDBACK_EVENTS": 25}))
    with app.app_context():
        yield


def _schema_load(schema, body: bytes):
    """What webargs and the schema answer for a JSON body (parsed as webargs parses it)."""
    try:
        return schema.load(parse_json(body))
    except (ValueError, ValidationError, BatchTooLarge):
        return None


def _text(rng: random.Random) -> str:
    alphabet = ["a", "Z", "7", "-", "/", "\x00", "\n", "\x1f", "\x7f", "\x85", "\x9f", "\xa0", "é", "\u2028",
                "\ud800", "\udfff", "😀", ".", " "]
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 5, 63, 64, 65])))


def test_a_plain_id_is_one_check_id_accepts():
    """PlainId bounds only the length: the bytes decode_plain refuses leave no other way to break the id rule."""
    rng = random.Random(5)
    decoder = msgspec.json.Decoder(PlainId)
    taken = 0
    for _ in range(20_000):
        text = _text(rng) if rng.random() < 0.7 else rng.choice(["a" * 64, "a" * 65, "", "x\n", "ok", "a/b", "é"])
        for body in (json.dumps(text).encode(), json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                     b'"' + text.encode("utf-8", "surrogatepass") + b'"'):  # raw, unescaped
            decoded = decode_plain(decoder, body)
            if decoded is not None:
                taken += 1
                assert decoded == text and id_problem(text) is None, repr(text)
    assert taken > 1000


def _encoded(rng: random.Random, value) -> bytes:
    """JSON as storefronts write it: compact, spaced, or with every non-ASCII character escaped."""
    style = rng.choice(["compact", "spaced", "ascii"])
    if style == "compact":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if style == "spaced":
        return json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def random_batch_body(rng: random.Random, clean_events: list) -> bytes:
    """A feedback body: mostly well formed batches, sometimes with one bad event, a bad shape or bad JSON."""
    size = rng.choice([1, 2, 5, 20, 20, 26])
    if rng.random() < 0.5:
        events = [random_event(rng) for _ in range(size)]
    else:  # random_event makes most batches of 20 hold one bad event
        events = [rng.choice(clean_events) for _ in range(size)]
    shape = rng.random()
    body = events if shape < 0.5 else {"events": events} if shape < 0.95 else {"events": events, "extra": 1}
    encoded = _encoded(rng, body)
    if rng.random() < 0.03:
        encoded = rng.choice([encoded[:-1], b"", b"null", b"{}", b"[]", encoded.replace(b'"', b"'", 1),
                              encoded + b"x", b"\xef\xbb\xbf" + encoded, b'[{"event_id": NaN}]'])
    return encoded


def _clean_events(rng: random.Random, count: int) -> list:
    """Events the schema accepts."""
    schema = FeedbackBatchSchema()
    events = []
    while len(events) < count:
        event = random_event(rng)
        try:
            if schema.load([event])["events"].accepted:
                events.append(event)
        except ValidationError:
            pass
    return events


def test_feedback_bodies_load_as_the_schema_loads_them(app_context):
    rng = random.Random(12)
    schema = FeedbackBatchSchema()
    clean_events = _clean_events(rng, 300)
    taken = 0
    for _ in range(2000):
        body = random_batch_body(rng, clean_events)
        plain = schema.plain_body(body)
        if plain is None:
            continue
        taken += 1
        loaded = _schema_load(schema, body)
        assert loaded is not None and not loaded["events"].rejected
        assert plain["events"].accepted == loaded["events"].accepted
        assert not plain["events"].rejected
        events = [event for _index, event in loaded["events"].accepted]
        assert plain["events"].stream_payload == orjson.dumps([event_payload(event) for event in events])
    assert taken > 400  # hundreds of clean batches took the fast path and matched


def random_cart_body(rng: random.Random) -> bytes:
    """A cart body: mostly well formed, sometimes with a value the schema coerces or refuses."""
    cart = {}
    if rng.random() < 0.95:
        cart["items"] = []
        for _ in range(rng.choice([0, 1, 5, 5, 20])):
            line = {"sku": _identifier(rng)} if rng.random() < 0.98 else {}
            if rng.random() < 0.7:
                line["quantity"] = rng.choice([1, 1, 2, 10_000, 10_001, 0, -1, "3", 2.0, True, None])
            if rng.random() < 0.02:
                line["note"] = "x"
            cart["items"].append(line)
    for name in ("customer_id", "session_id", "category"):
        if rng.random() < 0.4:
            cart[name] = rng.choice(["C0001", "", "x" * 64, "x" * 65, "x" * 128, "x" * 129, None, 5, _text(rng)])
    if rng.random() < 0.3:
        cart["limit"] = rng.choice([1, 10, 50, 0, 51, "5", 5.0, None, True])
    if rng.random() < 0.3:
        cart["exclude"] = [_identifier(rng) for _ in range(rng.choice([0, 1, 3, 201]))]
    if rng.random() < 0.03:
        cart["coupon"] = "x"
    body = _encoded(rng, cart)
    if rng.random() < 0.03:
        body = rng.choice([body[:-1], b"[]", b"null", body + b"}"])
    return body


def test_cart_bodies_load_as_the_schema_loads_them(app_context):
    rng = random.Random(3)
    schema = CartRequestSchema()
    taken = 0
    for _ in range(5000):
        body = random_cart_body(rng)
        plain = schema.plain_body(body)
        loaded = _schema_load(schema, body)
        if plain is not None:
            taken += 1
            assert plain == loaded
        elif loaded is not None:
            # Deferred but loadable: only bodies with a number the schema coerces ("3", 2.0), or with a byte
            # decode_plain leaves to the schema ("/", a backslash escape, DEL, 0xc2).
            assert re.search(rb'"3"|2\.0|5\.0|"5"|[/\\\x7f\xc2]', body), body
    assert taken > 500


def test_a_batch_over_the_limit_is_left_to_the_schema(app_context):
    event = {"event_id": "e1", "type": "add_to_cart", "sku": "s1", "session_id": "s",
             "occurred_at": datetime.now(timezone.utc).isoformat()}
    assert len(FeedbackBatchSchema().plain_body(orjson.dumps([event] * 25))["events"].accepted) == 25
    assert FeedbackBatchSchema().plain_body(orjson.dumps([event] * 26)) is None
