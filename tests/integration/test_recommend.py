"""Recommendations over HTTP from a trained, published model (real Redis and databases)."""

from __future__ import annotations

import pytest

from services.pipeline.retrain import retrain_now
from shared.redis_server import free_port
from tests.factories import AS_OF, add_products


@pytest.fixture
def client(recommend_app, shop):
    return recommend_app.test_client()


@pytest.fixture
def storefront(make_key):
    return make_key("recs:read")


def skus(items):
    return [item["sku"] for item in items]


def test_bought_together_finds_complements_with_reasons(client, storefront, shop):
    body = client.get("/v1/items/PHN-1/bought-together", headers=storefront).json
    assert body["fallback"] is None
    assert body["model_version"] == shop.run_id
    assert len(body["recommendation_id"]) == 32
    assert skus(body["items"])[:2] == ["CASE-1", "CHG-1"] or set(skus(body["items"])[:2]) == {"CASE-1", "CHG-1"}
    assert "bought together with Phone X in" in body["items"][0]["reason"]
    assert "PHN-1" not in skus(body["items"])


def test_unknown_sku_gets_popular_items_not_404(client, storefront):
    response = client.get("/v1/items/NOT-YET-SYNCED/bought-together", headers=storefront)
    assert response.status_code == 200
    assert response.json["fallback"] == "popular:unknown_item"
    assert skus(response.json["items"])[0] == "MILK-1"


def test_limit_out_of_range_is_422(client, storefront):
    for limit in (0, 51, "many"):
        response = client.get(f"/v1/items/PHN-1/bought-together?limit={limit}", headers=storefront)
        assert response.status_code == 422
        assert "limit" in response.json["error"]["details"]


def test_exclude_and_category_filters(client, storefront):
    body = client.get("/v1/items/PHN-1/bought-together?exclude=CASE-1&category=accessories",
                      headers=storefront).json
    assert skus(body["items"]) == ["CHG-1"]


def test_bundles_keep_margin_above_floor(client, storefront):
    body = client.get("/v1/items/TEA-1/bundles", headers=storefront).json
    assert body["bundles"], body
    for bundle in body["bundles"]:
        assert bundle["bundle_price"] < bundle["list_price"]
        assert bundle["margin"] >= 0.08
        assert "TEA-1" in skus(bundle["items"])
        assert bundle["reason"]


def test_cart_cross_sell_and_add_ons_close_the_gap(client, storefront):
    # Tea (48) + cups (36) = 84, short of the 200 threshold by 116.
    body = client.post("/v1/cart/recommendations", json={"items": [
        {"sku": "TEA-1", "quantity": 1}, {"sku": "CUP-1", "quantity": 1}]}, headers=storefront).json
    assert body["fallback"] is None
    assert "TEA-1" not in skus(body["cross_sell"]) and "CUP-1" not in skus(body["cross_sell"])
    assert "POT-1" in skus(body["cross_sell"])[:3]
    add_ons = body["add_ons"]
    assert add_ons["promotion_id"] == "P200"
    assert add_ons["cart_total"] == 84.0 and add_ons["gap"] == 116.0 and add_ons["saving"] == 30.0
    assert add_ons["suggestions"]
    for suggestion in add_ons["suggestions"]:
        assert suggestion["total_price"] >= 116.0
        assert suggestion["overshoot"] == pytest.approx(suggestion["total_price"] - 116.0)
        assert "gap" in suggestion["reason"]


def test_cart_that_already_reached_the_threshold_gets_no_add_ons(client, storefront):
    body = client.post("/v1/cart/recommendations", json={"items": [{"sku": "PHN-1", "quantity": 1}]},
                       headers=storefront).json
    assert body["add_ons"] is None
    assert body["cross_sell"]


def test_empty_cart_and_huge_cart(client, storefront):
    empty = client.post("/v1/cart/recommendations", json={"items": []}, headers=storefront).json
    assert empty["fallback"] == "popular:empty_cart"
    assert empty["add_ons"] is None and empty["cross_sell"]
    lines = [{"sku": f"UNKNOWN-{i}", "quantity": 1} for i in range(498)]
    lines += [{"sku": "PHN-1", "quantity": 1}, {"sku": "TEA-1", "quantity": 2}]
    huge = client.post("/v1/cart/recommendations", json={"items": lines}, headers=storefront)
    assert huge.status_code == 200
    too_big = client.post("/v1/cart/recommendations", json={"items": lines + lines[:1]}, headers=storefront)
    assert too_big.status_code == 422


def test_zero_priced_items_never_close_a_gap(client, storefront, recommend_app):
    add_products([("FREE-1", "Free sample", "teaware", 0.0, 0.0, False)])
    retrain_now(recommend_app.config, as_of=AS_OF)
    body = client.post("/v1/cart/recommendations", json={"items": [{"sku": "TEA-1", "quantity": 1}]},
                       headers=storefront).json
    for suggestion in body["add_ons"]["suggestions"]:
        assert "FREE-1" not in skus(suggestion["items"])


def test_for_you_known_and_never_seen_customers(client, storefront):
    known = client.get("/v1/customers/c0001/recommendations", headers=storefront).json
    assert known["items"] and known["fallback"] is None
    stranger = client.get("/v1/customers/never-seen/recommendations", headers=storefront).json
    assert stranger["fallback"] == "trending:new_customer"
    assert stranger["items"]


def test_already_bought_non_repeat_items_are_not_recommended(client, storefront):
    body = client.get("/v1/customers/c0001/recommendations?limit=50", headers=storefront).json
    cart = client.post("/v1/cart/recommendations", json={"customer_id": "c0001", "items": []},
                       headers=storefront).json
    from shared.extensions import db
    from sqlalchemy import text

    with db.engine.connect() as connection:
        bought = set(connection.execute(text(
            "SELECT DISTINCT l.sku FROM order_lines l JOIN orders o ON o.order_id = l.order_id "
            "JOIN products p ON p.sku = l.sku WHERE o.customer_id = 'c0001' AND NOT p.repeat_purchase"
        )).scalars())
    assert bought
    assert not bought & set(skus(body["items"]))
    assert not bought & set(skus(cart["cross_sell"]))


def test_popular_by_category_and_tier(client, storefront):
    body = client.get("/v1/popular?category=teaware", headers=storefront).json
    assert set(skus(body["items"])) <= {"POT-1", "CUP-1"}
    assert client.get("/v1/popular?tier=gold", headers=storefront).status_code == 200
    assert client.get("/v1/popular?tier=diamond", headers=storefront).status_code == 422


def test_redis_outage_serves_from_the_database(app_config, storefront, shop):
    from services.recommend.app import create_app
    from services.recommend.store import reader

    dead_redis = dict(app_config, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_SOCKET_TIMEOUT=0.05)
    client = create_app(dead_redis).test_client()
    try:
        reader.reset()  # forget what this process learnt from the live Redis
        body = client.get("/v1/items/PHN-1/bought-together", headers=storefront)
        assert body.status_code == 200
        assert body.json["fallback"].startswith("database")
        assert "CASE-1" in skus(body.json["items"])
        cart = client.post("/v1/cart/recommendations", json={"items": [{"sku": "TEA-1", "quantity": 1}]},
                           headers=storefront)
        assert cart.status_code == 200 and cart.json["cross_sell"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["checks"]["redis"].startswith("failed")
    finally:
        reader.reset()


def test_no_model_yet_answers_empty_with_fallback(recommend_app, storefront):
    client = recommend_app.test_client()
    body = client.get("/v1/items/PHN-1/bought-together", headers=storefront).json
    assert body["items"] == [] and body["fallback"] == "no_model"


def test_responses_match_their_documented_schemas(client, storefront):
    """The hot endpoints write JSON directly; it must still be exactly what the OpenAPI schemas say."""
    from services.recommend.schemas import BundlesSchema, CartRecommendationSchema, RecommendationSchema

    checks = [
        (RecommendationSchema(), client.get("/v1/items/PHN-1/bought-together", headers=storefront).json),
        (RecommendationSchema(), client.get("/v1/items/UNKNOWN/bought-together", headers=storefront).json),
        (BundlesSchema(), client.get("/v1/items/TEA-1/bundles", headers=storefront).json),
        (CartRecommendationSchema(), client.post("/v1/cart/recommendations", json={"items": [
            {"sku": "TEA-1", "quantity": 1}]}, headers=storefront).json),
        (RecommendationSchema(), client.get("/v1/customers/c0001/recommendations", headers=storefront).json),
        (RecommendationSchema(), client.get("/v1/popular", headers=storefront).json),
    ]
    for schema, body in checks:
        assert schema.validate(body) == {}, (type(schema).__name__, body)
        assert body["items"] or body.get("bundles")


def test_cart_category_filter_keeps_only_that_category(client, storefront):
    """A narrow filter leaves few of the merged candidates; the cart answer still fills from that category."""
    body = client.post("/v1/cart/recommendations", json={"items": [{"sku": "PHN-1", "quantity": 1}],
                                                           "category": "teaware"}, headers=storefront).json
    assert set(skus(body["cross_sell"])) == {"POT-1", "CUP-1"}
