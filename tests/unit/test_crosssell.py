"""Unit tests for cart cross-sell: serving == offline scoring, and the model beats popularity on other shapes."""

import time

import numpy as np
import pytest

from services.recommend import evaluation
from services.recommend.cooccurrence import CartScoring, CoPurchaseModel
from services.recommend.crosssell import (
    InvalidCartError,
    cart_neighbor_lists,
    cart_reason,
    merge_neighbor_lists,
    recommend_for_cart,
)


@pytest.fixture(scope="module")
def strong_pairs():
    return evaluation.synthetic_strong_pairs(n_baskets=3000, random_state=3)


def test_merge_sums_weighted_scores_and_excludes():
    lists = [(np.array([1, 2, 3]), np.array([0.5, 0.4, 0.1]), 1.0), (np.array([2, 4]), np.array([0.3, 0.2]), 2.0)]
    items, scores = merge_neighbor_lists(lists, n=3, exclude=np.array([3]))
    np.testing.assert_array_equal(items, [2, 1, 4])
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.4])


def test_merge_ties_break_on_lower_index():
    items, _ = merge_neighbor_lists([(np.array([5, 3, 9]), np.ones(3), 1.0)], n=3)
    np.testing.assert_array_equal(items, [3, 5, 9])


def test_recommendations_never_in_cart_or_excluded(strong_pairs):
    model = CoPurchaseModel().fit(strong_pairs["baskets"])
    exclude = np.zeros(model.n_items_, dtype=bool)
    exclude[1] = True
    items, _ = recommend_for_cart(model, [0, 2], 10, exclude_mask=exclude)
    assert not set(items) & {0, 1, 2}
    assert len(items) == 10


def test_serving_merge_equals_model_dense_scoring(strong_pairs):
    model = CoPurchaseModel(cart=CartScoring(n_popular=model_items(strong_pairs))).fit(strong_pairs["baskets"])
    cart = np.array([0, 31])
    dense = model.cart.popularity_weight * model.popularity_.copy()
    for item in cart:
        dense += model.scores_[item].toarray().ravel()
    dense[cart] = -np.inf
    expected = np.lexsort((np.arange(dense.size), -dense))[:10]
    items, _ = merge_neighbor_lists(cart_neighbor_lists(model, cart), 10, cart)
    np.testing.assert_array_equal(items, expected)


def model_items(data):
    return data["baskets"].shape[1]


def test_huge_cart_is_bounded_and_fast():
    data = evaluation.synthetic_long_tail(n_baskets=6000, n_items=1500, random_state=2)
    model = CoPurchaseModel().fit(data["baskets"])
    cart = np.arange(500)
    assert len(cart_neighbor_lists(model, cart)) <= model.cart.max_cart_items + 1
    start = time.perf_counter()
    items, _ = recommend_for_cart(model, cart, 10)
    assert time.perf_counter() - start < 0.5
    assert not np.isin(items, cart).any()


def test_invalid_cart_raises():
    data = evaluation.synthetic_strong_pairs(n_baskets=500)
    model = CoPurchaseModel().fit(data["baskets"])
    with pytest.raises(InvalidCartError):
        recommend_for_cart(model, [10_000], 5)
    with pytest.raises(InvalidCartError):
        recommend_for_cart(model, [0], 5, exclude_mask=np.zeros(3, bool))


def test_reason_mentions_anchor(strong_pairs):
    model = CoPurchaseModel().fit(strong_pairs["baskets"])
    assert "bought with phone" in cart_reason(model, [0], 1, item_names=["phone"] + ["x"] * 39)


@pytest.mark.parametrize(
    "make",
    [
        lambda: evaluation.synthetic_strong_pairs(n_baskets=4000, random_state=5),
        lambda: evaluation.synthetic_long_tail(n_baskets=8000, n_items=1000, random_state=5),
        lambda: evaluation.synthetic_priced_catalogue(n_baskets=5000, random_state=5),
    ],
    ids=["strong_pairs", "long_tail", "priced_catalogue"],
)
def test_model_beats_popularity_on_other_shapes(make):
    data = make()
    train, train_times, cases = evaluation.split_and_cases(data["baskets"], data["times"])
    model = CoPurchaseModel().fit(train, train_times)
    result = evaluation.evaluate_against_popularity(lambda cart, k: recommend_for_cart(model, cart, k)[0], train, cases)
    assert result["hit_rate_lift"] > 0.05, result
