"""Unit tests for the personal for-you model."""

import numpy as np
import pytest
import scipy.sparse as sp

from services.recommend.foryou import ForYouModel, InvalidCustomerMatrixError


def _customers(n_customers=600, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for customer in range(n_customers):
        group = customer % 5
        items = rng.choice(np.arange(group * 6, group * 6 + 6), size=3, replace=False)
        items = np.r_[items, rng.choice(30, size=1)]
        rows.extend([customer] * len(items))
        cols.extend(items)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_customers, 30))


@pytest.mark.parametrize("method", ["neighbors", "svd"])
def test_recommend_follows_the_customer_group(method):
    matrix = _customers()
    model = ForYouModel(method=method, repeat_weight=0.0, n_components=5).fit(matrix)
    bought = matrix[7].toarray().ravel() > 0
    items, scores = model.recommend(7, n=3, exclude_mask=bought)
    assert not bought[items].any()
    assert np.all(np.diff(scores) <= 0)
    # Customer 7 is in group 2: items 12..17.
    assert 12 <= items[0] < 18


@pytest.mark.parametrize("method", ["neighbors", "svd"])
def test_recommend_all_matches_single_recommend(method):
    matrix = _customers(200)
    model = ForYouModel(method=method, chunk_size=37).fit(matrix)
    items, scores = model.recommend_all(n=5, exclude=matrix)
    assert items.shape == (200, 5)
    for customer in (0, 57, 199):
        single, _ = model.recommend(customer, n=5, exclude_mask=matrix[customer].toarray().ravel() > 0)
        np.testing.assert_array_equal(items[customer], single)


def test_repeat_items_may_come_back_and_reason():
    matrix = _customers(100)
    model = ForYouModel(repeat_weight=5.0).fit(matrix)
    items, _ = model.recommend(3, n=3)
    assert set(items) <= set(matrix[3].indices)
    assert model.reason(3, int(items[0])).startswith("you buy")
    other = int(np.setdiff1d(np.arange(30), matrix[3].indices)[0])
    assert "because you bought" in model.reason(3, other) or "popular" in model.reason(3, other)


def test_invalid_inputs():
    with pytest.raises(InvalidCustomerMatrixError):
        ForYouModel().fit(np.ones((2, 2)))
    model = ForYouModel().fit(_customers(50))
    with pytest.raises(InvalidCustomerMatrixError):
        model.recommend(999)


def test_shards_with_the_shop_wide_popularity_rank_like_the_whole_shop():
    matrix = _customers(300, seed=3)
    neighbours = ForYouModel().fit(matrix).neighbors_.scores_
    whole = ForYouModel(popularity_weight=0.5).fit(matrix, neighbour_scores=neighbours)
    items, scores = whole.recommend_all(n=6, exclude=matrix)
    popularity = whole.popularity_
    for rows in (slice(0, 101), slice(101, 300)):
        shard = ForYouModel(popularity_weight=0.5).fit(matrix[rows], neighbour_scores=neighbours,
                                                      item_popularity=popularity)
        shard_items, shard_scores = shard.recommend_all(n=6, exclude=matrix[rows])
        np.testing.assert_array_equal(shard_items, items[rows])
        np.testing.assert_array_equal(shard_scores, scores[rows])
    # Without it a shard learns its own popularity, and its lists drift from the whole shop's.
    alone = ForYouModel(popularity_weight=0.5).fit(matrix[:101], neighbour_scores=neighbours)
    assert not np.array_equal(alone.popularity_, popularity)
    with pytest.raises(InvalidCustomerMatrixError):
        ForYouModel().fit(matrix, item_popularity=popularity[:-1])
