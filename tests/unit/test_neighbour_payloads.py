"""The neighbour lists staged per item: best score first, ties by the lower item, scores to 6 decimals, each with
the number of orders that hold both items."""

import json

import numpy as np
import scipy.sparse as sp

from services.recommend.training import _neighbour_payloads


class StoredLists:
    """What _neighbour_payloads asks of a fitted model: its stored item x item scores."""

    def __init__(self, scores: sp.csr_matrix) -> None:
        self.scores = scores

    def stored_lists(self, n: int) -> sp.csr_matrix:
        return self.scores


def test_each_item_lists_its_neighbours_best_first_with_the_orders_they_share():
    rng = np.random.default_rng(5)
    n_items = 40
    baskets = sp.csr_matrix((rng.random((600, n_items)) < 0.12).astype(np.float64))
    # Few distinct scores, so many ties; one long decimal to round; rows left empty on purpose.
    dense = np.where(rng.random((n_items, n_items)) < 0.3,
                     rng.choice([0.5, 0.25, 0.123456789, 1e-7], size=(n_items, n_items)), 0.0)
    np.fill_diagonal(dense, 0.0)
    dense[[3, 17]] = 0.0
    scores = sp.csr_matrix(dense)
    skus = np.array([f"SKU{item:03d}" for item in range(n_items)])
    together = (baskets.T @ baskets).toarray()

    payloads = _neighbour_payloads(StoredLists(scores), baskets, skus)

    assert set(payloads) == {skus[item] for item in range(n_items) if dense[item].any()}
    for item in range(n_items):
        if not dense[item].any():
            continue
        neighbours = sorted(np.flatnonzero(dense[item]).tolist(), key=lambda other: (-dense[item, other], other))
        expected = [[other, round(float(dense[item, other]), 6), int(together[item, other])] for other in neighbours]
        assert json.loads(payloads[skus[item]]) == expected
