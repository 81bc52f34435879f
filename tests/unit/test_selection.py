"""Unit tests for per-shop model selection: the split, and the right candidate winning on clear shapes."""

import numpy as np
import pytest
import scipy.sparse as sp

from services.recommend import evaluation
from services.recommend.candidates import (
    BlendCandidate,
    CoPurchaseCandidate,
    EASECandidate,
    NaiveBayesCandidate,
    SoftmaxCandidate,
)
from services.recommend.evaluation import split_and_cases, time_ordered_split
from services.recommend.selection import (
    SelectionSettings,
    blend_grid,
    candidate_from_row,
    evaluate_fitted,
    sampled_cases,
    unique_of_sorted_runs,
    select_model,
    validation_split,
)


def rows_to_csr(rows, n_items):
    indptr = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
    matrix = sp.csr_matrix((np.ones(indptr[-1]), np.concatenate(rows), indptr), shape=(len(rows), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def complement_shop(n_baskets=3000, n_groups=60, n_noise=40, seed=0):
    """Groups of three items bought together, plus one unrelated item per basket: popularity is noise."""
    rng = np.random.default_rng(seed)
    group_weight = 1.0 / np.arange(1, n_groups + 1) ** 0.5
    noise_weight = 1.0 / np.arange(1, n_noise + 1) ** 1.2
    rows = []
    for _ in range(n_baskets):
        group = rng.choice(n_groups, p=group_weight / group_weight.sum())
        members = 3 * group + rng.choice(3, size=rng.integers(2, 4), replace=False)
        noise = 3 * n_groups + rng.choice(n_noise, p=noise_weight / noise_weight.sum())
        rows.append(np.unique(np.append(members, noise)))
    return rows_to_csr(rows, 3 * n_groups + n_noise), np.sort(rng.uniform(0, 100, n_baskets))


def staple_shop(n_baskets=3000, n_items=80, seed=0):
    """Independent draws from a steep popularity: there is nothing but popularity to learn."""
    rng = np.random.default_rng(seed)
    weight = 1.0 / np.arange(1, n_items + 1) ** 1.3
    rows = [np.unique(rng.choice(n_items, size=rng.integers(2, 6), p=weight / weight.sum())) for _ in range(n_baskets)]
    return rows_to_csr(rows, n_items), np.sort(rng.uniform(0, 100, n_baskets))


def test_validation_split_is_the_last_fifth_by_time():
    times = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 0.0])
    fit_idx, validation_idx = validation_split(times, 0.2)
    np.testing.assert_array_equal(validation_idx, [6, 5])  # days 8 and 9
    assert times[fit_idx].max() < times[validation_idx].min()


def test_cases_hide_every_item_of_2_plus_baskets_and_sample_with_a_seed():
    baskets = rows_to_csr([np.array([0, 1, 2]), np.array([3]), np.array([1, 4])], 5)
    cases = sampled_cases(baskets, [0, 1, 2], max_cases=100)
    assert [(case.basket_index, case.hidden_item, case.cart_items.tolist()) for case in cases] == [
        (0, 0, [1, 2]), (0, 1, [0, 2]), (0, 2, [0, 1]), (2, 1, [4]), (2, 4, [1])]
    sample = sampled_cases(baskets, [0, 1, 2], max_cases=2, seed=7)
    assert len(sample) == 2 and [c.hidden_item for c in sample] == [c.hidden_item for c in
                                                                    sampled_cases(baskets, [0, 1, 2], 2, seed=7)]


def test_selection_never_sees_the_evaluation_holdout():
    baskets, times = complement_shop(n_baskets=1500)
    # Replace every held-out basket (the last 20 %) by one junk pair: the choice must not move.
    _train_idx, test_idx = time_ordered_split(times, 0.8)
    junk = baskets.tolil()
    for row in test_idx:
        junk.rows[row], junk.data[row] = [0, 179], [1.0, 1.0]
    settings = SelectionSettings(ease_l2_ratios=(0.3,))
    reports = []
    for matrix in (baskets, junk.tocsr()):
        train, train_times, _cases = split_and_cases(matrix, times)
        reports.append(select_model(train, train_times, settings)[1])
    for report in reports:
        report.pop("seconds")  # wall-clock timings differ between the two runs
    assert reports[0] == reports[1]
    assert reports[0]["fit_orders"] == 960 and reports[0]["cases"] == 845


def test_pure_complements_choose_a_neighbour_model_without_popularity():
    baskets, times = complement_shop()
    model, report = select_model(baskets, times)
    assert report["chosen"]["name"] in ("ease", "knn_cosine", "knn_bm25")
    assert report["chosen"]["params"]["beta"] <= 0.1
    assert isinstance(model, EASECandidate) and model.beta == report["chosen"]["params"]["beta"]
    default_row = report["candidates"][0]
    assert default_row["params"] == {"beta": None}
    assert report["chosen"]["hr_at_10"] > default_row["hr_at_10"] + 0.02


def test_staples_choose_popularity():
    baskets, times = staple_shop()
    model, report = select_model(baskets, times)
    # Popularity is all there is to learn: the choice is today's popularity-led model or a heavy blend.
    assert model.beta is None or model.beta >= 8.0
    assert report["chosen"]["hr_at_10"] >= max(row["hr_at_10"] for row in report["candidates"]) - 0.01
    _model, strict = select_model(baskets, times, SelectionSettings(default_margin_se=0.0))
    assert strict["chosen"]["params"]["beta"] >= 8.0


def test_habitual_sets_choose_naive_bayes():
    # Each customer rebuys from ~8 favourites around a personal theme: the missing item is the one that
    # goes with every cart item, which the product of evidence finds and a sum of neighbour scores blurs.
    shop = evaluation.synthetic_repeat_purchases(n_customers=800, random_state=1)
    train, train_times, cases = split_and_cases(shop["baskets"], shop["times"])
    model, report = select_model(train, train_times)
    # Naive Bayes, or a blend led by it where it does better still.
    chosen = report["chosen"]
    if chosen["name"] == "blend":
        lead = max(zip(chosen["params"]["weights"], chosen["params"]["members"]), key=lambda pair: pair[0])[1]
        assert lead["name"] == "naive_bayes"
    else:
        assert isinstance(model, NaiveBayesCandidate) and chosen["name"] == "naive_bayes"
    rows = [row for row in report["candidates"] if row["name"] not in ("naive_bayes", "blend")]
    assert max(row["hr_at_10"] for row in report["candidates"] if row["name"] == "naive_bayes") > max(
        row["hr_at_10"] for row in rows)
    # It holds on the held-out orders: better than the best cosine on the same cases.
    chosen_hit_rate = evaluate_fitted(candidate_from_row(report["chosen"]).fit(train, train_times), cases)[0][1]
    cosine = max((row for row in report["candidates"] if row["name"] == "knn_cosine"), key=lambda row: row["hr_at_10"])
    cosine_hit_rate = evaluate_fitted(candidate_from_row(cosine).fit(train, train_times), cases)[0][1]
    assert chosen_hit_rate > cosine_hit_rate


def test_a_device_and_accessories_catalogue_chooses_the_softmax_completion():
    # Universal accessories go into every family's orders: summed pair evidence lets them outvote the
    # family's own accessories, which weights fitted jointly to name the missing item do not.
    shop = evaluation.synthetic_dense_accessories(n_baskets=4000, random_state=2)
    train, train_times, cases = split_and_cases(shop["baskets"], shop["times"])
    model, report = select_model(train, train_times)
    assert report["chosen"]["name"] == "softmax" and isinstance(model, SoftmaxCandidate)
    pairwise = [row for row in report["candidates"] if row["name"] in ("knn_cosine", "knn_bm25", "ease")]
    best_pairwise = max(pairwise, key=lambda row: row["hr_at_10"])
    chosen_hit_rate = evaluate_fitted(candidate_from_row(report["chosen"]).fit(train, train_times), cases)[0][1]
    pairwise_hit_rate = evaluate_fitted(candidate_from_row(best_pairwise).fit(train, train_times), cases)[0][1]
    assert chosen_hit_rate > pairwise_hit_rate


def test_a_catalogue_above_the_softmax_cap_skips_it_and_says_so():
    baskets, times = staple_shop(n_baskets=1200, n_items=80)
    _model, report = select_model(baskets, times, SelectionSettings(softmax_max_items=50, ease_l2_ratios=(0.3,)))
    assert "softmax" not in {row["name"] for row in report["candidates"]}
    assert report["skipped"] == [
        {"name": "softmax", "params": {"beta": 1.0, "C": inverse_l2}, "why": "80 items, above SELECTION_SOFTMAX_MAX_ITEMS (50)"}
        for inverse_l2 in (0.3, 10.0)]


def test_too_few_cases_keep_the_default_and_say_so():
    baskets, times = staple_shop(n_baskets=300)
    model, report = select_model(baskets, times)
    assert isinstance(model, CoPurchaseCandidate) and model.beta is None
    assert report["candidates"] == [] and report["cases"] < 200
    assert report["reason"] == f"kept the default model: {report['cases']} validation cases, fewer than the 200 a comparison needs"


def test_a_report_row_rebuilds_its_candidate():
    candidate = candidate_from_row({"name": "ease", "params": {"beta": 2.0, "l2_ratio": 0.3}})
    assert isinstance(candidate, EASECandidate) and candidate.beta == 2.0 and candidate.l2_ratio == 0.3
    with pytest.raises(ValueError):
        candidate_from_row({"name": "svd", "params": {}})


def test_cases_scored_in_batches_give_the_figures_of_one_batch(monkeypatch):
    import services.recommend.selection as selection

    baskets, times = complement_shop(n_baskets=800)
    cases = sampled_cases(baskets, np.arange(600, 800), max_cases=500)
    model = EASECandidate(beta=1.0).fit(baskets[:600], times[:600])
    whole = selection.evaluate_fitted(model, cases, [0.0, 1.0])
    monkeypatch.setattr(selection, "CASES_PER_BATCH", 7)
    batched = selection.evaluate_fitted(model, cases, [0.0, 1.0])
    assert np.allclose(np.array(batched), np.array(whole)) and whole[0][1] == 0.922


def test_selection_can_be_switched_off():
    baskets, times = complement_shop(n_baskets=1500)
    model, report = select_model(baskets, times, SelectionSettings.from_config({"MODEL_SELECTION": False}))
    assert isinstance(model, CoPurchaseCandidate) and model.beta is None
    assert report["reason"] == "kept the default model: model selection is disabled (MODEL_SELECTION)"


def test_a_shop_without_orders_keeps_the_default_and_says_why():
    """An empty basket matrix (a shop with fewer than 50 orders) is reported, not an error."""
    model, report = select_model(sp.csr_matrix((0, 5), dtype=np.float32), np.zeros(0))
    assert report["chosen"]["name"] == "co_purchase"
    assert report["reason"] == "kept the default model: fewer than two orders in the training window"


def two_shops_in_one(n_sparse=2000, n_dense=1000):
    """A large sparse catalogue (co-purchase's shape) and a dense accessory one (kNN's) on disjoint skus."""
    sparse = evaluation.synthetic_large_sparse(n_baskets=n_sparse, n_items=600)
    dense = evaluation.synthetic_dense_accessories(n_baskets=n_dense)
    left, right = sparse["baskets"], dense["baskets"]
    baskets = sp.vstack([sp.hstack([left, sp.csr_matrix((left.shape[0], right.shape[1]))]),
                         sp.hstack([sp.csr_matrix((right.shape[0], left.shape[1])), right])]).tocsr()
    times = np.concatenate([shop["times"] - shop["times"].min() for shop in (sparse, dense)])
    return baskets, times


def test_a_blend_wins_where_different_models_win_on_different_parts_of_the_catalogue():
    baskets, times = two_shops_in_one()
    train, train_times, cases = split_and_cases(baskets, times)
    model, report = select_model(train, train_times)
    assert isinstance(model, BlendCandidate) and report["chosen"]["name"] == "blend"
    assert report["blend"]["kept"] is True and len(report["blend"]["searched"]) == len(blend_grid(3, (0.25, 0.5, 0.75)))
    singles = [row for row in report["candidates"] if row["name"] != "blend"]
    best_single = max(singles, key=lambda row: row["hr_at_10"])
    standard_error = np.sqrt(best_single["hr_at_10"] * (1 - best_single["hr_at_10"]) / report["cases"])
    assert report["chosen"]["hr_at_10"] > best_single["hr_at_10"] + standard_error
    # The choice holds on the held-out orders too, and the row rebuilds the same model.
    blend_hit_rate = evaluate_fitted(candidate_from_row(report["chosen"]).fit(train, train_times), cases)[0][1]
    single_hit_rate = evaluate_fitted(candidate_from_row(best_single).fit(train, train_times), cases)[0][1]
    assert blend_hit_rate > single_hit_rate


def test_a_blend_no_better_than_its_best_member_is_not_chosen():
    baskets, times = complement_shop()
    _model, report = select_model(baskets, times)
    assert report["chosen"]["name"] != "blend" and report["blend"]["kept"] is False
    assert report["blend"]["why"].startswith("the best blend (HR@10 ")
    assert blend_grid(2, (0.5,)) == [[0.5, 0.5]]


@pytest.mark.parametrize("max_cases", [50, 10_000])
def test_sampled_cases_match_the_per_item_loop_they_replace(max_cases):
    """Every (basket, item) case in basket then item order, the seeded sample drawn over that list."""
    rng = np.random.default_rng(3)
    rows = [rng.choice(30, size=rng.integers(1, 6)) for _ in range(200)]  # duplicates inside rows too
    indptr = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
    baskets = sp.csr_matrix((np.ones(indptr[-1]), np.concatenate(rows), indptr), shape=(200, 30))
    indices = rng.permutation(200)[:150]
    expected = []
    for basket in indices:
        items = np.unique(rows[basket])
        if items.size >= 2:
            expected += [(int(basket), int(hidden), items[items != hidden].tolist()) for hidden in items]
    if len(expected) > max_cases:
        picks = np.sort(np.random.default_rng(42).choice(len(expected), max_cases, replace=False))
        expected = [expected[pick] for pick in picks]
    cases = sampled_cases(baskets, indices, max_cases=max_cases, seed=42)
    assert [(case.basket_index, case.hidden_item, case.cart_items.tolist()) for case in cases] == expected


def test_unique_of_sorted_runs_is_np_unique():
    rng = np.random.default_rng(5)
    first = np.sort(rng.choice(1000, 300, replace=False)).astype(np.int64)
    second = np.sort(rng.choice(1000, 200, replace=False)).astype(np.int64)
    keys, inverse = unique_of_sorted_runs(first, second)
    expected_keys, expected_inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    np.testing.assert_array_equal(keys, expected_keys)
    np.testing.assert_array_equal(inverse, expected_inverse)
