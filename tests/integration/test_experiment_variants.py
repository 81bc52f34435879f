"""Candidate models of the nightly selection as experiment variants: created, staged by a retrain, served."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from services.pipeline.retrain import retrain_now
from services.recommend.candidates import candidate_from_spec
from services.recommend.experiments import assign_variant
from services.recommend.feedback import SERVED_STREAM, served_records, stream_key
from services.recommend.model_families import best_rows_by_family
from services.recommend.lines import TrainingData, read_line_shard
from services.recommend.training import load_catalogue
from services.recommend.views.recommendations import recommender
from shared import runs
from shared.extensions import db, redis_store
from shared.limits import TimeRules
from shared.redis_server import free_port
from tests.factories import AS_OF

VARIANTS = [{"name": "current", "weight": 1}, {"name": "knn_cosine", "weight": 1}]


@pytest.fixture
def app_config(app_config):
    # The factory shop has too few validation cases for the default minimum: lower it so the nightly
    # selection scores a row of every family, as it does on a real shop.
    return {**app_config, "SELECTION_MIN_CASES": 20}


@pytest.fixture
def client(recommend_app, shop):
    return recommend_app.test_client()


def create(client, admin, surface="bought_together", variants=VARIANTS):
    moment = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    body = {"name": "cosine vs chosen", "surface": surface, "variants": variants,
            "starts_at": (moment - timedelta(hours=1)).isoformat() + "Z",
            "ends_at": (moment + timedelta(days=7)).isoformat() + "Z"}
    return client.post("/v1/experiments", headers=admin, json=body)


def unit_per_variant(experiment_id: str, variants=VARIANTS) -> dict[str, str]:
    """A customer id assigned to each variant (assignment is a pure hash, so the test can pick them)."""
    units: dict[str, str] = {}
    for index in range(200):
        units.setdefault(assign_variant(experiment_id, variants, f"v-{index}"), f"v-{index}")
    assert set(units) == {variant["name"] for variant in variants}
    return units


def skus(answer: dict, field: str = "items") -> list[str]:
    return [item["sku"] for item in answer[field]]


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("segrec_recommendation_fallbacks_total", {"fallback": reason}) or 0.0


def fitted_on_the_shop(family: str, params: dict):
    """A candidate family fitted directly on the same whole-window baskets training uses."""
    catalogue = load_catalogue(db.engine)
    skus = pd.Index(catalogue["sku"])
    data = TrainingData([read_line_shard(AS_OF, TimeRules().min_date, skus, tier_run="")], len(skus))
    model = candidate_from_spec(family, params).fit(data.baskets, data.basket_times)
    return model, catalogue["sku"].tolist()


def cosine_fitted_on_the_shop(params: dict):
    """The kNN-cosine candidate fitted directly on the same whole-window baskets training uses."""
    return fitted_on_the_shop("knn_cosine", params)


def test_a_candidate_variant_serves_its_family_lists_once_a_retrain_staged_them(
        client, admin, storefront, segmentation_app, shop):
    selection = runs.get_run(shop.run_id).metrics["model_selection"]
    rows = best_rows_by_family(selection)
    assert set(rows) == {"co_purchase", "conditional_probability", "knn_cosine", "knn_bm25", "naive_bayes", "softmax",
                         "ease"}
    assert selection["chosen"]["name"] != "knn_cosine"
    experiment = create(client, admin).json
    units = unit_per_variant(experiment["experiment_id"])

    def bought_together(variant: str) -> dict:
        response = client.get(f"/v1/items/PHN-1/bought-together?customer_id={units[variant]}", headers=storefront)
        assert response.status_code == 200
        return response.json

    # Created after the published run: nothing staged yet, so the chosen model's lists answer, counted as a fallback.
    not_staged_before = fallbacks("variant_not_staged")
    current = bought_together("current")
    early = bought_together("knn_cosine")
    assert current["fallback"] is None
    assert early["fallback"] == "variant_not_staged" and skus(early) == skus(current)
    assert fallbacks("variant_not_staged") == not_staged_before + 1

    run = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert run.status == "published", run.reason
    staged = run.metrics["model_selection"]["variants_staged"]
    assert set(staged) == {"knn_cosine"}
    assert staged["knn_cosine"]["params"] == best_rows_by_family(run.metrics["model_selection"])["knn_cosine"]["params"]
    assert staged["knn_cosine"]["lists"] == "own" and staged["knn_cosine"]["seconds"] >= 0
    recommender.reset()  # the web worker re-reads the version pointer once a second; don't wait for it

    model, all_skus = cosine_fitted_on_the_shop(staged["knn_cosine"]["params"])
    neighbours, _scores = model.neighbours(all_skus.index("PHN-1"), 10)
    expected = [all_skus[item] for item in neighbours]
    answer = bought_together("knn_cosine")
    assert answer["fallback"] is None and answer["model_version"] == run.run_id
    assert skus(answer) == expected
    # The chosen model still serves the control, and its list is not the cosine one.
    assert skus(bought_together("current")) == skus(current) != expected
    assert fallbacks("variant_not_staged") == not_staged_before + 1

    entries = redis_store.client.xrange(stream_key(SERVED_STREAM))
    logged = [record for _id, fields in entries for record in served_records(fields)]
    by_answer = {record["recommendation_id"]: record for record in logged}
    record = by_answer[answer["recommendation_id"]]
    assert (record["variant"], record["experiment_id"], record["surface"]) == (
        "knn_cosine", experiment["experiment_id"], "bought_together")
    assert by_answer[early["recommendation_id"]]["variant"] == "knn_cosine"


def test_a_candidate_variant_ranks_the_cart_with_its_own_lists_and_popularity(
        client, admin, storefront, segmentation_app, shop):
    experiment = create(client, admin, surface="cart").json
    units = unit_per_variant(experiment["experiment_id"])
    run = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert run.status == "published", run.reason
    recommender.reset()
    params = run.metrics["model_selection"]["variants_staged"]["knn_cosine"]["params"]
    model, all_skus = cosine_fitted_on_the_shop(params)

    def cart(variant: str) -> dict:
        body = {"customer_id": units[variant], "items": [{"sku": "TEA-1", "quantity": 1}], "limit": 5}
        response = client.post("/v1/cart/recommendations", json=body, headers=storefront)
        assert response.status_code == 200
        return response.json

    scores = model.score_cart([all_skus.index("TEA-1")])
    scores[all_skus.index("TEA-1")] = -1.0
    expected = [all_skus[item] for item in sorted(range(len(all_skus)), key=lambda item: (-scores[item], item))][:5]
    answer = cart("knn_cosine")
    assert answer["fallback"] is None
    assert skus(answer, "cross_sell") == expected
    assert skus(cart("current"), "cross_sell") != expected


def test_softmax_lists_keep_their_negative_weights_for_carts_and_bought_together_shows_the_positive_ones(
        client, admin, storefront, segmentation_app, shop):
    variants = [{"name": "current", "weight": 1}, {"name": "softmax", "weight": 1}]
    units = unit_per_variant(create(client, admin, variants=variants).json["experiment_id"], variants)
    cart_units = unit_per_variant(create(client, admin, surface="cart", variants=variants).json["experiment_id"],
                                  variants)
    run = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert run.status == "published", run.reason
    recommender.reset()
    model, all_skus = fitted_on_the_shop("softmax", run.metrics["model_selection"]["variants_staged"]["softmax"]["params"])

    anchor = all_skus.index("PHN-1")
    items, scores = model.neighbor_list(anchor)
    assert (scores < 0).any() and (scores > 0).any()
    answer = client.get(f"/v1/items/PHN-1/bought-together?customer_id={units['softmax']}&limit=50",
                        headers=storefront).json
    assert answer["fallback"] is None
    assert skus(answer) == [all_skus[item] for item, score in zip(items, scores) if score > 0]

    # The cart sums every stored weight, the negative ones included, exactly as the fitted model scores it.
    body = {"customer_id": cart_units["softmax"], "items": [{"sku": "PHN-1", "quantity": 1}], "limit": 8}
    cart = client.post("/v1/cart/recommendations", json=body, headers=storefront).json
    cart_scores = model.score_cart([anchor])
    cart_scores[anchor] = -np.inf
    expected = [all_skus[item] for item in sorted(range(len(all_skus)), key=lambda item: (-cart_scores[item], item))]
    assert cart["fallback"] is None and skus(cart, "cross_sell") == expected[:8]


def test_candidate_variants_only_where_they_can_serve_and_only_families_the_selection_scored(client, admin):
    for_you = create(client, admin, surface="for_you")
    assert for_you.status_code == 422
    assert for_you.json["error"]["details"]["variants"] == [
        "candidate variants (knn_cosine) serve bought_together and cart only; on for_you use current or popular"]
    bundles = create(client, admin, surface="bundles")
    assert bundles.status_code == 422
    unknown = create(client, admin, variants=[{"name": "current", "weight": 1}, {"name": "knn_jaccard", "weight": 1}])
    assert unknown.status_code == 422
    assert unknown.json["error"]["details"]["variants"] == [
        "unknown variant knn_jaccard; candidate families in the published model selection: "
        "co_purchase, conditional_probability, ease, knn_bm25, knn_cosine, naive_bayes, softmax"]
    blend = create(client, admin, variants=[{"name": "current", "weight": 1}, {"name": "blend", "weight": 1}])
    assert blend.status_code == 422
    # current and popular stay valid on every surface.
    assert create(client, admin, surface="for_you", variants=[{"name": "current", "weight": 1},
                                                              {"name": "popular", "weight": 1}]).status_code == 201


def test_a_staged_variant_is_served_from_the_database_copy_when_redis_is_down(
        client, admin, storefront, segmentation_app, app_config, shop):
    from services.recommend.app import create_app
    from services.recommend.views.recommendations import experiments

    experiment = create(client, admin).json
    units = unit_per_variant(experiment["experiment_id"])
    run = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert run.status == "published", run.reason
    recommender.reset()
    url = f"/v1/items/PHN-1/bought-together?customer_id={units['knn_cosine']}"
    live = client.get(url, headers=storefront).json
    assert live["fallback"] is None

    dead_redis = dict(app_config, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_SOCKET_TIMEOUT=0.05)
    outage = create_app(dead_redis).test_client()
    try:
        recommender.reset()  # forget the lists this process read from the live Redis
        body = outage.get(url, headers=storefront).json
        assert body["fallback"].startswith("database")
        assert "variant_not_staged" not in body["fallback"]
        assert skus(body) == skus(live)
    finally:
        recommender.reset()
        experiments.reset()
