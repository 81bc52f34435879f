"""Experiments over HTTP: creation rules, sticky assignment in serving, and the report's statistics."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert

from services.recommend.experiments import assign_variant
from services.recommend.feedback import SERVED_STREAM, served_records, stream_key
from shared.extensions import db, redis_store
from shared.models import FeedbackEvent, ServedRecommendation
from shared.statistics import newcombe_interval, sample_size_per_group, wilson_interval
from tests.factories import add_orders

VARIANTS = [{"name": "current", "weight": 0.5}, {"name": "popular", "weight": 0.5}]


@pytest.fixture
def client(recommend_app, shop):
    return recommend_app.test_client()


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def create(client, admin, surface="for_you", variants=VARIANTS, **extra):
    body = {"name": "popular vs model", "surface": surface, "variants": variants,
            "starts_at": (now() - timedelta(hours=2)).isoformat() + "Z",
            "ends_at": (now() + timedelta(days=7)).isoformat() + "Z", **extra}
    return client.post("/v1/experiments", headers=admin, json=body)


def test_one_running_experiment_per_surface_and_only_servable_variants(client, admin, make_key):
    response = create(client, admin)
    assert response.status_code == 201, response.json
    assert response.json["status"] == "running" and response.json["control"] == "current"
    again = create(client, admin)
    assert again.status_code == 409
    assert again.json["error"]["details"]["experiment_id"] == response.json["experiment_id"]
    assert create(client, admin, surface="cart").status_code == 201
    unknown = create(client, admin, surface="bundles", variants=[{"name": "current", "weight": 1},
                                                                  {"name": "candidate-x", "weight": 1}])
    assert unknown.status_code == 422
    assert create(client, make_key("recs:read"), surface="bought_together").status_code == 403


def test_serving_answers_with_the_sticky_variant_and_logs_it(client, admin, make_key):
    experiment = create(client, admin).json
    storefront = make_key("recs:read")
    popular = client.get("/v1/popular", headers=storefront).json["items"]
    served = {}
    for _round in range(2):
        for index in range(12):
            answer = client.get(f"/v1/customers/x-{index}/recommendations", headers=storefront).json
            served.setdefault(f"x-{index}", []).append(answer)
    entries = redis_store.client.xrange(stream_key(SERVED_STREAM))
    logged = [record for _entry_id, fields in entries for record in served_records(fields)]
    assert len(logged) == 24
    for record in logged:
        expected = assign_variant(experiment["experiment_id"], VARIANTS, record["customer_id"])
        assert (record["surface"], record["variant"], record["experiment_id"]) == (
            "for_you", expected, experiment["experiment_id"])
    variants = {record["customer_id"]: record["variant"] for record in logged}
    assert set(variants.values()) == {"current", "popular"}
    for customer, answers in served.items():
        if variants[customer] == "popular":
            assert [item["sku"] for item in answers[0]["items"]] == [item["sku"] for item in popular]
        assert [item["sku"] for item in answers[0]["items"]] == [item["sku"] for item in answers[1]["items"]]
    # Without a customer or session id nobody is assigned: the answer is the current model's.
    anonymous = client.get("/v1/items/PHN-1/bought-together", headers=storefront)
    assert anonymous.status_code == 200


def seed_variant(experiment_id: str, variant: str, impressions: int, clicked: int, at: datetime) -> list[str]:
    """Served answers with one impression each, the first `clicked` of them clicked on CASE-1."""
    served, events = [], []
    for index in range(impressions):
        recommendation_id = f"{variant}-{index}"
        customer = f"{variant}-c{index}"
        served.append({"recommendation_id": recommendation_id, "surface": "for_you", "model_version": "m1",
                       "variant": variant, "experiment_id": experiment_id, "customer_id": customer,
                       "session_id": None, "served_at": at})
        events.append({"event_id": f"i-{recommendation_id}", "type": "impression",
                       "recommendation_id": recommendation_id, "customer_id": customer, "session_id": None,
                       "sku": None, "skus": [{"sku": "CASE-1", "position": 1}], "occurred_at": at, "received_at": at})
        if index < clicked:
            events.append({"event_id": f"c-{recommendation_id}", "type": "click",
                           "recommendation_id": recommendation_id, "customer_id": customer, "session_id": None,
                           "sku": "CASE-1", "skus": None, "occurred_at": at + timedelta(minutes=1),
                           "received_at": at})
    with db.session() as session:
        session.execute(insert(ServedRecommendation), served)
        session.execute(insert(FeedbackEvent), events)
    return [f"{variant}-c{index}" for index in range(clicked)]


def test_report_shows_uplift_with_its_interval_and_the_sample_still_needed(client, admin, make_key):
    experiment = create(client, admin, min_detectable_effect=0.01).json
    shown_at = now() - timedelta(hours=1)
    seed_variant(experiment["experiment_id"], "current", 1000, 50, shown_at)
    buyers = seed_variant(experiment["experiment_id"], "popular", 1000, 80, shown_at)
    # Ten of the popular variant's clickers buy the case (29.00) half an hour later.
    add_orders([{"order_id": f"xo-{index}", "customer_id": buyers[index], "placed_at": shown_at + timedelta(minutes=30),
                 "skus": ["CASE-1"]} for index in range(10)])

    report = client.get(f"/v1/experiments/{experiment['experiment_id']}/report",
                        headers=make_key("analytics:read")).json
    by_name = {variant["variant"]: variant for variant in report["variants"]}
    assert (by_name["current"]["impressions"], by_name["current"]["clicked_impressions"]) == (1000, 50)
    assert (by_name["popular"]["impressions"], by_name["popular"]["clicked_impressions"]) == (1000, 80)
    low, high = wilson_interval(80, 1000)
    assert by_name["popular"]["ctr"] == {"value": 0.08, "ci95_low": round(low, 6), "ci95_high": round(high, 6)}
    assert by_name["popular"]["attributed_orders"] == 10
    assert by_name["popular"]["attributed_revenue"] == 290.0
    assert by_name["popular"]["revenue_per_impression"]["value"] == 0.29
    assert by_name["current"]["revenue_per_impression"]["value"] == 0.0

    (comparison,) = report["comparisons"]
    low, high = newcombe_interval(80, 1000, 50, 1000)
    assert comparison["variant"] == "popular" and comparison["control"] == "current"
    assert comparison["ctr_uplift"] == pytest.approx(0.03)
    assert (comparison["ci95_low"], comparison["ci95_high"]) == (pytest.approx(low), pytest.approx(high))
    assert comparison["ci95_low"] > 0
    assert comparison["revenue_per_impression_uplift"] == 0.29
    assert comparison["impressions_needed_per_variant"] == sample_size_per_group(0.05, 0.01) == 8158
    assert comparison["impressions_still_needed"] == 7158
    assert report["verdict"] == "variant_wins"
    assert report["conclusion"].startswith("popular gets more clicks than current: +3.00% CTR (95 % CI")


def test_report_of_an_unknown_experiment_is_404(client, make_key):
    assert client.get("/v1/experiments/x-none/report", headers=make_key("analytics:read")).status_code == 404


def test_a_candidate_variant_needs_a_row_of_its_family_in_the_published_selection(client, admin):
    # The factory shop is too small for the default selection: the published run compared no candidates.
    response = create(client, admin, surface="bought_together",
                      variants=[{"name": "current", "weight": 1}, {"name": "knn_cosine", "weight": 1}])
    assert response.status_code == 422
    assert response.json["error"]["details"]["variants"] == [
        "no knn_cosine row in the published run's model selection; candidate families available: "
        "none (the published run compared no candidates)"]
