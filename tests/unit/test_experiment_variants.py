"""Which experiment variants may be created where, tonight's best row of a family, and a staged variant's payload."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from services.recommend.candidates import ImplicitKNNCandidate, candidate_from_spec
from services.recommend.experiments import CANDIDATE_SURFACES, check_variants
from services.recommend.model_families import CANDIDATE_FAMILIES, best_rows_by_family
from services.recommend.store import NeighbourSource
from services.recommend.training import variant_payload
from shared.errors import InvalidRequest

AVAILABLE = ["co_purchase", "knn_cosine"]


def test_current_and_popular_are_valid_on_every_surface_without_any_selection():
    for surface in ("bought_together", "bundles", "cart", "for_you"):
        check_variants(surface, ["current", "popular"], [])


def test_a_scored_family_is_valid_on_the_item_neighbour_surfaces():
    assert CANDIDATE_SURFACES == ("bought_together", "cart")
    for surface in CANDIDATE_SURFACES:
        check_variants(surface, ["current", "knn_cosine"], AVAILABLE)


@pytest.mark.parametrize("surface", ["for_you", "bundles", "campaign"])
def test_a_family_elsewhere_is_422_naming_the_surfaces_that_take_it(surface):
    with pytest.raises(InvalidRequest) as raised:
        check_variants(surface, ["current", "knn_cosine"], AVAILABLE)
    assert raised.value.details == {"variants": [
        f"candidate variants (knn_cosine) serve bought_together and cart only; on {surface} use current or popular"]}


@pytest.mark.parametrize("name", ["knn_jaccard", "blend", "Current", ""])
def test_an_unknown_name_is_422_listing_the_available_families(name):
    with pytest.raises(InvalidRequest) as raised:
        check_variants("cart", ["current", name], AVAILABLE)
    assert raised.value.details == {"variants": [
        f"unknown variant {name}; candidate families in the published model selection: co_purchase, knn_cosine"]}


def test_a_family_without_a_row_tonight_is_422():
    with pytest.raises(InvalidRequest) as raised:
        check_variants("bought_together", ["current", "ease"], AVAILABLE)
    assert raised.value.details == {"variants": [
        "no ease row in the published run's model selection; candidate families available: co_purchase, knn_cosine"]}
    with pytest.raises(InvalidRequest) as raised:
        check_variants("bought_together", ["current", "ease"], [])
    assert "none (the published run compared no candidates)" in raised.value.details["variants"][0]


def test_every_family_is_a_candidate_of_that_name():
    for family in CANDIDATE_FAMILIES:
        assert candidate_from_spec(family, {}).name == family
    assert "blend" not in CANDIDATE_FAMILIES


def test_best_row_per_family_by_hit_rate_then_ndcg_then_grid_order():
    report = {"candidates": [
        {"name": "co_purchase", "params": {"beta": None}, "hr_at_10": 0.40, "ndcg_at_10": 0.20},
        {"name": "co_purchase", "params": {"beta": 0.0}, "hr_at_10": 0.42, "ndcg_at_10": 0.19},
        {"name": "knn_cosine", "params": {"beta": 0.0, "weighting": "cosine"}, "hr_at_10": 0.41, "ndcg_at_10": 0.20},
        {"name": "knn_cosine", "params": {"beta": 0.1, "weighting": "cosine"}, "hr_at_10": 0.41, "ndcg_at_10": 0.21},
        {"name": "knn_cosine", "params": {"beta": 0.3, "weighting": "cosine"}, "hr_at_10": 0.41, "ndcg_at_10": 0.21},
        {"name": "blend", "params": {"beta": 0.0}, "hr_at_10": 0.99, "ndcg_at_10": 0.9},
    ]}
    best = best_rows_by_family(report)
    assert set(best) == {"co_purchase", "knn_cosine"}
    assert best["co_purchase"]["params"] == {"beta": 0.0}
    assert best["knn_cosine"]["params"] == {"beta": 0.1, "weighting": "cosine"}
    assert best_rows_by_family(None) == {} == best_rows_by_family({"candidates": [], "chosen": {"hr_at_10": None}})


def test_a_staged_variant_reads_back_as_the_lists_and_merge_inputs_it_was_fitted_with():
    rng = np.random.default_rng(7)
    baskets = sp.csr_matrix((rng.random((60, 8)) < 0.35).astype(np.float32))
    model = ImplicitKNNCandidate(weighting="cosine", beta=0.3).fit(baskets, np.arange(60, dtype=float))
    source = NeighbourSource.from_variant_payload(variant_payload(model, "variant_nb", "knn_cosine/"))
    assert (source.kind, source.keys(["A", "B"])) == ("variant_nb", ["knn_cosine/A", "knn_cosine/B"])
    assert source.popularity_weight == pytest.approx(0.3)
    assert source.max_cart_items == model.max_cart_items
    np.testing.assert_allclose(source.informativeness, model.informativeness_, atol=1e-6)
    np.testing.assert_array_equal(source.popular_items, model.popular_items_)
    np.testing.assert_allclose(source.popular_scores, model.popular_scores_, atol=1e-6)
