"""Unit tests for the offline evaluation protocol."""

import numpy as np
import pytest
import scipy.sparse as sp

from services.recommend import evaluation
from services.recommend.evaluation import InvalidEvaluationInputError


def test_time_ordered_split_is_stable():
    train, test = evaluation.time_ordered_split(np.array([3.0, 1.0, 2.0, 1.0, 5.0]), 0.6)
    np.testing.assert_array_equal(train, [1, 3, 2])
    np.testing.assert_array_equal(test, [0, 4])
    with pytest.raises(InvalidEvaluationInputError):
        evaluation.time_ordered_split(np.zeros(4), 1.5)


def test_leave_one_out_skips_single_item_baskets_and_is_seeded():
    baskets = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]], dtype=float))
    cases = evaluation.leave_one_out_cases(baskets, [0, 1, 2], seed=42)
    assert [c.basket_index for c in cases] == [0, 2]
    again = evaluation.leave_one_out_cases(baskets, [0, 1, 2], seed=42)
    assert [c.hidden_item for c in cases] == [c.hidden_item for c in again]
    for case in cases:
        assert case.hidden_item not in case.cart_items
        # Hidden item drawn with rng.choice over the sorted distinct items.
    rng = np.random.default_rng(42)
    assert cases[0].hidden_item == rng.choice(np.array([0, 1]))


def test_metrics():
    recs = [np.array([1, 2, 3]), np.array([4, 5, 6])]
    assert evaluation.hit_rate_at_k(recs, [2, 9], k=3) == 0.5
    assert evaluation.ndcg_at_k(recs, [1, 5], k=3) == pytest.approx((1.0 + 1 / np.log2(3)) / 2)
    assert evaluation.catalogue_coverage(recs, 12, k=2) == pytest.approx(4 / 12)


def test_evaluate_against_popularity_returns_plain_dict():
    data = evaluation.synthetic_strong_pairs(n_baskets=800)
    train, _, cases = evaluation.split_and_cases(data["baskets"], data["times"])
    pop = evaluation.popularity_recommend_fn(np.asarray(train.sum(axis=0)).ravel())
    result = evaluation.evaluate_against_popularity(pop, train, cases)
    assert result["hit_rate_lift"] == 0.0
    assert set(result["model"]) >= {"hit_rate", "ndcg", "coverage", "n_cases"}


def test_recommender_returning_cart_items_is_rejected():
    data = evaluation.synthetic_strong_pairs(n_baskets=300)
    _, _, cases = evaluation.split_and_cases(data["baskets"], data["times"])
    with pytest.raises(InvalidEvaluationInputError):
        evaluation.evaluate_cart_recommender(lambda cart, k: cart, cases)


def messy_baskets(seed):
    """Random baskets with duplicate, unsorted entries in some rows (as raw order lines give)."""
    rng = np.random.default_rng(seed)
    n_baskets, n_items = 300, 40
    rows = rng.integers(0, n_baskets, 1500)
    cols = rng.integers(0, n_items, 1500)
    order = rng.permutation(rows.size)
    coo = sp.coo_matrix((np.ones(rows.size), (rows[order], cols[order])), shape=(n_baskets, n_items))
    return sp.csr_matrix((coo.data, (coo.row, coo.col)), shape=coo.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_draws_exactly_as_a_per_basket_rng_choice_loop(seed):
    """The vectorised draw must give the cases of the documented protocol, draw for draw."""
    baskets = messy_baskets(seed)
    order = np.random.default_rng(seed).permutation(baskets.shape[0])[:250]
    rng = np.random.default_rng(seed + 42)
    expected = []
    for basket in order:
        items = np.unique(baskets.indices[baskets.indptr[basket]:baskets.indptr[basket + 1]])
        if items.size >= 2:
            hidden = int(rng.choice(items))
            expected.append((int(basket), hidden, items[items != hidden].tolist()))
    cases = evaluation.leave_one_out_cases(baskets, order, seed=seed + 42)
    assert [(case.basket_index, case.hidden_item, case.cart_items.tolist()) for case in cases] == expected
    assert len(expected) > 100
