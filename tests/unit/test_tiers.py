"""Tests for services.segmentation.tiers."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from services.segmentation.tiers import (
    TIERS,
    InvalidInput,
    InvalidRules,
    TierRequirement,
    TierRules,
    apply_tier_transitions,
    candidate_tiers,
    spend_to_next_tier,
)

AS_OF = pd.Timestamp("2024-06-30")


def _rfm(rows):
    return pd.DataFrame(rows, columns=["monetary", "r", "f", "m"])


def test_tiers_order():
    assert TIERS == ("regular", "silver", "gold", "black")


def test_candidate_tiers_default_rules():
    frame = _rfm(
        [
            (100.0, 5, 1, 1),  # small spend, low F -> regular
            (499.99, 3, 2, 2),  # just below silver spend
            (500.0, 1, 1, 3),  # silver by spend
            (150.0, 2, 3, 1),  # silver by frequency score (the "or" route)
            (2500.0, 3, 3, 5),  # gold spend but F 3 -> silver only
            (2500.0, 3, 4, 5),  # gold
            (9000.0, 3, 5, 5),  # black spend but lapsed (R 3) -> gold
            (9000.0, 4, 5, 5),  # black
            (np.nan, 1, 1, 1),  # no spend known -> regular
        ]
    )
    expected = ["regular", "regular", "silver", "silver", "silver", "gold", "gold", "black", "regular"]
    assert list(candidate_tiers(frame, TierRules())) == expected


def test_candidate_tiers_custom_rules():
    rules = TierRules(
        silver=TierRequirement(min_spend=100.0),
        gold=TierRequirement(min_spend=200.0),
        black=TierRequirement(min_spend=300.0, min_monetary_score=5),
    )
    frame = _rfm([(150.0, 1, 1, 1), (250.0, 1, 1, 1), (350.0, 1, 1, 4), (350.0, 1, 1, 5)])
    assert list(candidate_tiers(frame, rules)) == ["silver", "gold", "gold", "black"]


def test_invalid_rules_are_typed_errors():
    with pytest.raises(InvalidRules):
        TierRequirement(min_spend=10.0, combine="or")  # "or" without a score condition
    with pytest.raises(InvalidRules):
        TierRequirement(min_spend=10.0, combine="xor")
    with pytest.raises(InvalidRules):
        TierRules(downgrade_grace_days=-1)
    with pytest.raises(InvalidRules):
        TierRules(gold=TierRequirement(min_spend=100.0))  # cheaper than silver
    with pytest.raises(InvalidInput):
        candidate_tiers(pd.DataFrame({"monetary": [1.0]}), TierRules())


def _transition(previous, since, pending, candidate, as_of, rules=TierRules()):
    return apply_tier_transitions(
        np.array(previous, dtype=object),
        pd.to_datetime(since),
        pd.to_datetime(pending),
        np.array(candidate, dtype=object),
        as_of,
        rules,
    )


def test_new_customer_and_upgrade_are_immediate():
    result = _transition(
        [None, np.nan, "silver", "regular"],
        [None, None, "2024-01-01", "2023-05-01"],
        [None, None, "2024-06-20", None],
        ["silver", "regular", "gold", "black"],
        AS_OF,
    )
    assert list(result["tier"]) == ["silver", "regular", "gold", "black"]
    assert (result["since"] == AS_OF).all()
    # An upgrade also clears a pending downgrade.
    assert result["pending_since"].isna().all()


def test_downgrade_waits_for_grace_period():
    rules = TierRules(downgrade_grace_days=30)
    state = _transition(["gold"], ["2024-01-01"], [None], ["silver"], "2024-06-01", rules)
    # Day 0 of qualifying lower: keep gold, start the clock.
    assert state.loc[0, "tier"] == "gold"
    assert state.loc[0, "since"] == pd.Timestamp("2024-01-01")
    assert state.loc[0, "pending_since"] == pd.Timestamp("2024-06-01")

    for day in pd.date_range("2024-06-02", "2024-06-30"):
        state = apply_tier_transitions(
            state["tier"], state["since"], state["pending_since"], np.array(["regular"], dtype=object), day, rules
        )
        assert state.loc[0, "tier"] == "gold", day
        assert state.loc[0, "pending_since"] == pd.Timestamp("2024-06-01")

    # 30 days after first qualifying lower: moves to today's candidate.
    state = apply_tier_transitions(
        state["tier"], state["since"], state["pending_since"], np.array(["regular"], dtype=object),
        pd.Timestamp("2024-07-01"), rules,
    )
    assert state.loc[0, "tier"] == "regular"
    assert state.loc[0, "since"] == pd.Timestamp("2024-07-01")
    assert pd.isna(state.loc[0, "pending_since"])


def test_requalifying_cancels_pending_downgrade():
    state = _transition(["gold"], ["2024-01-01"], ["2024-06-10"], ["gold"], AS_OF)
    assert state.loc[0, "tier"] == "gold"
    assert pd.isna(state.loc[0, "pending_since"])
    # Next dip starts a fresh 30-day clock.
    state = _transition(["gold"], ["2024-01-01"], [None], ["silver"], "2024-07-05")
    assert state.loc[0, "tier"] == "gold"
    assert state.loc[0, "pending_since"] == pd.Timestamp("2024-07-05")


def test_zero_grace_downgrades_immediately():
    rules = replace(TierRules(), downgrade_grace_days=0)
    state = _transition(["black"], ["2024-01-01"], [None], ["silver"], AS_OF, rules)
    assert state.loc[0, "tier"] == "silver"
    assert state.loc[0, "since"] == AS_OF


def test_transitions_are_vectorised_and_keep_series_index():
    candidate = pd.Series(["gold", "regular", "silver"], index=["c1", "c2", "c3"], dtype=object)
    result = apply_tier_transitions(
        pd.Series(["silver", "gold", "silver"], index=candidate.index, dtype=object),
        pd.Series(pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]), index=candidate.index),
        pd.Series(pd.to_datetime([None, "2024-05-01", None]), index=candidate.index),
        candidate,
        AS_OF,
        TierRules(),
    )
    assert list(result.index) == ["c1", "c2", "c3"]
    assert list(result["tier"]) == ["gold", "regular", "silver"]
    assert list(result["since"]) == [AS_OF, AS_OF, pd.Timestamp("2024-03-01")]
    assert result["pending_since"].isna().all()


def test_unknown_tier_name_raises():
    with pytest.raises(InvalidInput):
        _transition(["platinum"], ["2024-01-01"], [None], ["gold"], AS_OF)
    with pytest.raises(InvalidInput):
        _transition(["gold"], ["2024-01-01"], [None], [None], AS_OF)


def test_spend_to_next_tier():
    gaps = spend_to_next_tier(
        [120.0, 650.0, 2400.0, 9500.0, 3000.0, np.nan],
        ["regular", "silver", "gold", "black", "regular", "regular"],
        TierRules(),
    )
    np.testing.assert_allclose(gaps[:3], [380.0, 1350.0, 5600.0])
    assert np.isnan(gaps[3])
    # Already spends enough (waiting for a score condition): nothing more to spend.
    assert gaps[4] == 0.0
    assert gaps[5] == 500.0
