"""The query-string fast path answers exactly what webargs parses for plainly valid queries, and defers otherwise."""

import random
from urllib.parse import urlencode

import pytest
from flask import Flask, request
from marshmallow import Schema, fields, validate
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from services.recommend.schemas import BundleArgsSchema, PopularArgsSchema, RecommendationArgsSchema
from shared.plainload import PlainQueryLoader
from shared.web import PlainQueryParser

IDS = ["sku-1", "C0000001", "ok.id_2", "a" * 64, "ünï-çødé", "x"]
ODD_IDS = ["", "a" * 65, "has/slash", "tab\there", "nul\x00", "comma,inside", "\ud800"]
INTEGERS = ["1", "3", "10", "50"]
ODD_INTEGERS = ["0", "51", "11", "-1", "05", "+5", " 5", "5 ", "5_0", "\u0663", "1.0", "abc", "", "9" * 30, "1e2"]
CATEGORIES = ["phones", "", "c" * 128, "Home & Garden"]
ODD_CATEGORIES = ["c" * 129]
TIERS = ["regular", "silver", "gold", "black"]
ODD_TIERS = ["platinum", "", "Gold"]


def _exclude(rng: random.Random) -> str:
    if rng.random() < 0.85:
        return ",".join(rng.choice(IDS) for _ in range(rng.choice([0, 1, 2, 5, 200])))
    return rng.choice([",".join(["a"] * 201), "a,,b", ",", "a,", "a/b,c", "ok," + "a" * 65, "a,\tb", "a,b,c" * 100])


def _value(rng: random.Random, name: str) -> str:
    odd = rng.random() < 0.12
    if name in ("customer_id", "session_id"):
        return rng.choice(ODD_IDS if odd else IDS)
    if name == "limit":
        return rng.choice(ODD_INTEGERS if odd else INTEGERS)
    if name == "category":
        return rng.choice(ODD_CATEGORIES if odd else CATEGORIES)
    if name == "tier":
        return rng.choice(ODD_TIERS if odd else TIERS)
    return _exclude(rng)


def random_query(rng: random.Random, names) -> str:
    """A query string: some of the schema's parameters, sometimes repeated, sometimes unknown ones."""
    pairs = [(name, _value(rng, name)) for name in names if rng.random() < 0.5]
    if pairs and rng.random() < 0.08:
        pairs.append((pairs[0][0], _value(rng, pairs[0][0])))  # a repeated parameter: webargs reads the first
    if rng.random() < 0.1:
        pairs.append((rng.choice(["foo", "Limit", "exclude[]", ""]), "1"))
    rng.shuffle(pairs)
    query = urlencode(pairs, errors="surrogatepass")
    return query if rng.random() > 0.02 else rng.choice(["limit=%ff", "limit", "&&", "exclude=%2C", "limit=5&limit"])


def webargs_answer(parser: FlaskParser, schema: Schema):
    """What a parser answers in the current request: ('ok', args) or ('error', status, messages)."""
    try:
        return ("ok", parser.parse(schema, location="query"))
    except HTTPException as error:
        return ("error", error.code, error.data["messages"])


@pytest.mark.parametrize("schema_class", [RecommendationArgsSchema, PopularArgsSchema, BundleArgsSchema])
def test_queries_load_as_webargs_parses_them(schema_class):
    app = Flask(__name__)
    schema = schema_class()
    loader = PlainQueryLoader(schema)
    assert loader.supported
    names = list(schema.fields) + ["exclude"] * (schema_class is BundleArgsSchema)
    rng = random.Random(schema_class.__name__)
    webargs, plain_parser = FlaskParser(), PlainQueryParser()
    taken = errors = 0
    for _ in range(4000):
        query = random_query(rng, names)
        with app.test_request_context(f"/?{query}"):
            expected = webargs_answer(webargs, schema)
            plain = loader.load(request.args)
            if plain is not None:
                taken += 1
                assert expected == ("ok", plain), query
            errors += expected[0] == "error"
            # Wired as the blueprint's parser: the same answers, errors and messages included.
            assert webargs_answer(plain_parser, schema) == expected, query
    assert taken > 1000 and errors > 300  # both paths were exercised many times


def test_what_the_loader_does_not_read_always_defers():
    class Strict(Schema):
        limit = fields.Integer(strict=True)

    class OtherValidator(Schema):
        name = fields.String(validate=validate.Regexp("^a"))

    class Floats(Schema):
        price = fields.Float()

    for schema in (Strict(), OtherValidator(), Floats()):
        assert not PlainQueryLoader(schema).supported
    app = Flask(__name__)
    with app.test_request_context("/?limit=3"):
        for schema in (Strict(), OtherValidator(), Floats()):
            assert PlainQueryLoader(schema).load(request.args) is None
            assert webargs_answer(PlainQueryParser(), schema) == webargs_answer(FlaskParser(), schema)


def test_other_locations_and_unknown_settings_go_through_webargs():
    app = Flask(__name__)
    schema = RecommendationArgsSchema()
    with app.test_request_context("/?limit=5&foo=1"):
        # RAISE for unknown parameters: the fast path (which excludes them) must not answer.
        with pytest.raises(HTTPException) as raised:
            PlainQueryParser().parse(schema, location="query", unknown="raise")
        assert raised.value.data["messages"] == {"query": {"foo": ["Unknown field."]}}
        assert PlainQueryParser(unknown="raise")._unknown_for("query", "_default") == "raise"
        assert PlainQueryParser().parse(schema, location="query")["limit"] == 5
