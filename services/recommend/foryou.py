"""Personal "for you" lists from a customer x item purchase-count matrix.

score(c, j) = repeat_weight * share of c's purchases that were j        (buy-again)
            + sum over items i that c bought of neighbours_.scores_[i, j] (co-purchase evidence)
            + popularity_weight * popularity_[j]                          (prior)

The neighbourhood is a CoPurchaseModel fitted on customers as "baskets"
(what one customer ever bought together), so it inherits the chance
correction and significance margin that keep staples and one-off pairs out.
Method "svd" (scikit-learn TruncatedSVD on the binary matrix plus the same
buy-again and popularity terms) is kept as an option; the item neighbourhood
was chosen by measurement on the groceries next-basket holdout
(tests/perf/groceries_eval.py prints both; 1,990 customers, HR@10 of the
next basket): popularity 0.739, neighbours 0.742, SVD 0.64-0.65.  Groceries
carries almost no personal signal, so the win is a tie with popularity
rather than a loss (SVD's low-rank reconstruction adds noise there); the
neighbourhood's output can also be explained ("because you bought X") and
its batch scoring stays sparse.  repeat_weight defaults to 0.05 -- a
buy-again tie-breaker: 0.2+ cost HR on groceries (0.733), 0 to 0.05 are
equal there, and shops with real replenishment raise it per catalogue.

``recommend_all`` scores customers in chunks with sparse products and a
vectorised per-row top-n, so memory is bounded by the chunk, never by
n_customers x n_items.  Items outside every customer's sparse candidates can
only score their popularity prior, so the top ``n + n_backfill`` popular
items are added as candidates to every row: the result equals a dense top-n
unless a customer excludes more than n_backfill of them.

Pure module: numpy / scipy.sparse / scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import NotFittedError

from services.recommend.cooccurrence import CoPurchaseModel, top_n_per_row


class InvalidCustomerMatrixError(ValueError):
    """Raised when the customer x item matrix or a customer index is invalid."""


class GivenNeighbours:
    """Item neighbour scores handed to ForYouModel.fit (the shape of CoPurchaseModel it reads)."""

    def __init__(self, scores) -> None:
        self.scores_ = scores


@dataclass(frozen=True)
class Neighbourhood:
    """How the co-purchase neighbourhood of for-you is learned when no neighbour scores are given:
    ``n_neighbors`` kept per item, the ``significance`` margin and the ``shrinkage`` of CoPurchaseModel."""

    n_neighbors: int = 50
    significance: float = 2.0
    shrinkage: float = 20.0


class ForYouModel(BaseEstimator):
    """Personal ranking: buy-again share + co-purchase neighbourhood + popularity prior."""

    def __init__(
        self,
        method="neighbors",
        repeat_weight=0.05,
        popularity_weight=1.0,
        neighbourhood=None,
        n_components=32,
        n_backfill=50,
        chunk_size=20_000,
        random_state=0,
    ):
        self.method = method
        self.repeat_weight = repeat_weight
        self.popularity_weight = popularity_weight
        self.neighbourhood = neighbourhood
        self.n_components = n_components
        self.n_backfill = n_backfill
        self.chunk_size = chunk_size
        self.random_state = random_state

    def fit(self, customer_item_matrix, neighbour_scores=None, item_popularity=None):
        """Learn purchase shares, the item neighbourhood (or SVD factors) and popularity.

        ``neighbour_scores``: an items x items sparse matrix of neighbour scores (the shop's chosen
        cart model's lists) used as the neighbourhood instead of fitting one on customers.
        ``item_popularity``: each item's share of customers who bought it, learned on the whole shop,
        when ``customer_item_matrix`` is one shard of its customers (so every shard ranks alike).
        """
        if not sp.issparse(customer_item_matrix):
            raise InvalidCustomerMatrixError("customer_item_matrix must be a scipy.sparse matrix")
        if self.method not in ("neighbors", "svd"):
            raise InvalidCustomerMatrixError("method must be 'neighbors' or 'svd'")
        counts = sp.csr_matrix(customer_item_matrix, dtype=np.float64)
        counts.sum_duplicates()
        counts.eliminate_zeros()
        if counts.nnz and counts.data.min() < 0:
            raise InvalidCustomerMatrixError("purchase counts must be non-negative")
        self.n_customers_, self.n_items_ = counts.shape
        totals = np.asarray(counts.sum(axis=1)).ravel()
        self.purchase_share_ = sp.csr_matrix(sp.diags(1.0 / np.maximum(totals, 1.0)) @ counts)
        bought = counts.copy()
        bought.data[:] = 1.0
        self.bought_ = bought
        if item_popularity is None:
            self.popularity_ = np.asarray(bought.sum(axis=0)).ravel() / max(self.n_customers_, 1)
        else:
            self.popularity_ = np.asarray(item_popularity, dtype=np.float64).ravel()
            if self.popularity_.shape != (self.n_items_,):
                raise InvalidCustomerMatrixError("item_popularity must have one share per item")
        if self.method == "neighbors" and neighbour_scores is not None:
            if neighbour_scores.shape != (self.n_items_, self.n_items_):
                raise InvalidCustomerMatrixError("neighbour_scores must be an items x items matrix")
            self.neighbors_ = GivenNeighbours(sp.csr_matrix(neighbour_scores, dtype=np.float64))
        elif self.method == "neighbors":
            neighbourhood = self.neighbourhood or Neighbourhood()
            self.neighbors_ = CoPurchaseModel(
                n_neighbors=neighbourhood.n_neighbors,
                significance=neighbourhood.significance,
                shrinkage=neighbourhood.shrinkage,
                popularity_half_life_days=None,
            ).fit(bought)
        else:
            n_components = max(1, min(self.n_components, min(bought.shape) - 1))
            svd = TruncatedSVD(n_components=n_components, random_state=self.random_state)
            self.customer_factors_ = svd.fit_transform(bought)
            self.item_factors_ = svd.components_
        order = np.lexsort((np.arange(self.n_items_), -self.popularity_))
        self.popular_items_ = order
        return self

    def _check_fitted(self):
        """Raise NotFittedError before fit."""
        if not hasattr(self, "popularity_"):
            raise NotFittedError("ForYouModel is not fitted yet")

    def _residual_scores(self, customers):
        """Sparse (len(customers), n_items) personal part of the score (without popularity)."""
        history = self.bought_[customers]
        repeat = self.repeat_weight * self.purchase_share_[customers]
        if self.method == "neighbors":
            return sp.csr_matrix(history @ self.neighbors_.scores_ + repeat)
        raise InvalidCustomerMatrixError("sparse scoring is only defined for method='neighbors'")

    def _dense_scores(self, customers):
        """Dense score block for the given customers (svd method, or a single customer)."""
        if self.method == "svd":
            scores = self.customer_factors_[customers] @ self.item_factors_
            scores = scores + self.repeat_weight * self.purchase_share_[customers].toarray()
        else:
            scores = self._residual_scores(customers).toarray()
        return scores + self.popularity_weight * self.popularity_[None, :]

    def recommend(self, customer_index, n=10, exclude_mask=None):
        """(items, scores): top-n items for one customer, skipping items flagged in exclude_mask."""
        self._check_fitted()
        if not 0 <= int(customer_index) < self.n_customers_:
            raise InvalidCustomerMatrixError(f"customer {customer_index} is outside 0..{self.n_customers_ - 1}")
        scores = self._dense_scores(np.array([int(customer_index)]))[0]
        candidates = np.arange(self.n_items_)
        if exclude_mask is not None:
            exclude_mask = np.asarray(exclude_mask, dtype=bool)
            if exclude_mask.shape != (self.n_items_,):
                raise InvalidCustomerMatrixError("exclude_mask must have one flag per item")
            candidates = candidates[~exclude_mask]
        order = np.lexsort((candidates, -scores[candidates]))[:n]
        return candidates[order], scores[candidates[order]]

    def recommend_all(self, n=10, exclude=None):
        """(items[n_customers, n], scores) for every customer; -1 / -inf pad rows short of n.

        ``exclude``: optional sparse (n_customers, n_items) matrix, nonzero =
        do not recommend (e.g. bought and not a repeat-purchase item), or a
        1-d bool mask applied to everyone.
        """
        self._check_fitted()
        items_out = np.full((self.n_customers_, n), -1, dtype=np.int64)
        scores_out = np.full((self.n_customers_, n), -np.inf)
        global_mask = None
        if exclude is not None and not sp.issparse(exclude):
            global_mask = np.asarray(exclude, dtype=bool)
            exclude = None
        backfill = self.popular_items_
        if global_mask is not None:
            backfill = backfill[~global_mask[backfill]]
        backfill = backfill[: n + self.n_backfill]
        for start in range(0, self.n_customers_, self.chunk_size):
            customers = np.arange(start, min(start + self.chunk_size, self.n_customers_))
            if self.method == "svd":
                block = self._dense_scores(customers)
                if global_mask is not None:
                    block[:, global_mask] = -np.inf
                if exclude is not None:
                    excluded = exclude[customers].tocoo()
                    block[excluded.row, excluded.col] = -np.inf
                top = np.argpartition(-block, min(n, block.shape[1] - 1), axis=1)[:, :n]
                top_scores = np.take_along_axis(block, top, axis=1)
                order = np.lexsort((top, -top_scores), axis=1)
                items_out[customers] = np.take_along_axis(top, order, axis=1)
                scores_out[customers] = np.take_along_axis(top_scores, order, axis=1)
                continue
            residual = self._residual_scores(customers).tocoo()
            # Candidates: every sparse entry plus the popular backfill for every row.
            rows = np.concatenate([residual.row, np.repeat(np.arange(customers.size), backfill.size)])
            cols = np.concatenate([residual.col, np.tile(backfill, customers.size)])
            values = np.concatenate([residual.data, np.zeros(customers.size * backfill.size)])
            merged = sp.csr_matrix((values, (rows, cols)), shape=(customers.size, self.n_items_))
            merged.sum_duplicates()
            merged = merged.tocoo()
            scores = merged.data + self.popularity_weight * self.popularity_[merged.col]
            keep = np.ones(scores.size, dtype=bool)
            if global_mask is not None:
                keep &= ~global_mask[merged.col]
            if exclude is not None:
                excluded = sp.csr_matrix(exclude[customers], dtype=bool)
                keep &= ~np.asarray(excluded[merged.row, merged.col]).ravel()
            row, col, scores = merged.row[keep].astype(np.int64), merged.col[keep].astype(np.int64), scores[keep]
            top = top_n_per_row(row, col, scores, n)
            row, col, scores = row[top], col[top], scores[top]
            rank = np.arange(row.size) - np.searchsorted(row, row, side="left")
            items_out[customers[row], rank] = col
            scores_out[customers[row], rank] = scores
        return items_out, scores_out

    def reason(self, customer_index, item, item_names=None):
        """Why ``item`` is on this customer's list, in words ("because you bought X")."""
        self._check_fitted()
        names = (lambda i: str(item_names[i])) if item_names is not None else (lambda i: f"item {i}")
        history = self.bought_[int(customer_index)].indices
        if item in history:
            return f"you buy {names(item)} regularly"
        if self.method == "neighbors" and history.size:
            evidence = np.asarray(self.neighbors_.scores_[history][:, [item]].todense()).ravel()
            if evidence.max() > 0:
                return f"because you bought {names(history[int(np.argmax(evidence))])}"
        return f"popular with {self.popularity_[item]:.0%} of customers"
