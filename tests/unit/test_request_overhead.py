"""The per-request shortcuts of shared/web.py answer exactly what the slower code they replace answered."""

from __future__ import annotations

import random
import re
import string

import numpy as np
import pytest
from flask.views import MethodView
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from shared.ids import random_id
from shared.web import SegrecFlask, header_fields


def werkzeug_header_fields(environ: dict) -> tuple[int, int]:
    """The count and longest `Name: value` line as the hook computed them before (through EnvironHeaders)."""
    headers = list(EnvironHeaders(environ).items())
    return len(headers), max((len(name) + len(value) + 2 for name, value in headers), default=0)


def random_environ(rng: random.Random) -> dict:
    headers = {}
    for _ in range(rng.randint(0, 12)):
        name = "X-" + "".join(rng.choices(string.ascii_letters + "-", k=rng.randint(1, 20)))
        headers[name] = "".join(rng.choices(string.printable.strip(), k=rng.randint(0, 300)))
    body = rng.choice([None, b"", b'{"a": 1}'])
    content_type = rng.choice([None, "application/json", ""])
    environ = EnvironBuilder(path="/x", method="POST" if body is not None else "GET", headers=headers, data=body,
                             content_type=content_type).get_environ()
    if rng.random() < 0.3:
        environ["HTTP_CONTENT_TYPE"] = "text/plain"  # a client's duplicate, which werkzeug does not report
    return environ


def test_header_fields_counts_and_measures_as_werkzeug_does():
    rng = random.Random(7)
    for _ in range(300):
        environ = random_environ(rng)
        assert header_fields(environ) == werkzeug_header_fields(environ)


def test_header_fields_skips_an_empty_content_type_and_counts_a_set_one():
    environ = EnvironBuilder(path="/x", headers={"Authorization": "Bearer k"}).get_environ()
    environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"] = "", ""
    assert header_fields(environ)[0] == werkzeug_header_fields(environ)[0]
    environ["CONTENT_TYPE"] = "application/json"
    assert header_fields(environ) == werkzeug_header_fields(environ)
    assert header_fields(environ)[0] == werkzeug_header_fields(environ)[0] >= 2


def test_random_ids_are_32_hex_digits_and_distinct():
    ids = {random_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def test_segrec_flask_returns_sync_functions_unchanged_and_remembers_them_once():
    app = SegrecFlask(__name__)

    def view():
        return "ok"

    assert app.ensure_sync(view) is view
    assert app.ensure_sync(view) is view
    assert list(app._coroutine_functions.values()) == [False]


def test_segrec_flask_remembers_a_handler_bound_per_request_by_its_function():
    app = SegrecFlask(__name__)

    class Items(MethodView):
        def get(self):
            return "items"

    app.add_url_rule("/items", view_func=Items.as_view("items"))
    client = app.test_client()
    for _ in range(50):
        assert client.get("/items").get_data(as_text=True) == "items"
    # One entry for the class's function, not one per bound method made by each request.
    assert Items.get in app._coroutine_functions
    assert len(app._coroutine_functions) <= 3


def test_segrec_flask_still_hands_coroutine_functions_to_async_to_sync():
    app = SegrecFlask(__name__)
    wrapped = []
    app.async_to_sync = lambda func: wrapped.append(func) or "wrapped"

    async def view():
        return "ok"

    assert app.ensure_sync(view) == "wrapped"
    assert app.ensure_sync(view) == "wrapped"  # the memo answers "coroutine" the second time too
    assert wrapped == [view, view]


def test_segrec_flask_memo_is_bounded(monkeypatch):
    app = SegrecFlask(__name__)
    monkeypatch.setattr(SegrecFlask, "SYNC_MEMO_LIMIT", 10)
    def closure():
        return lambda: None

    functions = [closure() for _ in range(25)]  # distinct function objects, as closures made per request
    for function in functions:
        assert app.ensure_sync(function) is function
    assert len(app._coroutine_functions) <= 10


@pytest.mark.parametrize("offered, kept", [("abc-123", True), ("", False), ("bad id with spaces", False),
                                           ("x" * 129, False)])
def test_request_id_is_kept_when_acceptable_and_made_otherwise(offered, kept):
    from services.recommend.app import create_app

    app = create_app({"TESTING": True, "DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:6379/15"})
    headers = {"X-Request-ID": offered} if offered else {}
    answered = app.test_client().get("/healthz", headers=headers).headers["X-Request-ID"]
    if kept:
        assert answered == offered
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", answered)


def test_an_answers_items_read_from_the_item_heads_as_from_the_catalogue_arrays():
    import json

    from services.recommend.serving import _item
    from services.recommend.store import Catalogue

    payload = {
        "skus": ["A", "B", "C"], "names": ["Apple", "Bread", "Cheese"], "categories": ["fruit", "", "dairy"],
        "prices": [1.5, 2, 0.1], "costs": [None, 1.0, None], "active": [True] * 3, "in_stock": [True] * 3,
        "repeat_purchase": [False] * 3, "abc": ["A"] * 3, "orders": [5, 4, 3], "informativeness": [1.0] * 3,
        "popularity_weight": 1.0, "max_cart_items": 20, "popular": [[0, 1.0]], "trending": [], "tier_popular": {},
    }
    catalogue = Catalogue.from_payload("v1", json.dumps(payload))
    for position in range(3):
        answered = _item(catalogue, position, np.float32(0.1234567891), "because")
        assert answered == {
            "sku": catalogue.skus[position], "name": catalogue.names[position],
            "category": catalogue.categories[position] or None, "price": float(catalogue.prices[position]),
            "score": round(float(np.float32(0.1234567891)), 6), "reason": "because",
        }
        assert type(answered["price"]) is float
    assert _item(catalogue, 1, 1.0, "x")["category"] is None  # an empty category is shown as null
