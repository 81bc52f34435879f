"""Every error is JSON in the envelope: hostile bodies, cursors and header sizes get 4xx, never 500 or HTML."""

from __future__ import annotations

import base64
import json

import pytest

BATCH_ENDPOINTS = [("segmentation", "/v1/customers"), ("segmentation", "/v1/orders"), ("segmentation", "/v1/events"),
                   ("recommend", "/v1/products"), ("recommend", "/v1/promotions")]


@pytest.fixture
def clients(segmentation_app, recommend_app):
    return {"segmentation": segmentation_app.test_client(), "recommend": recommend_app.test_client()}


@pytest.fixture
def writer(make_key):
    return make_key("ingest:write", "segments:read")


def assert_envelope(response, status):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    # request_id is there whenever Flask saw the request (not for a request line refused before routing).
    assert set(response.json["error"]) - {"request_id"} == {"status", "code", "message", "details"}
    assert response.json["error"]["status"] == status
    if "request_id" in response.json["error"]:
        # The id the answer's header carries, so a report can be matched with the logs.
        assert response.json["error"]["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("service, path", BATCH_ENDPOINTS)
def test_null_records_are_rejected_per_record(clients, writer, service, path):
    response = clients[service].post(path, json={"records": [None, 5, "x"]}, headers=writer)
    assert response.status_code == 200, response.json
    assert [item["index"] for item in response.json["rejected"]] == [0, 1, 2]
    assert response.json["accepted"] == 0


@pytest.mark.parametrize("service, path", BATCH_ENDPOINTS)
def test_json_nested_a_thousand_deep_is_400(clients, writer, service, path):
    body = "[" * 1000 + "]" * 1000
    response = clients[service].post(path, data=body, content_type="application/json", headers=writer)
    assert_envelope(response, 400)


def test_absurd_stock_and_lone_surrogate_ids_are_rejected_per_record(clients, writer):
    records = [{"sku": "S1", "name": "x", "price": 1.0, "stock": 1e30},
               {"sku": "\ud800", "name": "x", "price": 1.0}]
    body = json.dumps({"records": records})  # ensure_ascii: the lone surrogate travels as \\ud800
    response = clients["recommend"].post("/v1/products", data=body, content_type="application/json", headers=writer)
    assert response.status_code == 200, response.json
    assert [item["index"] for item in response.json["rejected"]] == [0, 1]
    response = clients["segmentation"].post(
        "/v1/customers", data=json.dumps({"records": [{"customer_id": "\udc00x"}]}),
        content_type="application/json", headers=writer)
    assert response.status_code == 200 and response.json["rejected"][0]["index"] == 0


@pytest.mark.parametrize("payload", [{"run": "r", "after": {"a": 1}}, {"run": {"x": 1}, "after": "c1"}, [1, 2], "x"])
def test_cursor_with_the_wrong_shape_is_400(clients, writer, payload):
    cursor = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    response = clients["segmentation"].get(f"/v1/segments/tier/regular/members?cursor={cursor}", headers=writer)
    assert response.status_code in (400, 503), response.json
    assert_envelope(response, response.status_code)


def test_long_request_line_is_414_and_large_headers_431(clients, writer):
    response = clients["recommend"].get("/v1/popular?x=" + "a" * 5000, headers=writer)
    assert_envelope(response, 414)
    response = clients["recommend"].get("/v1/popular", headers={**writer, "X-Big": "b" * 9000})
    assert_envelope(response, 431)
    many = {f"X-H{index}": "1" for index in range(150)}
    response = clients["recommend"].get("/healthz", headers=many)
    assert_envelope(response, 431)


def test_a_batch_that_keeps_colliding_is_retried_until_it_resolves(segmentation_app):
    from sqlalchemy.exc import IntegrityError

    from shared.ingest import BatchOutcome
    from shared.web import RecordBatch, run_batch

    calls = []

    def write(session, records):
        calls.append(len(records))
        if len(calls) < 4:
            raise IntegrityError("INSERT", {}, Exception("duplicate key value violates unique constraint"))
        outcome = BatchOutcome()
        return outcome

    with segmentation_app.app_context():
        result = run_batch(RecordBatch([(0, {"customer_id": "c1"})], []), "customer_id", write)
    assert calls == [1, 1, 1, 1]
    assert result == BatchOutcome().as_dict()


def test_openapi_documents_the_envelope_for_every_error_status(segmentation_app, recommend_app):
    for app in (segmentation_app, recommend_app):
        spec = app.test_client().get("/openapi.json").json
        envelope = spec["components"]["schemas"]["ErrorEnvelope"]
        assert envelope["required"] == ["error"]
        error = spec["components"]["schemas"]["Error"]
        assert {"bad_cursor", "idempotency_key_required", "rate_limited"} <= set(error["properties"]["code"]["enum"])
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                if "security" not in operation:
                    continue
                assert {"400", "401", "403", "429", "default"} <= set(operation["responses"]), (path, method)
                for status, response in operation["responses"].items():
                    if status.startswith(("4", "5")) or status == "default":
                        ref = response["$ref"].rsplit("/", 1)[1]
                        schema = spec["components"]["responses"][ref]["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (path, method, status)


@pytest.mark.parametrize("service, path, scope", [("segmentation", "/v1/campaigns/win-back", "campaigns:write"),
                                                  ("recommend", "/v1/cart/recommendations", "recs:read")])
def test_post_without_a_body_is_400(clients, make_key, service, path, scope):
    response = clients[service].post(path, headers={**make_key(scope), "Idempotency-Key": "k1"})
    assert_envelope(response, 400)
    response = clients[service].post(path, data="x=1", content_type="application/x-www-form-urlencoded",
                                     headers={**make_key(scope), "Idempotency-Key": "k2"})
    assert_envelope(response, 415)
