"""Tests for services.segmentation.rfm."""

import numpy as np
import pandas as pd
import pytest

from services.segmentation.rfm import (
    DEFAULT_SEGMENT_MAP,
    SEGMENT_MAPS,
    SEGMENT_NAMES,
    InvalidInput,
    NotFittedError,
    RFMScorer,
    assign_segments,
    build_rfm_frame,
    quintile_edges,
    score_quintiles,
)


def _reference_scores(values, higher_is_better=True):
    """Independent statement of the tie rule: 1 + floor(5 * share strictly worse)."""
    series = pd.Series(values, dtype=float)
    oriented = series if higher_is_better else -series
    valid = oriented.dropna()
    # rank(method="min") - 1 = number of valid values strictly below.
    strictly_worse = oriented.rank(method="min") - 1
    scores = 1 + np.floor(5 * strictly_worse / len(valid))
    return scores.fillna(1).astype(int).to_numpy()


def _population(size, seed):
    rng = np.random.default_rng(seed)
    frequency = rng.geometric(0.55, size=size)
    recency = rng.integers(0, 365, size=size).astype(float)
    monetary = np.round(frequency * rng.gamma(2.0, 80.0, size=size), 2)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(size),
            "recency_days": recency,
            "frequency": frequency,
            "monetary": monetary,
        }
    )
    # A few customers whose only orders were refunded.
    frame.loc[frame.index[::97], ["recency_days", "frequency", "monetary"]] = [np.nan, 0, 0.0]
    return frame


# --- score_quintiles ------------------------------------------------------------


def test_ten_distinct_customers_get_two_per_score():
    values = [50, 10, 40, 20, 30, 90, 60, 80, 70, 100]
    np.testing.assert_array_equal(score_quintiles(values), [3, 1, 2, 1, 2, 5, 3, 4, 4, 5])
    # Lower is better (recency): order reversed.
    np.testing.assert_array_equal(score_quintiles(values, higher_is_better=False), [3, 5, 4, 5, 4, 1, 3, 2, 2, 1])


def test_single_customer_and_all_equal_score_one():
    np.testing.assert_array_equal(score_quintiles([42.0]), [1])
    np.testing.assert_array_equal(score_quintiles([3.0], higher_is_better=False), [1])
    np.testing.assert_array_equal(score_quintiles([7, 7, 7, 7]), [1, 1, 1, 1])
    assert score_quintiles([]).shape == (0,)


def test_heavy_ties_eighty_percent_single_order():
    frequency = np.array([1] * 80 + [2] * 12 + [3] * 5 + [9] * 3)
    scores = score_quintiles(frequency)
    assert scores.dtype == np.int8
    assert set(scores[frequency == 1]) == {1}
    assert set(scores[frequency > 1]) == {5}


def test_equal_values_always_equal_scores_and_order_independent():
    rng = np.random.default_rng(7)
    values = rng.integers(0, 6, size=503).astype(float)
    scores = score_quintiles(values)
    for value in np.unique(values):
        assert len(set(scores[values == value])) == 1
    permutation = rng.permutation(values.size)
    np.testing.assert_array_equal(score_quintiles(values[permutation]), scores[permutation])
    np.testing.assert_array_equal(scores, _reference_scores(values))


def test_matches_reference_rule_on_many_random_populations():
    rng = np.random.default_rng(11)
    for size in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 23, 100, 1001):
        values = np.round(rng.gamma(1.5, 30.0, size=size))
        for higher_is_better in (True, False):
            np.testing.assert_array_equal(
                score_quintiles(values, higher_is_better), _reference_scores(values, higher_is_better)
            )


def test_nan_scores_one_and_is_not_counted():
    values = [np.nan, 10, 20, 30, 40, 50]
    np.testing.assert_array_equal(score_quintiles(values), [1, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(score_quintiles(values, higher_is_better=False), [1, 5, 4, 3, 2, 1])


def test_quintile_edges_are_in_value_units():
    np.testing.assert_array_equal(quintile_edges(np.arange(1, 11)), [2, 4, 6, 8])
    # Recency: score 5 needs fewer than 2 days (strictly below the edge 2).
    np.testing.assert_array_equal(quintile_edges(np.arange(1, 11), higher_is_better=False), [9, 7, 5, 3])


# --- segment maps -------------------------------------------------------------------


def test_segment_maps_use_glossary_names():
    assert DEFAULT_SEGMENT_MAP == "rf_grid_v1"
    assert {"rf_grid_v1", "rfm_package_v1"} <= set(SEGMENT_MAPS)
    for segment_map in SEGMENT_MAPS.values():
        for rule in segment_map.rules:
            assert rule.name in SEGMENT_NAMES
    assert {rule.name for rule in SEGMENT_MAPS["rf_grid_v1"].rules} == set(SEGMENT_NAMES)


def test_rf_grid_covers_every_cell():
    recency, frequency = np.meshgrid(np.arange(1, 6), np.arange(1, 6), indexing="ij")
    segments = assign_segments(recency.ravel(), frequency.ravel(), np.full(25, 3), "rf_grid_v1")
    assert "Others" not in set(segments)
    grid = dict(zip(zip(recency.ravel(), frequency.ravel()), segments))
    assert grid[(5, 5)] == "Champions"
    assert grid[(5, 4)] == "Champions"
    assert grid[(5, 1)] == "New"
    assert grid[(4, 1)] == "Promising"
    assert grid[(4, 2)] == "Potential Loyalist"
    assert grid[(4, 5)] == "Loyal"
    assert grid[(3, 3)] == "Need Attention"
    assert grid[(3, 1)] == "About to Sleep"
    assert grid[(2, 3)] == "At Risk"
    assert grid[(1, 5)] == "Can't Lose Them"
    assert grid[(2, 2)] == "Hibernating"
    assert grid[(1, 1)] == "Lost"


def test_rfm_package_map_first_match_and_others():
    segments = assign_segments([5, 4, 1, 1, 2, 5, 5], [5, 4, 5, 1, 2, 1, 2], [5, 3, 5, 1, 2, 5, 5], "rfm_package_v1")
    assert segments[0] == "Champions"
    assert segments[1] == "Loyal"  # M3 fails Champions' M >= 4
    assert segments[2] == "At Risk"  # matches At Risk before Can't Lose Them
    assert segments[3] == "Lost"
    assert segments[4] == "Need Attention"
    # Unmatched in the R package -> "Others".
    assert segments[5] == "Others"
    assert segments[6] == "Others"
    # Faithful quirk: Potential Loyalist (R3-5, F1-3, M1-3) comes first and shadows New.
    assert assign_segments([5], [1], [1], "rfm_package_v1")[0] == "Potential Loyalist"


def test_unknown_segment_map_is_a_typed_error():
    with pytest.raises(InvalidInput):
        assign_segments([1], [1], [1], "no_such_map")
    with pytest.raises(InvalidInput):
        RFMScorer(segment_map="nope").fit(_population(20, 1))


# --- scorer ---------------------------------------------------------------------------


def test_shard_scoring_equals_whole_population_scoring():
    population = _population(2_000, seed=3)
    scorer = RFMScorer().fit(population)
    whole = scorer.transform(population)
    boundaries = [0, 1, 300, 301, 999, 1500, 2_000]
    shards = [scorer.transform(population.iloc[start:stop]) for start, stop in zip(boundaries, boundaries[1:])]
    pd.testing.assert_frame_equal(pd.concat(shards), whole)

    # ...and equals score_quintiles on the paying population in one go.
    paying = population["recency_days"].notna()
    np.testing.assert_array_equal(
        whole.loc[paying, "r"], score_quintiles(population.loc[paying, "recency_days"], higher_is_better=False)
    )
    np.testing.assert_array_equal(whole.loc[paying, "f"], score_quintiles(population.loc[paying, "frequency"]))
    np.testing.assert_array_equal(whole.loc[paying, "m"], score_quintiles(population.loc[paying, "monetary"]))


def test_transform_columns_and_segments():
    population = _population(500, seed=5)
    scored = RFMScorer().fit_transform(population)
    for column in ("recency_days", "frequency", "monetary", "r", "f", "m", "segment"):
        assert column in scored.columns
    assert scored[["r", "f", "m"]].isin([1, 2, 3, 4, 5]).all().all()
    assert set(scored["segment"]) <= set(SEGMENT_NAMES)
    assert (scored.index == population.index).all()


def test_all_refunded_customer_is_lost_with_ones():
    frame = pd.DataFrame(
        {
            "customer_id": ["paid-a", "paid-b", "refunded"],
            "recency_days": [3.0, 200.0, np.nan],
            "frequency": [4, 1, 0],
            "monetary": [900.0, 120.0, -15.0],
        }
    )
    scored = RFMScorer().fit_transform(frame)
    refunded = scored.loc[scored["customer_id"] == "refunded"].iloc[0]
    assert (refunded["r"], refunded["f"], refunded["m"]) == (1, 1, 1)
    assert refunded["segment"] == "Lost"
    # The refunded customer is not part of the ranked population.
    assert scored.loc[0, "r"] == 3 and scored.loc[1, "r"] == 1


def test_one_customer_and_ten_customers_do_not_crash():
    one = pd.DataFrame({"customer_id": [1], "recency_days": [2.0], "frequency": [1], "monetary": [99.0]})
    scored = RFMScorer().fit_transform(one)
    assert (scored.loc[0, "r"], scored.loc[0, "f"], scored.loc[0, "m"]) == (1, 1, 1)
    ten = pd.DataFrame(
        {
            "customer_id": range(10),
            "recency_days": [1.0, 5, 9, 20, 40, 60, 90, 150, 250, 360],
            "frequency": [12, 9, 7, 5, 4, 3, 2, 1, 1, 1],
            "monetary": [3000.0, 1500, 900, 700, 500, 300, 250, 120, 100, 80],
        }
    )
    scored = RFMScorer().fit_transform(ten)
    assert list(scored["r"]) == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert list(scored["f"]) == [5, 5, 4, 4, 3, 3, 2, 1, 1, 1]
    assert scored.loc[0, "segment"] == "Champions"
    assert scored.loc[9, "segment"] == "Lost"
    assert scored.loc[8, "segment"] == "Lost"
    assert scored.loc[6, "segment"] == "Hibernating"


def test_nobody_paid_at_all():
    frame = pd.DataFrame({"customer_id": [1, 2], "recency_days": [np.nan, np.nan], "frequency": [0, 0], "monetary": [0.0, -5.0]})
    scored = RFMScorer().fit_transform(frame)
    assert list(scored["segment"]) == ["Lost", "Lost"]
    assert list(scored["r"]) == [1, 1]


def test_transform_before_fit_and_bad_columns_raise():
    with pytest.raises(NotFittedError):
        RFMScorer().transform(_population(5, 1))
    with pytest.raises(InvalidInput):
        RFMScorer().fit(pd.DataFrame({"customer_id": [1], "frequency": [1]}))
    with pytest.raises(InvalidInput):
        RFMScorer().fit(pd.DataFrame({"customer_id": [1], "recency_days": [-1.0], "frequency": [1], "monetary": [1.0]}))


def test_fit_keeps_hyper_parameters_and_returns_self():
    scorer = RFMScorer(window_days=180, segment_map="rfm_package_v1")
    assert scorer.fit(_population(50, 2)) is scorer
    assert scorer.window_days == 180 and scorer.segment_map == "rfm_package_v1"
    assert scorer.recency_edges_.shape == scorer.frequency_edges_.shape == scorer.monetary_edges_.shape == (4,)


# --- features from orders ---------------------------------------------------------------


def test_build_rfm_frame_from_orders():
    as_of = pd.Timestamp("2024-06-30 23:00")
    orders = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "b", "c", "d"],
            "paid_at": pd.to_datetime(
                ["2024-06-20 10:00", "2024-01-05 00:00", "2023-01-01 00:00", "2024-05-01 00:00", "2024-06-29 00:00", "2024-03-01 00:00", None]
            ),
            "amount": [100.0, 200.0, 50.0, 80.0, 40.0, 60.0, 30.0],
            "refunded_amount": [0.0, 50.0, 0.0, 0.0, 40.0, 60.0, 0.0],
        }
    )
    frame = build_rfm_frame(orders, as_of, window_days=365).set_index("customer_id")
    # a: last paid 2024-06-20 -> 10 days; 2 orders in window; 100 + 150 net.
    assert frame.loc["a", "recency_days"] == 10
    assert frame.loc["a", "frequency"] == 2
    assert frame.loc["a", "monetary"] == pytest.approx(250.0)
    # b: the 06-29 order was fully refunded, so it is not a paid order.
    assert frame.loc["b", "recency_days"] == 60
    assert frame.loc["b", "frequency"] == 1
    assert frame.loc["b", "monetary"] == pytest.approx(80.0)
    # c: everything refunded; d: never paid.
    assert np.isnan(frame.loc["c", "recency_days"]) and frame.loc["c", "frequency"] == 0
    assert np.isnan(frame.loc["d", "recency_days"]) and frame.loc["d", "monetary"] == 0
    shorter = RFMScorer(window_days=30).features_from_orders(orders, as_of).set_index("customer_id")
    assert shorter.loc["a", "frequency"] == 1
    assert shorter.loc["a", "monetary"] == pytest.approx(100.0)


def test_lapsed_customers_do_not_inflate_frequency_of_recent_one_order_buyers():
    """F ranks window buyers: a recent one-order customer is F=1 ('New'), however many have lapsed."""
    lapsed = 60
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(100)],
            # 60 lapsed customers (last order 500+ days ago, none in the window), 40 window buyers.
            "recency_days": [500.0 + i for i in range(lapsed)] + [float(i) for i in range(40)],
            "frequency": [0] * lapsed + [1] * 20 + [2] * 10 + [5] * 10,
            "monetary": [0.0] * lapsed + [50.0] * 20 + [120.0] * 10 + [600.0] * 10,
        }
    )
    scored = RFMScorer().fit_transform(frame)
    recent_single = scored.iloc[lapsed:lapsed + 5]
    assert (recent_single["f"] == 1).all()
    assert (recent_single["segment"] == "New").all()
    assert (scored.iloc[:lapsed]["f"] == 1).all()
    # Among the 40 window buyers: 20 have one order, so two orders beat half of them (F=3) and
    # five orders beat three quarters (F=4).
    assert scored.iloc[lapsed + 25]["f"] == 3
    assert scored.iloc[-1]["f"] == 4
