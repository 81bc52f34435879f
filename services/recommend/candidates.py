"""Candidate item-to-item models behind one estimator interface, each blended with a popularity prior.

Every candidate is fitted on the same binary basket matrix (baskets x items) and learns the same
things (scikit-learn conventions: hyper-parameters in ``__init__``, ``fit`` returns self, learned
attributes end in ``_``):

* ``scores_``: the per-item neighbour lists as a sparse items x items matrix, pruned to the
  ``n_neighbours`` best of each row and divided by ``scale_`` (see below). This is what training
  stores per item and what serving merges, so offline scores are served scores.
* ``popular_items_`` / ``popular_scores_``: the ``n_popular`` most popular items by time-decayed
  popularity, scaled to a maximum of 1, and ``popularity_weight_`` (beta) to blend them with.
* ``informativeness_``: per item, the sum of its stored neighbour scores (the web tier picks the
  ``max_cart_items`` most informative cart items), and ``item_counts_``.

Cart score (what ``crosssell.recommend_for_cart`` and the storefront compute from stored lists)::

    score(j | cart) = beta * popularity(j) / max popularity
                      + sum over the K most informative cart items i of scores_[i, j]

Scales: so that beta means the same for every candidate, neighbour scores are divided by
``scale_``, the strongest neighbour score of a typical cart line (the mean of the row maxima,
weighted by how often each item is bought). With popularity at unit maximum, beta = 1 puts the
shop's best seller level with the strongest neighbour of a typical item, whatever the model.

Candidates: the current excess-over-chance co-purchase model (``CoPurchaseModel``, wrapped), item
kNN with cosine and BM25 weighting (the ``implicit`` package's recommenders), conditional
probability P(j | i), naive-Bayes basket completion (pointwise mutual information lists and a
log-popularity prior, in its own unit), multinomial logistic regression from a cart to its missing item
(small catalogues), and EASE (Steck 2019: B = I - P / diag(P), P = (X'X + lambda I)^-1) on the
``max_items`` most-sold items, with cosine lists for the items beyond them.

Pure module: numpy / scipy / scikit-learn / implicit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from services.recommend.cooccurrence import (
    PAIR_BLOCK_WORK,
    CartScoring,
    CoPurchaseModel,
    InvalidBasketsError,
    top_n_per_row,
)
from services.recommend.cooccurrence import binary_baskets as cooccurrence_binary_baskets
from services.recommend.evaluation import every_item_case_entries
from services.recommend.popularity import decay_weights

# A beta of 0 keeps popularity as the tie-breaker only (and as the backfill order of short lists).
TIE_BREAK_WEIGHT = 1e-6
# L-BFGS iterations of the softmax candidate: on the shapes of tests/perf/bench_models.py, 300 ranked no
# better than 100 and cost three times as much.
SOFTMAX_MAX_ITER = 100


class InvalidCandidateInputError(ValueError):
    """Raised when baskets, times or hyper-parameters of a candidate are malformed."""


def binary_baskets(baskets) -> sp.csr_matrix:
    """A binary float32 CSR copy of a basket matrix, as every candidate fits on (cooccurrence's one rule)."""
    try:
        return cooccurrence_binary_baskets(baskets)
    except InvalidBasketsError as error:
        raise InvalidCandidateInputError(str(error)) from error


def prune_rows(matrix, n: int) -> sp.csr_matrix:
    """The n largest entries of every row (ties: lower column), diagonal and non-positive entries dropped."""
    coo = sp.coo_matrix(matrix)
    keep = (coo.row != coo.col) & (coo.data > 0)
    rows, cols, values = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep]
    top = top_n_per_row(rows, cols, values, n)
    return sp.csr_matrix((values[top].astype(np.float64), (rows[top], cols[top])), shape=matrix.shape)


def blocked_pair_scores(matrix: sp.csr_matrix, score_pairs, n: int,
                        block_work: float = PAIR_BLOCK_WORK) -> sp.csr_matrix:
    """Top-n per row of score_pairs(rows, cols, co_counts) over the co-purchase pairs, in item blocks.

    X'X is built a block of items at a time (blocks sized by the baskets they touch), scored and
    pruned, so memory is bounded by the block, never by the full item x item product.
    """
    n_items = matrix.shape[1]
    items_by_basket = matrix.T.tocsr()
    basket_sizes = np.diff(matrix.indptr).astype(np.float64)
    cumulative_work = np.cumsum(np.asarray(items_by_basket @ basket_sizes).ravel())
    parts = []
    start = 0
    while start < n_items:
        limit = (cumulative_work[start - 1] if start else 0.0) + block_work
        stop = min(max(int(np.searchsorted(cumulative_work, limit, side="right")), start + 1), n_items)
        pairs = (items_by_basket[start:stop] @ matrix).tocoo()
        rows = pairs.row.astype(np.int64) + start
        cols = pairs.col.astype(np.int64)
        scores = score_pairs(rows, cols, pairs.data.astype(np.float64))
        keep = (rows != cols) & (scores > 0)
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
        top = top_n_per_row(rows, cols, scores, n)
        parts.append((rows[top], cols[top], scores[top]))
        start = stop
    rows, cols, scores = (np.concatenate([part[i] for part in parts]) for i in range(3))
    return sp.csr_matrix((scores, (rows, cols)), shape=(n_items, n_items))


def pair_counts(matrix: sp.csr_matrix, pattern: sp.csr_matrix, block_rows: int = 2000) -> sp.csr_matrix:
    """Orders holding both i and j for every stored pair (i, j) of pattern (the reasons' evidence)."""
    items_by_basket = matrix.T.tocsr()
    mask = sp.csr_matrix(pattern, copy=True)
    mask.data[:] = 1.0
    blocks = []
    for start in range(0, pattern.shape[0], block_rows):
        stop = min(start + block_rows, pattern.shape[0])
        block_mask = mask[start:stop]
        if block_mask.nnz == 0:
            blocks.append(sp.csr_matrix(block_mask.shape, dtype=np.float64))
            continue
        # Only the columns this block stores are multiplied, so the product stays small.
        columns = np.unique(block_mask.indices)
        counts = (items_by_basket[start:stop] @ matrix[:, columns]).tocsr()
        expanded = sp.csr_matrix((counts.data, columns[counts.indices], counts.indptr), shape=block_mask.shape)
        blocks.append(sp.csr_matrix(expanded.multiply(block_mask)))
    result = sp.vstack(blocks).tocsr()
    result.data = np.rint(result.data)
    return result.astype(np.int64)


class NeighbourCandidate(BaseEstimator):
    """Shared fit and scoring of every candidate; subclasses say how item-item scores are made."""

    name = "base"
    # True where the prior is in the lists' own unit (beta = 1 is the model itself), not put on a common scale.
    prior_in_own_unit = False

    def _neighbour_matrix(self, matrix, basket_times):
        """Unscaled item x item neighbour scores, pruned to n_neighbours per row (subclasses)."""
        raise NotImplementedError

    def fit(self, baskets, basket_times=None):
        """Learn the neighbour lists, their scale, the popularity list and the blend weight."""
        matrix, basket_times = self._fit_prior(baskets, basket_times)
        return self._fit_neighbours(self._neighbour_matrix(matrix, basket_times))

    def _fit_prior(self, baskets, basket_times):
        """(binary matrix, times): checks the input, learns item counts and the popularity list."""
        matrix = binary_baskets(baskets)
        n_baskets, n_items = matrix.shape
        if self.n_neighbours < 1 or self.n_popular < 1 or self.max_cart_items < 1:
            raise InvalidCandidateInputError("n_neighbours, n_popular and max_cart_items must be >= 1")
        if basket_times is not None:
            basket_times = np.asarray(basket_times, dtype=float)
            if basket_times.shape != (n_baskets,):
                raise InvalidCandidateInputError("basket_times must hold one float per basket")
        self.n_items_ = n_items
        self.item_counts_ = np.asarray(matrix.sum(axis=0)).ravel().astype(np.int64)
        half_life = self.popularity_half_life_days if basket_times is not None else None
        weights = decay_weights(basket_times if basket_times is not None else np.zeros(n_baskets), half_life)
        self._set_prior(np.asarray(matrix.T @ weights).ravel() / weights.sum())
        return matrix, basket_times

    def _set_prior(self, popularity):
        """Keep the popularity shares and the stored list of the n_popular most popular items."""
        self.popularity_ = popularity
        order = np.lexsort((np.arange(popularity.shape[0]), -popularity))[: self.n_popular]
        self.popular_items_ = order
        self.popular_scores_ = popularity[order] / max(float(popularity.max()), 1e-12)

    def _fit_neighbours(self, neighbour_matrix):
        """Prune and scale the neighbour lists, set the blend weight; returns self."""
        raw = self._pruned(neighbour_matrix)
        self.scale_, self.popularity_weight_ = self._scale_and_weight(raw, self.popularity_)
        self.scores_ = sp.csr_matrix(raw / self.scale_)
        # Positive evidence only: a cart item whose list mostly says "not with me" is not the most telling one.
        self.informativeness_ = np.asarray(self.scores_.maximum(0).sum(axis=1)).ravel()
        return self

    def _pruned(self, neighbour_matrix) -> sp.csr_matrix:
        """The stored lists: each row's n_neighbours best positive scores (softmax keeps negatives too)."""
        return prune_rows(neighbour_matrix, self.n_neighbours)

    def _scale_and_weight(self, raw, popularity):
        """(scale, beta): the typical strongest neighbour score, and the popularity weight on that scale."""
        if self.prior_in_own_unit:
            # Lists and prior already share one unit (naive Bayes, softmax): no common scale to put them on.
            return 1.0, max(float(self.beta), TIE_BREAK_WEIGHT)
        row_max = np.asarray(raw.max(axis=1).todense()).ravel()
        weights = self.item_counts_ * (row_max > 0)
        scale = float(row_max @ weights / weights.sum()) if weights.sum() > 0 else 1.0
        return (scale if scale > 0 else 1.0), max(float(self.beta), TIE_BREAK_WEIGHT)

    @property
    def cart(self) -> CartScoring:
        """How a cart is scored, under the name crosssell.recommend_for_cart and serving read."""
        check_is_fitted(self, "scores_")
        return CartScoring(popularity_weight=self.popularity_weight_, max_cart_items=self.max_cart_items,
                           n_popular=self.n_popular)

    def neighbours(self, item: int, n: int = 10):
        """(items, scores) of the n best neighbours of one item, best first (ties: lower index)."""
        check_is_fitted(self, "scores_")
        if not 0 <= int(item) < self.n_items_:
            raise InvalidCandidateInputError(f"item {item} is outside 0..{self.n_items_ - 1}")
        start, stop = self.scores_.indptr[item], self.scores_.indptr[item + 1]
        items, scores = self.scores_.indices[start:stop], self.scores_.data[start:stop]
        order = np.lexsort((items, -scores))[:n]
        return items[order], scores[order]

    def neighbor_list(self, item: int):
        """(items, scores) of an item's whole stored row (the name crosssell.py reads)."""
        return self.neighbours(item, self.scores_.indptr[item + 1] - self.scores_.indptr[item])

    def top_neighbours(self, n: int) -> sp.csr_matrix:
        """Every item's n best neighbours at once, as a sparse items x items matrix (positive scores only)."""
        check_is_fitted(self, "scores_")
        return prune_rows(self.scores_, n)

    def stored_lists(self, n: int) -> sp.csr_matrix:
        """What training stores per item for serving to merge: the n best neighbours, and any negative scores."""
        check_is_fitted(self, "scores_")
        negative = sp.csr_matrix(self.scores_.minimum(0))
        return sp.csr_matrix(prune_rows(self.scores_, n) + negative)

    def cart_matrix(self, carts: sp.csr_matrix) -> sp.csr_matrix:
        """Carts (rows) cut to their max_cart_items most informative items, as serving does."""
        coo = sp.coo_matrix(carts)
        rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        # Informativeness first, then the lower index: the order crosssell.select_cart_items uses.
        top = top_n_per_row(rows, cols, self.informativeness_[cols], self.max_cart_items)
        data = np.ones(top.size, dtype=np.float64)
        return sp.csr_matrix((data, (rows[top], cols[top])), shape=carts.shape)

    def cart_evidence(self, carts: sp.csr_matrix) -> sp.csr_matrix:
        """Summed neighbour scores of many carts at once (carts x items, without the popularity part)."""
        check_is_fitted(self, "scores_")
        return sp.csr_matrix(self.cart_matrix(carts) @ self.scores_)

    def score_cart(self, item_indices) -> np.ndarray:
        """Scores over all items for one cart (cart items included; callers exclude them)."""
        check_is_fitted(self, "scores_")
        cart = np.unique(np.asarray(item_indices, dtype=np.int64))
        carts = sp.csr_matrix((np.ones(cart.size), (np.zeros(cart.size, np.int64), cart)), shape=(1, self.n_items_))
        scores = np.asarray(self.cart_evidence(carts).todense()).ravel()
        scores[self.popular_items_] += self.popularity_weight_ * self.popular_scores_
        return scores

    def describe(self) -> dict:
        """name and hyper-parameters that matter, for run metrics and tables."""
        params = {key: value for key, value in self.get_params().items() if key in self.reported_params}
        return {"name": self.name, "params": params}

    reported_params = ("beta",)


class CoPurchaseCandidate(NeighbourCandidate):
    """The current excess-over-chance co-purchase model (cooccurrence.CoPurchaseModel), wrapped.

    beta=None keeps its own prior exactly: the model's trend-adjusted popularity shares, with weight 1 on
    unscaled scores (popularity_half_life_days is then unused: it sets the shared prior that a beta blends).
    """

    name = "co_purchase"
    reported_params = ("beta",)

    def __init__(self, beta=None, n_neighbours=50, n_popular=200, max_cart_items=20,
                 popularity_half_life_days=60.0):
        self.beta = beta
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days

    def _neighbour_matrix(self, matrix, basket_times):
        model = CoPurchaseModel(n_neighbors=self.n_neighbours, cart=CartScoring(n_popular=self.n_popular))
        self.model_ = model.fit(matrix, basket_times)
        if self.beta is None:
            self._set_prior(model.popularity_)
        return model.scores_

    def _scale_and_weight(self, raw, popularity):
        if self.beta is None:
            return 1.0, float(popularity.max())
        return super()._scale_and_weight(raw, popularity)


class ConditionalProbabilityCandidate(NeighbourCandidate):
    """P(j | i) = c_ij / (c_i + shrinkage): how often j is in the orders that hold i."""

    name = "conditional_probability"
    reported_params = ("beta", "shrinkage")

    def __init__(self, beta=0.0, shrinkage=0.0, n_neighbours=50, n_popular=200, max_cart_items=20,
                 popularity_half_life_days=60.0):
        self.beta = beta
        self.shrinkage = shrinkage
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days

    def _neighbour_matrix(self, matrix, basket_times):
        counts = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float64)
        return blocked_pair_scores(matrix, lambda rows, cols, together: together / (counts[rows] + self.shrinkage),
                                   self.n_neighbours)


class NaiveBayesCandidate(NeighbourCandidate):
    """Naive-Bayes basket completion: log P(j) + sum over cart items i of log P(i | j) / P(i).

    If the cart's items were independent given the missing item j, this is the log-probability of
    j up to a constant of the cart, and it is linear in the cart, so it is served like every other
    candidate: item i's stored list holds the pointwise mutual information PMI(i, j) = log P(i | j) / P(i)
    of its co-purchased items (P(i | j) smoothed towards P(i) with `smoothing` pseudo-orders, positive
    values kept: a pair that is not stored counts as independent), and the popular list holds
    log popularity, shifted so that the least popular item of the list scores 0 (as every item outside
    it does). Sums of evidence per cart item favour items that go with every cart item over items that
    go strongly with one, which is what a shop of habitual sets (repeat purchases) rewards.

    Lists and prior are already in the same unit (nats), so scale_ is 1 and beta = 1 is the model
    itself; beta on the grid corrects the independence assumption's over-counting.
    """

    name = "naive_bayes"
    reported_params = ("beta", "smoothing")
    prior_in_own_unit = True

    def __init__(self, beta=1.0, smoothing=1.0, n_neighbours=50, n_popular=200, max_cart_items=20,
                 popularity_half_life_days=60.0):
        self.beta = beta
        self.smoothing = smoothing
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days

    def _neighbour_matrix(self, matrix, basket_times):
        if self.smoothing <= 0:
            raise InvalidCandidateInputError("smoothing must be > 0")
        counts = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float64)
        # Half a pseudo-order per item keeps the share of an item never bought above zero.
        share = (counts + 0.5) / (matrix.shape[0] + 1.0)

        def pointwise_mutual_information(rows, cols, together):
            conditional = (together + self.smoothing * share[rows]) / (counts[cols] + self.smoothing)
            return np.log(conditional / share[rows])

        return blocked_pair_scores(matrix, pointwise_mutual_information, self.n_neighbours)

    def _fit_neighbours(self, neighbour_matrix):
        super()._fit_neighbours(neighbour_matrix)
        self.popular_scores_ = log_popularity_scores(self.popularity_[self.popular_items_])
        return self


class SoftmaxCandidate(NeighbourCandidate):
    """Cart completion learned directly: multinomial logistic regression from a cart to its missing item.

    Trained on every leave-one-out case of the fitting orders (an order of 2+ items minus one item is
    the input, the item the class), sampled to at most max_cases; scikit-learn's LogisticRegression
    with inverse regularisation C. The score of item j for a cart is intercept_j + sum over cart items
    i of coef[j, i]: linear in the cart like every candidate, so item i's stored list is its strongest
    weights and the popular list holds the intercepts, shifted so that the list's last item scores 0.
    Where the pairwise models sum what each cart item says on its own, the weights are fitted jointly
    to name the missing item, so an item that any device's basket holds anyway (a universal
    accessory) stops outvoting the family's own accessories. Its lists keep the n_neighbours most
    negative weights as well: "a drink in the cart, so not another drink" is what a café's carts say,
    and serving sums them like any score (bought-together shows the positive ones only).

    The fit grows with cases x items x iterations, so selection fits it on small catalogues only
    (``SelectionSettings.softmax_max_items``): a shop of 50,000 skus pays nothing for it.
    """

    name = "softmax"
    reported_params = ("beta", "C")
    prior_in_own_unit = True

    def __init__(self, beta=1.0, C=10.0, max_cases=50_000, random_state=0, n_neighbours=50, n_popular=200,
                 max_cart_items=20, popularity_half_life_days=60.0):
        self.beta = beta
        self.C = C
        self.max_cases = max_cases
        self.random_state = random_state
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days

    def _neighbour_matrix(self, matrix, basket_times):
        n_items = matrix.shape[1]
        carts, missing = completion_cases(matrix, self.max_cases, self.random_state)
        self.intercepts_ = np.zeros(n_items)
        weights = np.zeros((n_items, n_items))
        classes = np.unique(missing)
        if classes.size >= 2:
            with warnings.catch_warnings():
                # The iteration cap bounds the nightly cost on purpose: stopping there is expected, not a fault.
                warnings.simplefilter("ignore", ConvergenceWarning)
                regression = LogisticRegression(C=self.C, max_iter=SOFTMAX_MAX_ITER).fit(carts, missing)
            weights[:, classes] = regression.coef_.T
            self.intercepts_[classes] = regression.intercept_
        # An item that is never the missing one of a case gets the lowest intercept, as if least likely.
        never = np.setdiff1d(np.arange(n_items), classes)
        self.intercepts_[never] = self.intercepts_[classes].min() if classes.size else 0.0
        np.fill_diagonal(weights, 0.0)
        strongest = dense_prune_rows(weights, self.n_neighbours)
        return sp.csr_matrix(strongest - dense_prune_rows(-weights, self.n_neighbours))

    def _pruned(self, neighbour_matrix) -> sp.csr_matrix:
        return neighbour_matrix

    def _fit_neighbours(self, neighbour_matrix):
        super()._fit_neighbours(neighbour_matrix)
        order = np.lexsort((np.arange(self.n_items_), -self.intercepts_))[: self.n_popular]
        self.popular_items_ = order
        self.popular_scores_ = self.intercepts_[order] - self.intercepts_[order].min()
        return self


def completion_cases(matrix: sp.csr_matrix, max_cases: int, random_state=0) -> tuple[sp.csr_matrix, np.ndarray]:
    """(carts, missing item): every order of 2+ items with one item taken out, a seeded sample of max_cases."""
    case_orders, case_entries = every_item_case_entries(matrix, max_cases, random_state)
    missing = matrix.indices[case_entries]
    # Each case's whole order, less the missing item.
    orders = sp.csr_matrix((np.ones(case_orders.size), (np.arange(case_orders.size), case_orders)),
                           shape=(case_orders.size, matrix.shape[0]))
    carts = sp.csr_matrix(orders @ matrix)
    carts = carts - sp.csr_matrix((np.ones(missing.size), (np.arange(missing.size), missing)), shape=carts.shape)
    carts.eliminate_zeros()
    return sp.csr_matrix(carts), missing


def log_popularity_scores(popularity: np.ndarray) -> np.ndarray:
    """log popularity of a best-first popular list, shifted so its last positive entry scores 0 (never negative)."""
    positive = popularity[popularity > 0]
    if positive.size == 0:
        return np.zeros(popularity.size)
    floor = float(positive.min())
    return np.log(np.maximum(popularity, floor) / floor)


class ImplicitKNNCandidate(NeighbourCandidate):
    """Item kNN of the implicit package: cosine (CosineRecommender) or BM25 (BM25Recommender)."""

    reported_params = ("beta", "weighting")

    def __init__(self, weighting="cosine", beta=0.0, n_neighbours=50, n_popular=200, max_cart_items=20,
                 popularity_half_life_days=60.0, bm25_k1=1.2, bm25_b=0.75):
        self.weighting = weighting
        self.beta = beta
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b

    @property
    def name(self):
        return f"knn_{self.weighting}"

    def _neighbour_matrix(self, matrix, basket_times):
        return implicit_similarity(matrix, self.weighting, self.n_neighbours + 1, self.bm25_k1, self.bm25_b)


def implicit_similarity(matrix, weighting, k, bm25_k1=1.2, bm25_b=0.75, num_threads=0) -> sp.csr_matrix:
    """implicit's item-item similarity (top k per item, self included) of a baskets x items matrix."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    if weighting == "cosine":
        model = CosineRecommender(K=k, num_threads=num_threads)
    elif weighting == "bm25":
        model = BM25Recommender(K=k, K1=bm25_k1, B=bm25_b, num_threads=num_threads)
    else:
        raise InvalidCandidateInputError("weighting must be 'cosine' or 'bm25'")
    model.fit(sp.csr_matrix(matrix, dtype=np.float32), show_progress=False)
    return model.similarity


class EASECandidate(NeighbourCandidate):
    """EASE (Steck 2019) on the max_items most-sold items; cosine lists for the items beyond them.

    B = I - P / diag(P) with P = (X'X + l2 I)^-1, the closed-form ridge regression of each item on
    all others with a zero diagonal; a cart's score for j is the sum of B[i, j] over its items.
    l2 = l2_ratio x the mean order count of the covered items, so one grid fits shops of any size
    (the learned ``l2_`` is the absolute value).
    The inverse is a float32 Cholesky (LAPACK potrf/potri): max_items = 4,000 costs 64 MB per
    matrix and a few seconds; time, not memory, bounds it (10,000 items: ~40 s per fit on 2 cores).
    """

    name = "ease"
    reported_params = ("beta", "l2_ratio")

    def __init__(self, l2_ratio=0.3, beta=0.0, max_items=4000, n_neighbours=50, n_popular=200, max_cart_items=20,
                 popularity_half_life_days=60.0, num_threads=0):
        self.l2_ratio = l2_ratio
        self.beta = beta
        self.max_items = max_items
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days
        self.num_threads = num_threads

    def fit(self, baskets, basket_times=None, shared=None):
        """Learn as every candidate does; shared: an EASEShared of the same baskets (an l2 grid reuses it)."""
        matrix, basket_times = self._fit_prior(baskets, basket_times)
        if shared is None:
            shared = EASEShared.of(matrix, self.max_items, self.n_neighbours, self.num_threads)
        return self._fit_neighbours(self._ease_lists(shared))

    def _ease_lists(self, shared) -> sp.csr_matrix:
        """EASE lists of the covered items, cosine lists (on EASE's scale) for the items beyond them."""
        covered, counts = shared.covered, shared.counts
        self.ease_items_ = covered
        self.l2_ = float(self.l2_ratio * counts[covered].mean())
        weights = ease_weights_from_gram(shared.gram.copy(), self.l2_)
        block = dense_prune_rows(weights, self.n_neighbours).tocoo()
        del weights
        ease = sp.csr_matrix((block.data, (covered[block.row], covered[block.col])), shape=(counts.size,) * 2)
        if shared.beyond is None:
            return ease
        ease_scale = _typical_row_max(ease, counts)
        cosine_scale = _typical_row_max(shared.beyond, counts)
        return ease + shared.beyond * (ease_scale / cosine_scale if cosine_scale > 0 else 1.0)


@dataclass
class EASEShared:
    """What every l2 of an EASE grid shares on one basket matrix: covered items, their Gram, the cosine rest."""

    covered: np.ndarray
    counts: np.ndarray
    gram: np.ndarray
    beyond: sp.csr_matrix | None

    @classmethod
    def of(cls, matrix, max_items: int, n_neighbours: int, num_threads: int = 0) -> EASEShared:
        """The max_items most sold items, X'X over them (float32), cosine lists of the items beyond them."""
        counts = np.asarray(matrix.sum(axis=0)).ravel()
        sold = np.flatnonzero(counts > 0)
        covered = np.sort(sold[np.lexsort((sold, -counts[sold]))[:max_items]])
        block = matrix[:, covered]
        gram = np.asarray((block.T @ block).todense(), dtype=np.float32)
        beyond = None
        if covered.size < sold.size:
            cosine = prune_rows(implicit_similarity(matrix, "cosine", n_neighbours + 1, num_threads=num_threads),
                                n_neighbours)
            outside = np.ones(matrix.shape[1], dtype=bool)
            outside[covered] = False
            beyond = sp.csr_matrix(sp.diags(outside.astype(np.float64)) @ cosine)
        return cls(covered, counts, gram, beyond)


def dense_prune_rows(dense: np.ndarray, n: int) -> sp.csr_matrix:
    """prune_rows of a dense matrix without making all of it sparse: each row's n-th largest value first."""
    k = min(n, dense.shape[1])
    if k < 1:
        return sp.csr_matrix(dense.shape, dtype=np.float64)
    kth = -np.partition(-dense, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero((dense >= kth[:, None]) & (dense > 0))
    return prune_rows(sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=dense.shape), n)


def _typical_row_max(matrix, counts) -> float:
    """Mean of the row maxima, weighted by item counts (rows with no entries left out)."""
    row_max = np.asarray(matrix.max(axis=1).todense()).ravel()
    weights = counts * (row_max > 0)
    return float(row_max @ weights / weights.sum()) if weights.sum() > 0 else 0.0


def ease_weights(matrix, l2: float) -> np.ndarray:
    """EASE's item x item weights B (zero diagonal) for a baskets x items matrix, as float32."""
    return ease_weights_from_gram(np.asarray((matrix.T @ matrix).todense(), dtype=np.float32), l2)


def ease_weights_from_gram(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's weights from X'X (float32, overwritten): a Cholesky inverse of X'X + l2 I.

    An eigendecomposition of X'X would serve every l2 of a grid, but costs about four Cholesky
    inversions (and each l2 still needs an n^3 product), so a 3-value grid shares X'X only.
    """
    if l2 <= 0:
        raise InvalidCandidateInputError("l2 must be positive")
    gram[np.diag_indices_from(gram)] += np.float32(l2)
    factor, info = lapack.spotrf(gram, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        raise InvalidCandidateInputError(f"X'X + l2 I is not positive definite (LAPACK info {info})")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise InvalidCandidateInputError(f"inverting X'X + l2 I failed (LAPACK info {info})")
    # potri fills the lower triangle: mirror it, then B = -P / diag(P) column-wise, zero diagonal.
    mirror_lower_triangle(inverse)
    diagonal = np.diag(inverse).copy()
    inverse /= -diagonal[None, :]
    np.fill_diagonal(inverse, 0.0)
    return inverse


def mirror_lower_triangle(square: np.ndarray, block: int = 256) -> None:
    """Copy the strict lower triangle onto the upper one in place, a band of rows at a time.

    Band copies run at memory speed; indexing the 8M upper positions of a 4,000-item matrix at once
    took about a second per EASE fit.
    """
    n = square.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        square[start:stop, stop:] = square[stop:, start:stop].T
        diagonal_block = square[start:stop, start:stop]
        upper = np.triu_indices(stop - start, 1)
        diagonal_block[upper] = diagonal_block.T[upper]


def default_candidate() -> CoPurchaseCandidate:
    """What a shop with too little data for a comparison gets: today's co-purchase model and prior."""
    return CoPurchaseCandidate(beta=None)


# Hyper-parameters a blend sets on all its members alike (and beta, which only the blend applies).
SHARED_PARAMS = ("beta", "n_neighbours", "n_popular", "max_cart_items", "popularity_half_life_days")


def candidate_spec(model) -> dict:
    """{"name", "params"} of a candidate as a blend member: its own hyper-parameters, not the shared ones."""
    params = {key: value for key, value in model.get_params().items()
              if key not in SHARED_PARAMS and key != "num_threads"}
    return {"name": model.name, "params": params}


def candidate_from_spec(name: str, params: dict):
    """The unfitted candidate of a name and its hyper-parameters (a report row, a blend member)."""
    params = dict(params or {})
    if name == "co_purchase":
        return CoPurchaseCandidate(**params)
    if name == "conditional_probability":
        return ConditionalProbabilityCandidate(**params)
    if name == "naive_bayes":
        return NaiveBayesCandidate(**params)
    if name == "softmax":
        return SoftmaxCandidate(**params)
    if name in ("knn_cosine", "knn_bm25"):
        params.setdefault("weighting", name.split("_", 1)[1])
        return ImplicitKNNCandidate(**params)
    if name == "ease":
        return EASECandidate(**params)
    if name == "blend":
        return BlendCandidate(**params)
    raise ValueError(f"unknown candidate {name!r}")


# What NeighbourCandidate._fit_prior learns from the baskets, times, n_popular and the half-life.
PRIOR_ATTRIBUTES = ("n_items_", "item_counts_", "popularity_", "popular_items_", "popular_scores_")


class BlendCandidate(NeighbourCandidate):
    """A weighted sum of other candidates' scaled neighbour lists, pruned to n_neighbours per item.

    Every candidate's cart score is linear in its (scaled) lists, so a blend of their cart scores is
    served by the weighted sum of the lists: serving is unchanged. members: [{"name", "params"}]
    (candidate_spec rows, beta left out), weights: one non-negative weight per member; the blend's
    own scale and beta apply to the sum as to any candidate.
    """

    name = "blend"
    reported_params = ("beta", "members", "weights")

    def __init__(self, members=(), weights=(), beta=0.0, n_neighbours=50, n_popular=200, max_cart_items=20,
                 popularity_half_life_days=60.0):
        self.members = members
        self.weights = weights
        self.beta = beta
        self.n_neighbours = n_neighbours
        self.n_popular = n_popular
        self.max_cart_items = max_cart_items
        self.popularity_half_life_days = popularity_half_life_days

    def member_models(self) -> list:
        """The unfitted members, with the blend's shared settings and no popularity of their own."""
        if len(self.members) < 1 or len(self.members) != len(self.weights) or min(self.weights) < 0:
            raise InvalidCandidateInputError("a blend needs one non-negative weight per member, and a member")
        shared = {"n_neighbours": self.n_neighbours, "n_popular": self.n_popular, "beta": 0.0,
                  "max_cart_items": self.max_cart_items, "popularity_half_life_days": self.popularity_half_life_days}
        return [candidate_from_spec(member["name"], {**member.get("params", {}), **shared}) for member in self.members]

    def _neighbour_matrix(self, matrix, basket_times):
        return self._blend([member.fit(matrix, basket_times) for member in self.member_models()])

    def fit_members(self, fitted_members, baskets, basket_times=None):
        """Fit from members already fitted on the same baskets and times (selection's weight grid refits nothing)."""
        self.member_models()  # the same checks as fit
        prior = next((member for member in fitted_members if self._same_prior(member, baskets)), None)
        if prior is None:
            self._fit_prior(baskets, basket_times)
        else:
            # A member fitted on the same baskets with the same prior settings learned this very prior:
            # selection's weight grid blends ten times on one matrix, each refit of it cost ~0.4 s at 1M.
            for name in PRIOR_ATTRIBUTES:
                setattr(self, name, getattr(prior, name))
        return self._fit_neighbours(self._blend(fitted_members))

    def _same_prior(self, member, baskets) -> bool:
        """Whether a fitted member's popularity prior is the one this blend would learn on baskets."""
        return (getattr(member, "n_items_", None) == baskets.shape[1] and member.n_popular == self.n_popular
                and member.popularity_half_life_days == self.popularity_half_life_days)

    def _blend(self, fitted_members) -> sp.csr_matrix:
        """The weighted sum of the members' scaled lists."""
        self.members_ = list(fitted_members)
        total = sp.csr_matrix((self.n_items_, self.n_items_), dtype=np.float64)
        for weight, member in zip(self.weights, fitted_members):
            if weight > 0:
                total = total + float(weight) * member.scores_
        return total
