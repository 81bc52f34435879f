"""Unit tests for the co-purchase model."""

import numpy as np
import pytest
import scipy.sparse as sp

from services.recommend.cooccurrence import CoPurchaseModel, InvalidBasketsError, UnknownItemError
from services.recommend.evaluation import synthetic_strong_pairs


def _baskets(rows, n_items):
    data = [(b, i) for b, items in enumerate(rows) for i in items]
    r, c = zip(*data)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def test_fit_learns_counts_and_returns_self():
    baskets = _baskets([[0, 1], [0, 1], [0, 1], [2], [2, 3], [0]], 4)
    model = CoPurchaseModel(significance=0.0, shrinkage=0.0, min_support=1)
    assert model.fit(baskets) is model
    np.testing.assert_array_equal(model.item_counts_, [4, 3, 2, 1])
    assert model.popularity_.shape == (4,)
    assert sp.issparse(model.scores_) and model.scores_.shape == (4, 4)
    assert model.scores_.diagonal().sum() == 0


def test_strong_pair_is_top_neighbour_and_staple_is_not():
    data = synthetic_strong_pairs(n_baskets=3000, random_state=1)
    model = CoPurchaseModel().fit(data["baskets"], data["times"])
    items, scores, counts = model.similar_items(0, n=3)
    # Item 0 is a "phone": its case (1) and charger (2) must lead, not a filler staple.
    assert set(items[:2]) == {1, 2}
    assert np.all(np.diff(scores) <= 0)
    assert counts[0] >= model.min_support


def test_independent_items_get_no_evidence():
    rng = np.random.default_rng(0)
    dense = rng.random((4000, 30)) < np.linspace(0.05, 0.5, 30)
    model = CoPurchaseModel().fit(sp.csr_matrix(dense.astype(float)))
    # Pure noise: at most a handful of pairs may pass a 2-sd one-sided margin.
    assert model.scores_.nnz < 0.05 * 30 * 29


def test_top_n_pruning_per_row():
    data = synthetic_strong_pairs(n_baskets=2000)
    model = CoPurchaseModel(n_neighbors=2, significance=0.0).fit(data["baskets"])
    assert np.diff(model.scores_.indptr).max() <= 2
    assert model.pair_counts_.nnz == model.scores_.nnz


def test_blocked_fit_equals_single_block():
    data = synthetic_strong_pairs(n_baskets=2000)
    whole = CoPurchaseModel().fit(data["baskets"])
    blocked = CoPurchaseModel(block_work=50).fit(data["baskets"])
    assert (abs(whole.scores_ - blocked.scores_)).max() < 1e-9


def test_time_decay_favours_recent_popularity():
    baskets = _baskets([[0]] * 10 + [[1]] * 10, 2)
    times = np.r_[np.zeros(10), np.full(10, 300.0)]
    model = CoPurchaseModel(popularity_half_life_days=30).fit(baskets, times)
    assert model.popularity_[1] > 10 * model.popularity_[0]


def test_pair_decay_path_runs():
    data = synthetic_strong_pairs(n_baskets=1500)
    model = CoPurchaseModel(pair_half_life_days=90).fit(data["baskets"], data["times"])
    assert model.scores_.nnz > 0 and model.pair_counts_.data.min() >= model.min_support


def test_invalid_inputs_raise_typed_errors():
    with pytest.raises(InvalidBasketsError):
        CoPurchaseModel().fit(np.ones((3, 3)))
    with pytest.raises(InvalidBasketsError):
        CoPurchaseModel().fit(sp.csr_matrix(np.ones((3, 3))), basket_times=np.zeros(2))
    model = CoPurchaseModel().fit(sp.csr_matrix(np.ones((3, 3))))
    with pytest.raises(UnknownItemError):
        model.similar_items(7)
