"""Unit tests for the candidate cart models: exact small answers and the served-scoring contract."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from services.recommend import evaluation
from services.recommend.candidates import (
    BlendCandidate,
    CoPurchaseCandidate,
    ConditionalProbabilityCandidate,
    EASECandidate,
    ImplicitKNNCandidate,
    EASEShared,
    PRIOR_ATTRIBUTES,
    InvalidCandidateInputError,
    binary_baskets,
    NaiveBayesCandidate,
    SoftmaxCandidate,
    completion_cases,
    candidate_spec,
    dense_prune_rows,
    ease_weights,
    mirror_lower_triangle,
    pair_counts,
    prune_rows,
)
from services.recommend.crosssell import recommend_for_cart
from services.recommend.selection import candidate_from_row, evaluate_fitted

# Four baskets over four items: 0 and 1 go together, 2 is alone twice, 3 with 0 once.
BASKETS = sp.csr_matrix(np.array([
    [1, 1, 0, 0],
    [1, 1, 0, 1],
    [0, 0, 1, 0],
    [0, 1, 1, 0],
], dtype=np.float32))


def test_conditional_probability_is_the_share_of_the_anchor_orders():
    model = ConditionalProbabilityCandidate(beta=0.0).fit(BASKETS)
    raw = model.scores_.toarray() * model.scale_
    # P(1 | 0) = 2/2, P(3 | 0) = 1/2, P(0 | 1) = 2/3, P(2 | 1) = 1/3, P(1 | 2) = 1/2, P(0 | 3) = P(1 | 3) = 1
    expected = np.array([[0, 1, 0, 0.5], [2 / 3, 0, 1 / 3, 1 / 3], [0, 0.5, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(raw, expected, rtol=1e-6)
    items, scores = model.neighbours(1, 2)
    np.testing.assert_array_equal(items, [0, 2])  # 2 and 3 tie at 1/3: the lower index first


def test_scale_is_the_count_weighted_mean_of_row_maxima():
    model = ConditionalProbabilityCandidate(beta=0.0).fit(BASKETS)
    # Row maxima 1, 2/3, 1/2, 1 weighted by item counts 2, 3, 2, 1.
    assert model.scale_ == pytest.approx((2 * 1 + 3 * 2 / 3 + 2 * 0.5 + 1 * 1) / 8)
    assert model.popular_scores_[0] == 1.0 and model.popular_items_[0] == 1


def test_cosine_and_bm25_come_from_implicit():
    cosine = ImplicitKNNCandidate(weighting="cosine").fit(BASKETS)
    raw = cosine.scores_.toarray() * cosine.scale_
    # cos(0, 1) = 2 / sqrt(2 * 3); cos(0, 3) = 1 / sqrt(2); cos(1, 2) = 1 / sqrt(6)
    assert raw[0, 1] == pytest.approx(2 / np.sqrt(6), rel=1e-5)
    assert raw[0, 3] == pytest.approx(1 / np.sqrt(2), rel=1e-5)
    assert raw[1, 2] == pytest.approx(1 / np.sqrt(6), rel=1e-5)
    assert raw[0, 2] == 0.0
    bm25 = ImplicitKNNCandidate(weighting="bm25").fit(BASKETS)
    # BM25's idf of a basket is log(4 items) - log(1 + its size): the 3-item basket weighs 0, so the
    # pairs it alone holds (0-3, 1-3) vanish, while 0-1 (also in basket 0) and 1-2 stay.
    assert {(int(i), int(j)) for i, j in zip(*bm25.scores_.nonzero())} == {(0, 1), (1, 0), (1, 2), (2, 1)}


def test_ease_matches_the_closed_form():
    l2 = 0.5
    gram = (BASKETS.T @ BASKETS).toarray().astype(float) + l2 * np.eye(4)
    inverse = np.linalg.inv(gram)
    expected = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ease_weights(BASKETS, l2), expected, rtol=1e-4, atol=1e-6)
    model = EASECandidate(l2_ratio=l2 / 2.0).fit(BASKETS)  # mean count of the 4 items is 2
    raw = model.scores_.toarray() * model.scale_
    np.testing.assert_allclose(raw, np.where(expected > 0, expected, 0.0), rtol=1e-4, atol=1e-6)


def test_ease_items_beyond_the_cap_get_cosine_lists():
    model = EASECandidate(l2_ratio=0.2, max_items=2).fit(BASKETS)
    np.testing.assert_array_equal(model.ease_items_, [0, 1])  # the two most sold (1: 3 orders; 0 ties 2: lower)
    # Items 2 and 3 are outside EASE: their lists are cosine's.
    assert set(model.scores_[3].indices) == {0, 1}
    assert set(model.scores_[2].indices) == {1}
    assert set(model.scores_[0].indices) <= {1}  # an EASE row only holds EASE items


def test_co_purchase_with_beta_none_is_todays_model():
    data = evaluation.synthetic_strong_pairs(n_baskets=800, random_state=1)
    model = CoPurchaseCandidate(beta=None).fit(data["baskets"], data["times"])
    assert model.scale_ == 1.0
    np.testing.assert_allclose(model.scores_.toarray(), model.model_.scores_.toarray())
    assert model.popularity_weight_ == pytest.approx(model.model_.popularity_.max())


def test_vectorised_evaluation_equals_the_served_merge():
    data = evaluation.synthetic_long_tail(n_baskets=3000, n_items=300, random_state=4)
    train, times, cases = evaluation.split_and_cases(data["baskets"], data["times"])
    for model in (EASECandidate(l2_ratio=0.3, beta=1.0, max_items=150), CoPurchaseCandidate(beta=None),
                  NaiveBayesCandidate(beta=1.0), SoftmaxCandidate(beta=1.0, max_cases=3000)):
        model.fit(train, times)
        served = evaluation.evaluate_cart_recommender(lambda cart, k: recommend_for_cart(model, cart, k)[0], cases)
        (_weight, hit_rate, ndcg), = evaluate_fitted(model, cases)
        assert hit_rate == pytest.approx(served["hit_rate"])
        assert ndcg == pytest.approx(served["ndcg"])


def test_naive_bayes_lists_are_smoothed_pointwise_mutual_information_and_its_prior_log_popularity():
    model = NaiveBayesCandidate(beta=1.0, smoothing=1.0).fit(BASKETS)
    assert model.scale_ == 1.0
    # Item shares with half a pseudo-order: (count + 0.5) / (4 orders + 1) = 0.5, 0.7, 0.5, 0.3.
    # PMI(i, j) = log(P(i | j) / P(i)), P(i | j) = (together + share_i) / (count_j + 1); row i, column j.
    expected = np.zeros((4, 4))
    expected[0, 1] = np.log((2 + 0.5) / (3 + 1) / 0.5)
    expected[0, 3] = np.log((1 + 0.5) / (1 + 1) / 0.5)
    expected[1, 0] = np.log((2 + 0.7) / (2 + 1) / 0.7)
    expected[1, 3] = np.log((1 + 0.7) / (1 + 1) / 0.7)
    expected[3, 0] = np.log((1 + 0.3) / (2 + 1) / 0.3)
    expected[3, 1] = np.log((1 + 0.3) / (3 + 1) / 0.3)
    # 1 and 2 share one order of their 3 and 2: less than chance, so neither list keeps the other.
    np.testing.assert_allclose(model.scores_.toarray(), expected, rtol=1e-9)
    # Popularity 0.75, 0.5, 0.5, 0.25 (no times: no decay); the list's last item scores 0.
    np.testing.assert_array_equal(model.popular_items_, [1, 0, 2, 3])
    np.testing.assert_allclose(model.popular_scores_, np.log([3.0, 2.0, 2.0, 1.0]))
    scores = model.score_cart([0])
    assert scores[1] == pytest.approx(np.log(3.0) + expected[0, 1])
    assert scores[3] == pytest.approx(expected[0, 3])
    items, _scores = recommend_for_cart(model, [0], 3)
    assert items.tolist() == [1, 2, 3]


def test_naive_bayes_needs_positive_smoothing():
    with pytest.raises(InvalidCandidateInputError):
        NaiveBayesCandidate(smoothing=0.0).fit(BASKETS)


def test_completion_cases_take_each_item_out_of_each_order_of_two_or_more():
    carts, missing = completion_cases(sp.csr_matrix(BASKETS), max_cases=100)
    # Orders 0, 1 and 3 have 2+ items (order 2 has one): 2 + 3 + 2 cases, in order then item order.
    assert missing.tolist() == [0, 1, 0, 1, 3, 1, 2]
    assert [carts[row].indices.tolist() for row in range(7)] == [[1], [0], [1, 3], [0, 3], [0, 1], [2], [1]]
    sampled_carts, sampled_missing = completion_cases(sp.csr_matrix(BASKETS), max_cases=3, random_state=5)
    assert sampled_missing.size == 3 and sampled_carts.shape == (3, 4)


def test_softmax_serves_its_strongest_weights_of_both_signs_and_its_intercepts():
    data = evaluation.synthetic_dense_accessories(n_baskets=1500, random_state=3)
    model = SoftmaxCandidate(beta=1.0, n_neighbours=5).fit(data["baskets"], data["times"])
    cases = completion_cases(binary_baskets(data["baskets"]), 50_000)
    regression = LogisticRegression(C=10.0, max_iter=100).fit(*cases)
    weights = regression.coef_.T.copy()
    np.fill_diagonal(weights, 0.0)
    # Each row keeps its 5 largest positive and its 5 most negative weights.
    stored = model.scores_.toarray()
    for row in range(40):
        positive = np.sort(weights[row][weights[row] > 0])[::-1][:5]
        negative = np.sort(weights[row][weights[row] < 0])[:5]
        np.testing.assert_allclose(np.sort(stored[row][stored[row] > 0])[::-1], positive, rtol=1e-6)
        np.testing.assert_allclose(np.sort(stored[row][stored[row] < 0]), negative, rtol=1e-6)
    assert (stored < 0).any()
    order = np.lexsort((np.arange(40), -regression.intercept_))
    np.testing.assert_array_equal(model.popular_items_, order)
    np.testing.assert_allclose(model.popular_scores_, regression.intercept_[order] - regression.intercept_.min())
    # What training stores is what was fitted, negatives included; for-you reads the positive lists only.
    assert (model.stored_lists(5) != model.scores_).nnz == 0
    assert model.top_neighbours(5).data.min() > 0
    # A positive weight never comes without orders together: reasons name real evidence.
    naive_bayes = NaiveBayesCandidate().fit(data["baskets"], data["times"])
    for fitted in (model, naive_bayes):
        positive = fitted.top_neighbours(50)
        together = pair_counts(binary_baskets(data["baskets"]), positive)
        assert together.nnz == positive.nnz and together.data.min() >= 1

def test_score_cart_sums_the_rows_and_the_popularity_blend():
    model = ConditionalProbabilityCandidate(beta=2.0).fit(BASKETS)
    scores = model.score_cart([0, 3])
    expected = model.scores_[0].toarray().ravel() + model.scores_[3].toarray().ravel()
    expected[model.popular_items_] += 2.0 * model.popular_scores_
    np.testing.assert_allclose(scores, expected)


def test_pair_counts_of_stored_pairs_and_pruning():
    pattern = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=float))
    counts = pair_counts(BASKETS, pattern).toarray()
    np.testing.assert_array_equal(counts, [[0, 2, 0, 0], [2, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    pruned = prune_rows(sp.csr_matrix(np.array([[5.0, 1.0, 3.0, 3.0]])), 2)
    np.testing.assert_array_equal(pruned.indices, [2, 3])  # the diagonal (5) is dropped, ties by lower index


def test_invalid_input_raises():
    with pytest.raises(InvalidCandidateInputError):
        ConditionalProbabilityCandidate().fit(np.ones((2, 2)))
    with pytest.raises(InvalidCandidateInputError):
        ImplicitKNNCandidate(weighting="jaccard").fit(BASKETS)
    with pytest.raises(InvalidCandidateInputError):
        ease_weights(BASKETS, 0.0)


def test_a_blend_serves_the_weighted_sum_of_its_members_scaled_lists():
    data = evaluation.synthetic_long_tail(n_baskets=2000, n_items=200, random_state=2)
    members = [ConditionalProbabilityCandidate(shrinkage=1.0), ImplicitKNNCandidate(weighting="cosine")]
    blend = BlendCandidate(members=[candidate_spec(member) for member in members], weights=[0.3, 0.7],
                           n_neighbours=20).fit(data["baskets"], data["times"])
    fitted = [member.set_params(n_neighbours=20).fit(data["baskets"], data["times"]) for member in members]
    expected = prune_rows(0.3 * fitted[0].scores_ + 0.7 * fitted[1].scores_, 20)
    np.testing.assert_allclose((blend.scores_ * blend.scale_).toarray(), expected.toarray(), rtol=1e-9)
    assert blend.describe() == {"name": "blend", "params": {
        "beta": 0.0, "weights": [0.3, 0.7],
        "members": [{"name": "conditional_probability", "params": {"shrinkage": 1.0}},
                    {"name": "knn_cosine", "params": {"bm25_b": 0.75, "bm25_k1": 1.2, "weighting": "cosine"}}]}}
    # Fitted from fitted members (selection's weight search) it is the same model.
    again = BlendCandidate(**blend.get_params()).fit_members(fitted, data["baskets"], data["times"])
    np.testing.assert_allclose(again.scores_.toarray(), blend.scores_.toarray())


def test_a_blend_row_rebuilds_the_same_blend_and_is_scored_as_served():
    data = evaluation.synthetic_long_tail(n_baskets=3000, n_items=300, random_state=4)
    train, times, cases = evaluation.split_and_cases(data["baskets"], data["times"])
    members = [candidate_spec(EASECandidate(l2_ratio=0.3, max_items=150)), candidate_spec(CoPurchaseCandidate())]
    model = BlendCandidate(members=members, weights=[0.5, 0.5], beta=1.0).fit(train, times)
    rebuilt = candidate_from_row(model.describe()).fit(train, times)
    np.testing.assert_allclose(rebuilt.scores_.toarray(), model.scores_.toarray())
    assert rebuilt.members_[0].max_items == 150
    served = evaluation.evaluate_cart_recommender(lambda cart, k: recommend_for_cart(model, cart, k)[0], cases)
    (_weight, hit_rate, _ndcg), = evaluate_fitted(model, cases)
    assert hit_rate == pytest.approx(served["hit_rate"])
    with pytest.raises(InvalidCandidateInputError):
        BlendCandidate(members=members, weights=[1.0]).fit(train, times)


def test_an_l2_grid_on_shared_gram_gives_the_fits_of_their_own():
    data = evaluation.synthetic_long_tail(n_baskets=2000, n_items=200, random_state=3)
    shared = EASEShared.of(data["baskets"], 120, 50)
    for ratio in (0.1, 1.0):
        alone = EASECandidate(l2_ratio=ratio, max_items=120).fit(data["baskets"], data["times"])
        grid = EASECandidate(l2_ratio=ratio, max_items=120).fit(data["baskets"], data["times"], shared=shared)
        np.testing.assert_allclose(grid.scores_.toarray(), alone.scores_.toarray())
    dense = np.array([[0.0, 2.0, 1.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dense_prune_rows(dense, 2).toarray(), prune_rows(sp.csr_matrix(dense), 2).toarray())


@pytest.mark.parametrize("size", [1, 255, 256, 600])
def test_mirror_lower_triangle_makes_the_matrix_symmetric_from_its_lower_half(size):
    square = np.random.default_rng(size).random((size, size), dtype=np.float32)
    expected = np.tril(square) + np.tril(square, -1).T
    mirror_lower_triangle(square)
    np.testing.assert_array_equal(square, expected)


def test_a_blend_fitted_from_members_learns_the_prior_it_would_fit_itself():
    data = evaluation.synthetic_dense_accessories(n_baskets=800)
    members = [CoPurchaseCandidate(beta=0.0).fit(data["baskets"], data["times"]),
               EASECandidate(l2_ratio=0.3).fit(data["baskets"], data["times"])]
    blend = BlendCandidate(members=[candidate_spec(member) for member in members], weights=[0.5, 0.5], beta=0.3)
    reused = clone(blend).fit_members(members, data["baskets"], data["times"])
    refitted = clone(blend).fit(data["baskets"], data["times"])
    for name in PRIOR_ATTRIBUTES + ("popularity_weight_", "scale_"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(refitted, name))
    assert (reused.scores_ != refitted.scores_).nnz == 0
