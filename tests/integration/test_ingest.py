"""Ingest over HTTP against real databases: per-record answers, idempotency, bad input."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from shared.extensions import db
from shared.models import Customer, Event, Order, OrderLine, Product


def order(order_id="o1", customer_id="c1", placed_at="2025-03-01T10:00:00Z", status="paid", lines=None):
    """A valid order record; override what a test varies."""
    return {
        "order_id": order_id,
        "customer_id": customer_id,
        "placed_at": placed_at,
        "status": status,
        "lines": lines or [{"sku": "tea-1", "quantity": 2, "unit_price": 30.0}],
    }


@pytest.fixture
def client(segmentation_app):
    return segmentation_app.test_client()


@pytest.fixture
def writer(make_key):
    return make_key("ingest:write")


def count(model) -> int:
    with db.session() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def customer(customer_id: str) -> Customer:
    with db.session() as session:
        return session.get(Customer, customer_id)


def test_orders_land_and_update_customer_aggregates(client, writer):
    batch = [
        order("o1", "c1", "2025-03-01T10:00:00Z"),
        order("o2", "c1", "2025-03-01T18:00:00Z", lines=[{"sku": "pot-1", "quantity": 1, "unit_price": 99.5}]),
        order("o3", "c1", "2025-04-02T09:00:00+08:00"),
    ]
    response = client.post("/v1/orders", json=batch, headers=writer)
    assert response.status_code == 200, response.json
    assert response.json["accepted"] == 3 and response.json["created"] == 3 and response.json["rejected"] == []
    stored = customer("c1")
    assert stored.placeholder is True
    assert stored.paid_orders == 3
    assert stored.net_spend == pytest.approx(60 + 99.5 + 60)
    assert stored.purchase_days == 3  # Shanghai days: o1 18:00 on 03-01, o2 02:00 on 03-02, o3 on 04-02
    assert stored.last_paid_at.isoformat() == "2025-04-02T01:00:00"  # converted to UTC
    assert count(OrderLine) == 3
    # Unknown skus become placeholder products, inactive until the catalogue sync sends them.
    with db.session() as session:
        placeholder = session.get(Product, "pot-1")
        assert placeholder.placeholder is True and placeholder.active is False


def test_resend_is_a_no_op_and_refund_updates_aggregates(client, writer):
    first = [order("o1"), order("o2", placed_at="2025-03-05T10:00:00Z")]
    assert client.post("/v1/orders", json=first, headers=writer).json["created"] == 2
    again = client.post("/v1/orders", json=first, headers=writer).json
    assert again == {"accepted": 2, "created": 0, "updated": 0, "unchanged": 2, "rejected": []}
    assert count(Order) == 2 and count(OrderLine) == 2

    refund = client.post("/v1/orders", json=[order("o2", placed_at="2025-03-05T10:00:00Z", status="refunded")],
                         headers=writer)
    assert refund.json["updated"] == 1
    stored = customer("c1")
    assert stored.paid_orders == 1
    assert stored.net_spend == pytest.approx(60)
    assert stored.last_paid_at.isoformat() == "2025-03-01T10:00:00"


def test_all_refunded_customer_has_empty_aggregates(client, writer):
    client.post("/v1/orders", json=[order("o1")], headers=writer)
    client.post("/v1/orders", json=[order("o1", status="refunded")], headers=writer)
    stored = customer("c1")
    assert stored.paid_orders == 0 and stored.net_spend == 0 and stored.last_paid_at is None


def test_conflicting_resend_is_rejected_alone(client, writer):
    client.post("/v1/orders", json=[order("o1")], headers=writer)
    changed = order("o1", lines=[{"sku": "tea-1", "quantity": 3, "unit_price": 30.0}])
    response = client.post("/v1/orders", json=[changed, order("o9")], headers=writer)
    assert response.status_code == 200
    assert response.json["accepted"] == 1
    assert response.json["rejected"][0]["index"] == 0
    assert response.json["rejected"][0]["id"] == "o1"
    assert "already exists" in response.json["rejected"][0]["errors"]["order_id"][0]
    assert count(Order) == 2


def test_refunded_order_cannot_become_paid_again(client, writer):
    client.post("/v1/orders", json=[order("o1", status="refunded")], headers=writer)
    response = client.post("/v1/orders", json=[order("o1", status="paid")], headers=writer)
    assert response.json["accepted"] == 0
    assert "cannot move" in response.json["rejected"][0]["errors"]["status"][0]


def test_bad_records_are_rejected_and_good_ones_land(client, writer):
    batch = [
        order("good-1"),
        order("neg-qty", lines=[{"sku": "a", "quantity": -1, "unit_price": 10}]),
        order("zero-price", lines=[{"sku": "a", "quantity": 1, "unit_price": 0}]),
        order("bad-date", placed_at="yesterday-ish"),
        order("future", placed_at="2999-01-01T00:00:00Z"),
        {"order_id": "missing-fields"},
        order("wrong-type", lines=[{"sku": "a", "quantity": "two", "unit_price": 10}]),
        order("good-1"),
        order("good-2"),
    ]
    response = client.post("/v1/orders", json=batch, headers=writer)
    assert response.status_code == 200
    body = response.json
    assert body["accepted"] == 2
    rejected = {item["index"]: item for item in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4, 5, 6, 7]
    assert "quantity" in rejected[1]["errors"]["lines"]["0"]
    assert "unit_price" in rejected[2]["errors"]["lines"]["0"]
    assert "placed_at" in rejected[3]["errors"]
    assert rejected[4]["errors"]["placed_at"] == ["is in the future"]
    assert set(rejected[5]["errors"]) == {"customer_id", "placed_at", "lines"}
    assert "quantity" in rejected[6]["errors"]["lines"]["0"]
    assert "more than once" in rejected[7]["errors"]["order_id"][0]
    assert rejected[7]["id"] == "good-1"
    assert count(Order) == 2


def test_malformed_json_gets_the_error_envelope(client, writer):
    response = client.post("/v1/orders", data="{not json", headers={**writer, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "malformed_json"
    assert response.json["error"]["status"] == 400


def test_wrong_top_level_type_is_a_validation_error(client, writer):
    response = client.post("/v1/orders", json={"records": "nope"}, headers=writer)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_error"
    assert "records" in response.json["error"]["details"]


def test_batch_over_record_limit_is_413(client, writer):
    batch = [order(f"o{i}") for i in range(51)]  # the test app allows 50
    response = client.post("/v1/orders", json=batch, headers=writer)
    assert response.status_code == 413
    assert response.json["error"]["code"] == "batch_too_large"
    assert count(Order) == 0


def test_batch_over_byte_limit_is_413(client, writer):
    payload = json.dumps([order("o1", customer_id="c" * 60)] * 40) + " " * 70_000
    response = client.post("/v1/orders", data=payload, headers={**writer, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"


def test_sql_looking_and_long_strings(client, writer):
    sneaky = "c1'); DROP TABLE customers;--"
    response = client.post(
        "/v1/customers",
        json=[
            {"customer_id": sneaky, "channel": "<script>alert(1)</script>", "attributes": {"note": "' OR 1=1 --"}},
            {"customer_id": "x" * 65},
            {"customer_id": "ok", "channel": "y" * 5000},
        ],
        headers=writer,
    )
    assert response.status_code == 200
    assert response.json["accepted"] == 1
    assert {item["index"] for item in response.json["rejected"]} == {1, 2}
    stored = customer(sneaky)
    assert stored.channel == "<script>alert(1)</script>"
    assert stored.attributes == {"note": "' OR 1=1 --"}
    assert count(Customer) == 1


def test_customer_upsert_replaces_placeholder(client, writer):
    client.post("/v1/orders", json=[order("o1", customer_id="c7")], headers=writer)
    response = client.post(
        "/v1/customers",
        json={"records": [{"customer_id": "c7", "joined_at": "2024-01-01T00:00:00Z", "community_member": True}]},
        headers=writer,
    )
    assert response.json["updated"] == 1
    stored = customer("c7")
    assert stored.placeholder is False and stored.community_member is True
    assert stored.paid_orders == 1  # aggregates survive a profile update


def test_events_are_stored_once(client, writer):
    events = [
        {"customer_id": "c1", "type": "view", "sku": "tea-1", "occurred_at": "2025-03-01T10:00:00Z"},
        {"customer_id": "c1", "type": "community_interaction", "occurred_at": "2025-03-01T10:00:00Z"},
        {"customer_id": "c1", "type": "teleport", "occurred_at": "2025-03-01T10:00:00Z"},
    ]
    first = client.post("/v1/events", json=events, headers=writer).json
    assert first["accepted"] == 2 and first["created"] == 2
    assert first["rejected"][0]["index"] == 2
    second = client.post("/v1/events", json=events, headers=writer).json
    assert second["created"] == 0 and second["unchanged"] == 2
    assert count(Event) == 2


def test_missing_unknown_revoked_and_unscoped_keys(client, make_key, database_url):
    from shared.auth import revoke_key

    assert client.post("/v1/orders", json=[order()]).status_code == 401
    bad = client.post("/v1/orders", json=[order()], headers={"Authorization": "Bearer sgr_nope"})
    assert bad.status_code == 401 and bad.json["error"]["code"] == "unauthorized"
    reader = make_key("recs:read")
    forbidden = client.post("/v1/orders", json=[order()], headers=reader)
    assert forbidden.status_code == 403 and forbidden.json["error"]["details"]["required_scope"] == "ingest:write"
    writer = make_key("ingest:write")
    assert client.post("/v1/orders", json=[order()], headers=writer).status_code == 200
    raw_key = writer["Authorization"].split()[1]
    with db.session() as session:
        assert revoke_key(session, prefix=raw_key[:12]) == 1
    assert client.post("/v1/orders", json=[order("o2")], headers=writer).status_code == 401
    assert count(Order) == 1


def test_products_and_promotions(recommend_app, make_key):
    client = recommend_app.test_client()
    writer = make_key("ingest:write")
    products = [
        {"sku": "tea-1", "name": "Oolong", "category": "tea", "price": 30, "cost": 12, "stock": 5},
        {"sku": "free-1", "name": "Sample", "category": "tea", "price": 0},
        {"sku": "bad", "name": "Negative", "price": -1},
    ]
    response = client.post("/v1/products", json=products, headers=writer)
    assert response.json["accepted"] == 2 and response.json["rejected"][0]["index"] == 2
    promotions = [
        {"promotion_id": "p200", "kind": "spend_threshold", "threshold": 200, "discount": 30,
         "starts_at": "2025-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"},
        {"promotion_id": "backwards", "kind": "spend_threshold", "threshold": 100, "discount": 10,
         "starts_at": "2025-02-01T00:00:00Z", "ends_at": "2025-01-01T00:00:00Z"},
    ]
    response = client.post("/v1/promotions", json=promotions, headers=writer)
    assert response.json["accepted"] == 1
    assert "ends_at" in response.json["rejected"][0]["errors"]


def test_every_endpoint_checks_a_scope(segmentation_app, recommend_app):
    from shared.web import endpoints_without_scope

    assert endpoints_without_scope(segmentation_app) == []
    assert endpoints_without_scope(recommend_app) == []


def test_openapi_document_lists_endpoints(client):
    spec = client.get("/openapi.json").json
    assert "/v1/orders" in spec["paths"]
    assert spec["paths"]["/v1/orders"]["post"]["security"] == [{"bearerAuth": []}]
    assert client.get("/healthz").json["status"] == "ok"
    assert client.get("/metrics").status_code == 200
