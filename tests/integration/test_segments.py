"""Scoring runs and segment lists over HTTP, on real databases and Redis."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select

from shared.extensions import db
from shared.models import TierHistory
from shared.retrain import retrain_now
from tests.factories import AS_OF, add_orders


@pytest.fixture
def client(segmentation_app):
    return segmentation_app.test_client()


@pytest.fixture
def ops(make_key):
    return make_key("segments:read", "segments:export")


def test_segment_catalogue_counts_every_customer(client, ops, shop):
    body = client.get("/v1/segments", headers=ops).json
    assert body["run_id"] == shop.run_id
    assert body["customers"] == 120
    by_dimension = {item["dimension"]: item["values"] for item in body["dimensions"]}
    assert set(by_dimension) == {"rfm_segment", "tier", "lifecycle", "community_layer"}
    for dimension in ("rfm_segment", "tier", "lifecycle"):
        assert sum(value["members"] for value in by_dimension[dimension]) == 120
    lifecycle = {value["value"]: value["members"] for value in by_dimension["lifecycle"]}
    # A quarter of the shop stopped buying 300-700 days ago: they are dormant or churned, not active.
    assert lifecycle["dormant"] + lifecycle["churned"] >= 25


def test_customer_profile(client, ops, shop):
    body = client.get("/v1/customers/c0001", headers=ops).json
    assert body["run_id"] == shop.run_id
    assert set(body["rfm"]) == {"recency_days", "frequency", "monetary", "r", "f", "m", "segment"}
    assert 1 <= body["rfm"]["r"] <= 5
    assert body["tier"]["name"] in {"regular", "silver", "gold", "black"}
    assert 0 <= body["clv"]["p_alive"] <= 1
    assert client.get("/v1/customers/nobody", headers=ops).status_code == 404


def test_member_pages_walk_the_whole_segment_from_one_run(client, ops, shop, segmentation_app):
    catalogue = client.get("/v1/segments", headers=ops).json
    tiers = {v["value"]: v["members"] for d in catalogue["dimensions"] if d["dimension"] == "tier" for v in d["values"]}
    seen = []
    response = client.get("/v1/segments/tier/silver/members?limit=7", headers=ops).json
    first_cursor = response["next_cursor"]
    seen.extend(item["customer_id"] for item in response["items"])
    # A new run publishes while the reader is mid-list: the cursor keeps reading the old run.
    add_orders([{"order_id": "late-1", "customer_id": "c0001", "placed_at": AS_OF, "skus": ["PHN-1"]}])
    second = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert second.status == "published"
    cursor = first_cursor
    while cursor:
        response = client.get(f"/v1/segments/tier/silver/members?limit=7&cursor={cursor}", headers=ops).json
        assert response["run_id"] == shop.run_id
        seen.extend(item["customer_id"] for item in response["items"])
        cursor = response["next_cursor"]
    assert len(seen) == len(set(seen)) == tiers["silver"]
    assert seen == sorted(seen)


def test_unknown_dimension_and_value_list_the_valid_ones(client, ops, shop):
    response = client.get("/v1/segments/colour/blue/members", headers=ops)
    assert response.status_code == 404
    assert "tier" in response.json["error"]["details"]["dimension"]
    response = client.get("/v1/segments/tier/platinum/members", headers=ops)
    assert response.status_code == 404
    assert response.json["error"]["details"]["valid_values"] == ["regular", "silver", "gold", "black"]


def test_malformed_and_foreign_cursors_are_400(client, ops, shop):
    response = client.get("/v1/segments/tier/silver/members?cursor=!!!not-base64", headers=ops)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_cursor"
    page = client.get("/v1/segments/tier/silver/members?limit=1", headers=ops).json
    response = client.get(f"/v1/segments/tier/regular/members?cursor={page['next_cursor']}", headers=ops)
    assert response.status_code == 400


def test_stale_cursor_after_its_run_is_pruned(client, ops, shop, segmentation_app):
    page = client.get("/v1/segments/tier/silver/members?limit=1", headers=ops).json
    for _ in range(4):
        assert retrain_now(segmentation_app.config, as_of=AS_OF).status == "published"
    response = client.get(f"/v1/segments/tier/silver/members?cursor={page['next_cursor']}", headers=ops)
    assert response.status_code == 400
    assert "no longer kept" in response.json["error"]["message"]


def test_csv_export_streams_the_whole_segment(client, ops, shop):
    catalogue = client.get("/v1/segments", headers=ops).json
    regular = next(v["members"] for d in catalogue["dimensions"] if d["dimension"] == "tier"
                   for v in d["values"] if v["value"] == "regular")
    response = client.get("/v1/segments/tier/regular/members.csv", headers=ops)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == regular
    assert all(row["tier"] == "regular" for row in rows)


def test_csv_export_needs_the_export_scope(client, make_key, shop):
    reader_only = make_key("segments:read")
    assert client.get("/v1/segments/tier/regular/members.csv", headers=reader_only).status_code == 403


def test_dropped_csv_download_logs_and_releases_its_connection(client, ops, shop, caplog):
    response = client.get("/v1/segments/tier/regular/members.csv", headers=ops, buffered=False)
    iterator = iter(response.response)
    next(iterator)
    with caplog.at_level("WARNING", logger="segrec.segments"):
        response.close()
    assert any("dropped by the client" in record.message for record in caplog.records)
    if db.dialect == "postgresql":
        assert db.engine.pool.checkedout() == 0


def test_audience_query_and_bad_filters(client, ops, shop):
    body = client.post("/v1/segments/query", json={
        "filters": {"tier": ["silver", "gold"], "lifecycle": ["active", "dormant"], "monetary": {"gte": 100}},
        "limit": 5,
    }, headers=ops).json
    assert body["count"] >= len(body["items"])
    for item in body["items"]:
        assert item["tier"] in {"silver", "gold"} and item["lifecycle"] in {"active", "dormant"}
        assert item["monetary"] >= 100
    impossible = client.post("/v1/segments/query", json={"filters": {"monetary": {"gte": 500, "lte": 100}}},
                             headers=ops)
    assert impossible.status_code == 422 and "monetary" in impossible.json["error"]["details"]
    unknown = client.post("/v1/segments/query", json={"filters": {"shoe_size": ["42"]}}, headers=ops)
    assert unknown.status_code == 422 and "shoe_size" in unknown.json["error"]["details"]


def test_transitions_between_runs(client, ops, shop, segmentation_app):
    second = retrain_now(segmentation_app.config, as_of=AS_OF.replace(year=2027))
    assert second.status == "published"
    body = client.get(f"/v1/segments/transitions?dimension=lifecycle&from_run={shop.run_id}&to_run={second.run_id}",
                      headers=ops).json
    assert sum(move["customers"] for move in body["transitions"]) == 120
    # A year of silence moves customers out of active.
    assert any(move["from"] == "active" and move["to"] != "active" for move in body["transitions"])


def test_all_refunded_customer_and_single_customer_shop(client, ops, segmentation_app):
    add_orders([{"order_id": "r1", "customer_id": "solo", "placed_at": AS_OF, "skus": ["PHN-1"],
                 "status": "refunded"}])
    run = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert run.status == "published"
    body = client.get("/v1/customers/solo", headers=ops).json
    assert body["rfm"]["frequency"] == 0 and body["rfm"]["segment"] == "Lost"
    assert body["lifecycle"] == "prospect"


def test_tier_history_records_first_assignment(shop):
    with db.session() as session:
        assert session.execute(select(func.count()).select_from(TierHistory)).scalar_one() == 120


def test_runs_endpoints(client, ops, make_key, shop):
    listing = client.get("/v1/runs", headers=ops).json["items"]
    assert listing[0]["run_id"] == shop.run_id and listing[0]["current"] is True
    detail = client.get(f"/v1/runs/{shop.run_id}", headers=ops).json
    assert [step["name"] for step in detail["steps"]] == [
        "snapshot", "fit_customer_models", "score_customers", "train_recommendations", "publish"]
    assert detail["metrics"]["recommendations"]["evaluation"]["hr_at_10"] >= 0
    # A shop this small keeps the default cart model, and the run says why.
    selection = detail["metrics"]["model_selection"]
    assert selection["chosen"] == {"name": "co_purchase", "params": {"beta": None}, "hr_at_10": None,
                                   "ndcg_at_10": None}
    assert selection["candidates"] == []
    assert selection["reason"] == (f"kept the default model: {selection['cases']} validation cases, "
                                   "fewer than the 200 a comparison needs")
    assert all(step["started_at"] and step["finished_at"] for step in detail["steps"])
    assert client.post("/v1/runs", headers=ops).status_code == 403
