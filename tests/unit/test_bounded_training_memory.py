"""The shortcuts that keep nightly training's memory bounded give what the plain computations give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from services.recommend.cooccurrence import binary_baskets
from services.recommend.evaluation import leave_one_out_cases, rows_in_order, sample_cases
from services.segmentation.snapshot import hash_sample


def random_baskets(n_baskets: int = 400, n_items: int = 30, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_baskets, n_items)) < 0.12).astype(np.float32)
    return sp.csr_matrix(dense)


def test_a_leading_run_of_rows_is_a_view_equal_to_the_copy():
    baskets = random_baskets()
    view = rows_in_order(baskets, np.arange(0, 300))
    assert np.shares_memory(view.data, baskets.data)
    assert (view != baskets[np.arange(0, 300)]).nnz == 0
    assert view.shape == (300, baskets.shape[1])


@pytest.mark.parametrize("rows", [np.arange(50, 120), np.array([5, 3, 4]), np.array([0, 2, 4]), np.array([], int)])
def test_any_rows_equal_fancy_indexing(rows):
    baskets = random_baskets()
    assert (rows_in_order(baskets, rows) != baskets[rows]).nnz == 0


def test_an_already_binary_matrix_is_not_copied_and_anything_else_is():
    baskets = random_baskets()
    assert binary_baskets(baskets) is baskets
    counts = baskets * 3
    binary = binary_baskets(counts)
    assert binary is not counts and np.all(binary.data == 1.0) and np.all(counts.data == 3.0)
    float64 = sp.csr_matrix(baskets, dtype=np.float64)
    assert binary_baskets(float64).dtype == np.float32


def test_sampled_cases_are_the_same_cases_as_sampling_after_building_all():
    baskets = random_baskets(n_baskets=2000)
    test_rows = np.arange(1500, 2000)
    every_case = leave_one_out_cases(baskets, test_rows, seed=7)
    picks = sample_cases(len(every_case), 100)
    expected = [every_case[index] for index in picks]
    sampled = leave_one_out_cases(baskets, test_rows, seed=7, max_cases=100)
    assert len(sampled) == 100
    assert [(case.basket_index, case.hidden_item, case.cart_items.tolist()) for case in sampled] == \
        [(case.basket_index, case.hidden_item, case.cart_items.tolist()) for case in expected]


def test_the_fit_sample_keeps_the_same_customers_however_they_are_sharded():
    ids = pd.DataFrame({"customer_id": [f"C{number:06d}" for number in range(20_000)]})
    whole = hash_sample(ids, 0.25)
    by_shard = pd.concat([hash_sample(ids.iloc[start:start + 3000], 0.25) for start in range(0, 20_000, 3000)])
    assert whole["customer_id"].tolist() == by_shard["customer_id"].tolist()
    # A binomial share of 20,000 at 0.25 has a standard deviation of ~0.003.
    assert abs(len(whole) / len(ids) - 0.25) < 0.015
    assert len(hash_sample(ids, 1.0)) == len(ids)
