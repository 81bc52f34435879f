"""Tests for services.segmentation.lifecycle."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from services.segmentation.clv import BetaGeoModel
from services.segmentation.lifecycle import (
    LIFECYCLE_STAGES,
    PROSPECT,
    InvalidInput,
    InvalidRules,
    LifecycleRules,
    assign_lifecycle,
    estimate_typical_gap_days,
    expected_gap_days,
    needs_repurchase_nudge,
)

AS_OF = pd.Timestamp("2024-06-30 02:00")
TODAY = AS_OF.normalize()


def _customer(first_days_ago, last_days_ago, purchase_days, paid_orders=None):
    """One row of the lifecycle frame, dates given as days before AS_OF."""
    if first_days_ago is None:
        return {"first_paid_at": pd.NaT, "last_paid_at": pd.NaT, "paid_orders": 0, "purchase_days": 0}
    return {
        "first_paid_at": TODAY - pd.Timedelta(days=first_days_ago),
        "last_paid_at": TODAY - pd.Timedelta(days=last_days_ago),
        "paid_orders": purchase_days if paid_orders is None else paid_orders,
        "purchase_days": purchase_days,
    }


def _frame(*customers):
    return pd.DataFrame(list(customers))


def _bgnbd_p_alive(frame):
    """P(alive) from BG/NBD with the published CDNOW parameters (weeks)."""
    model = BetaGeoModel()
    model.params_ = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    frequency = frame["purchase_days"].to_numpy() - 1.0
    recency = (frame["last_paid_at"] - frame["first_paid_at"]).dt.days.to_numpy() / 7.0
    T = (TODAY - frame["first_paid_at"]).dt.days.to_numpy() / 7.0
    return model.conditional_probability_alive(frequency, recency, T)


def test_stage_names():
    assert LIFECYCLE_STAGES == ("new", "first_order_only", "active", "dormant", "churned")
    assert PROSPECT == "prospect"


def test_rhythm_weekly_vs_yearly_buyer_both_silent_five_weeks():
    weekly = _customer(first_days_ago=35 + 39 * 7, last_days_ago=35, purchase_days=40)
    yearly = _customer(first_days_ago=35 + 3 * 365, last_days_ago=35, purchase_days=4)
    frame = _frame(weekly, yearly)
    p_alive = _bgnbd_p_alive(frame)
    # The model agrees: the weekly buyer looks gone-ish, the yearly buyer alive.
    assert p_alive[0] < 0.5 < p_alive[1]
    assert list(assign_lifecycle(frame, p_alive, AS_OF)) == ["dormant", "active"]
    # Without a model estimate, the rhythm alone gives the same answer.
    assert list(assign_lifecycle(frame, [np.nan, np.nan], AS_OF)) == ["dormant", "active"]
    # Configurable: a laxer multiple keeps the weekly buyer active.
    lax = replace(LifecycleRules(), dormant_gap_multiple=6.0, churned_gap_multiple=8.0)
    assert list(assign_lifecycle(frame, [np.nan, np.nan], AS_OF, lax)) == ["active", "active"]


def test_both_signals_must_agree_for_repeat_buyers():
    monthly_silent_200_days = _customer(first_days_ago=200 + 300, last_days_ago=200, purchase_days=11)
    frame = _frame(monthly_silent_200_days, monthly_silent_200_days, monthly_silent_200_days)
    stages = assign_lifecycle(frame, [0.05, 0.3, 0.9], AS_OF)
    # 200 / 30 = 6.7 gaps late (rhythm says churned); the model moderates.
    assert list(stages) == ["churned", "dormant", "active"]


def test_low_p_alive_alone_does_not_flag_a_customer_on_rhythm():
    fortnightly_on_time = _customer(first_days_ago=10 + 20 * 14, last_days_ago=10, purchase_days=21)
    assert assign_lifecycle(_frame(fortnightly_on_time), [0.02], AS_OF)[0] == "active"


def test_single_order_customers_use_shop_typical_gap():
    rules = LifecycleRules(typical_gap_days=60.0)
    frame = _frame(
        _customer(45, 45, 1),  # 0.75 typical gaps -> waiting for 2nd order
        _customer(150, 150, 1),  # 2.5 gaps -> dormant
        _customer(400, 400, 1),  # 6.7 gaps -> churned
        _customer(150, 150, 1, paid_orders=3),  # 3 orders on one day is still one purchase day
    )
    # BG/NBD P(alive) is 1 without repeat purchases; it must not keep them "active" forever.
    stages = assign_lifecycle(frame, [1.0, 1.0, 1.0, 1.0], AS_OF, rules)
    assert list(stages) == ["first_order_only", "dormant", "churned", "dormant"]


def test_new_prospect_and_precedence():
    frame = _frame(
        _customer(None, None, 0),
        _customer(10, 10, 1),
        _customer(30, 2, 3),
        _customer(31, 31, 1),
    )
    stages = assign_lifecycle(frame, [np.nan, 1.0, 0.9, 1.0], AS_OF, LifecycleRules(new_days=30))
    assert list(stages) == ["prospect", "new", "new", "first_order_only"]


def test_guard_rails_on_absolute_silence():
    daily_buyer_quiet_weekend = _customer(first_days_ago=5 + 100, last_days_ago=5, purchase_days=101)
    yearly_buyer_gone_800_days = _customer(first_days_ago=800 + 4 * 400, last_days_ago=800, purchase_days=5)
    frame = _frame(daily_buyer_quiet_weekend, yearly_buyer_gone_800_days)
    stages = assign_lifecycle(frame, [0.01, 0.95], AS_OF)
    # 5 gaps late but only 5 days silent; and 2 gaps late but silent > 730 days.
    assert list(stages) == ["active", "churned"]


def test_expected_gap_and_typical_gap():
    frame = _frame(_customer(70, 0, 8), _customer(100, 10, 4), _customer(5, 5, 1), _customer(None, None, 0))
    gaps = expected_gap_days(frame, typical_gap_days=45.0)
    np.testing.assert_allclose(gaps[:3], [10.0, 30.0, 45.0])
    assert estimate_typical_gap_days(frame) == pytest.approx(20.0)
    assert estimate_typical_gap_days(_frame(_customer(5, 5, 1)), fallback_days=77.0) == 77.0


def test_repurchase_nudge_window():
    frame = _frame(
        _customer(0, 0, 1),
        _customer(3, 3, 1),
        _customer(4, 4, 1),
        _customer(2, 1, 2),
        _customer(None, None, 0),
    )
    assert list(needs_repurchase_nudge(frame, AS_OF)) == [True, True, False, False, False]
    wider = LifecycleRules(repurchase_nudge_days=5)
    assert list(needs_repurchase_nudge(frame, AS_OF, wider)) == [True, True, True, False, False]


def test_invalid_inputs_and_rules():
    with pytest.raises(InvalidInput):
        assign_lifecycle(_frame(_customer(5, 10, 2)), [0.5], AS_OF)  # last before first
    with pytest.raises(InvalidInput):
        assign_lifecycle(_frame(_customer(5, 5, 1)), [0.5, 0.5], AS_OF)
    with pytest.raises(InvalidInput):
        assign_lifecycle(pd.DataFrame({"first_paid_at": [TODAY]}), [0.5], AS_OF)
    with pytest.raises(InvalidRules):
        LifecycleRules(dormant_p_alive=0.1, churned_p_alive=0.5)
    with pytest.raises(InvalidRules):
        LifecycleRules(dormant_gap_multiple=4.0, churned_gap_multiple=2.0)
