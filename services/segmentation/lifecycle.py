"""Customer lifecycle stages from P(alive) and the customer's own purchase rhythm.

Stages (first rule that applies wins):

1. ``prospect``   - no paid order at all (never paid, or everything refunded);
2. ``new``        - first paid order at most ``new_days`` ago;
3. ``churned``    - lost (see "silence signals" below);
4. ``dormant``    - stopped buying but still worth waking;
5. ``first_order_only`` - a single purchase day, past the ``new`` window, not
   yet dormant: the target of repurchase campaigns;
6. ``active``     - everybody else.

Silence signals. Two independent views decide dormant/churned:

* *rhythm*: days since the last order divided by the customer's expected gap.
  The expected gap is the customer's own mean inter-purchase gap,
  (last - first purchase day) / (purchase_days - 1); for one-purchase-day
  customers (no gap of their own yet) it is the shop-wide ``typical_gap_days``.
  A weekly buyer silent 5 weeks is 5 gaps late; a yearly buyer silent 5 weeks
  is 0.1 gaps late.
* *model*: P(alive) from BG/NBD (or any model) against two thresholds.

For repeat customers both views must agree (the stage is the milder of the two),
so neither a model misfit nor one unusually long gap alone moves a customer.
For one-purchase-day customers, or when P(alive) is NaN, the rhythm decides
alone: BG/NBD assumes dropout can only happen right after a repeat purchase,
so its P(alive) is exactly 1 for them and carries no information.

Guard rails: nobody is dormant before ``min_dormant_silence_days`` or churned
before ``min_churned_silence_days`` of silence (daily buyers should not flip
after a quiet weekend), and anybody silent ``churned_after_days`` or more is
churned whatever their rhythm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "InvalidInput",
    "InvalidRules",
    "LIFECYCLE_STAGES",
    "PROSPECT",
    "LifecycleRules",
    "assign_lifecycle",
    "needs_repurchase_nudge",
    "expected_gap_days",
    "estimate_typical_gap_days",
]

LIFECYCLE_STAGES = ("new", "first_order_only", "active", "dormant", "churned")
# Customers with no paid order at all; kept out of LIFECYCLE_STAGES because
# they have no lifecycle yet.
PROSPECT = "prospect"

_ACTIVE_LEVEL, _DORMANT_LEVEL, _CHURNED_LEVEL = 0, 1, 2
_ONE_DAY = np.timedelta64(1, "D")
_REQUIRED_COLUMNS = ("first_paid_at", "last_paid_at", "paid_orders", "purchase_days")


class InvalidInput(ValueError):
    """Raised when lifecycle inputs are malformed."""


class InvalidRules(ValueError):
    """Raised when LifecycleRules thresholds are inconsistent."""


@dataclass(frozen=True)
class LifecycleRules:
    """All lifecycle thresholds (days, probabilities and multiples of the expected gap).

    Defaults: new for 30 days after the first order; dormant when P(alive) < 0.5
    (more likely gone than not) and silent for 2 expected gaps; churned when
    P(alive) < 0.1 and silent for 6 expected gaps; shop-wide typical gap 60 days
    for one-order customers (so they are dormant after ~4 months, churned after
    ~1 year); repurchase nudge within 3 days of the first order.
    """

    new_days: int = 30
    dormant_p_alive: float = 0.5
    churned_p_alive: float = 0.1
    dormant_gap_multiple: float = 2.0
    churned_gap_multiple: float = 6.0
    typical_gap_days: float = 60.0
    min_dormant_silence_days: float = 14.0
    min_churned_silence_days: float = 60.0
    churned_after_days: float = 730.0
    repurchase_nudge_days: int = 3

    def __post_init__(self):
        if not 0.0 <= self.churned_p_alive <= self.dormant_p_alive <= 1.0:
            raise InvalidRules("need 0 <= churned_p_alive <= dormant_p_alive <= 1")
        if not 0.0 < self.dormant_gap_multiple <= self.churned_gap_multiple:
            raise InvalidRules("need 0 < dormant_gap_multiple <= churned_gap_multiple")
        if self.typical_gap_days <= 0:
            raise InvalidRules("typical_gap_days must be positive")
        if min(self.new_days, self.repurchase_nudge_days, self.min_dormant_silence_days) < 0:
            raise InvalidRules("day thresholds must be >= 0")
        if not self.min_dormant_silence_days <= self.min_churned_silence_days <= self.churned_after_days:
            raise InvalidRules("need min_dormant_silence_days <= min_churned_silence_days <= churned_after_days")


def _checked_columns(frame: pd.DataFrame):
    """Return (first, last, paid_orders, purchase_days) as numpy arrays after validation."""
    missing = set(_REQUIRED_COLUMNS) - set(frame.columns)
    if missing:
        raise InvalidInput(f"lifecycle frame is missing columns {sorted(missing)}")
    # Everything is counted in calendar days: a daily job should not flip a
    # customer's stage depending on the hour it runs.
    first_paid = pd.to_datetime(frame["first_paid_at"]).dt.normalize().to_numpy(dtype="datetime64[ns]")
    last_paid = pd.to_datetime(frame["last_paid_at"]).dt.normalize().to_numpy(dtype="datetime64[ns]")
    paid_orders = frame["paid_orders"].fillna(0).to_numpy(dtype=float)
    purchase_days = frame["purchase_days"].fillna(0).to_numpy(dtype=float)
    if np.any(paid_orders < 0) or np.any(purchase_days < 0):
        raise InvalidInput("paid_orders and purchase_days must be >= 0")
    if np.any(purchase_days > paid_orders):
        raise InvalidInput("purchase_days cannot exceed paid_orders")
    if np.any(np.isnat(first_paid) != np.isnat(last_paid)):
        raise InvalidInput("first_paid_at and last_paid_at must both be set or both be NaT")
    both_set = ~np.isnat(first_paid)
    if np.any(last_paid[both_set] < first_paid[both_set]):
        raise InvalidInput("last_paid_at is before first_paid_at")
    return first_paid, last_paid, paid_orders, purchase_days


def _calendar_day(as_of) -> np.datetime64:
    """``as_of`` floored to midnight as numpy datetime64[ns]."""
    return np.datetime64(pd.Timestamp(as_of).normalize().to_datetime64(), "ns")


def _days_between(later, earlier) -> np.ndarray:
    """Fractional days from ``earlier`` to ``later`` (NaN where either is NaT)."""
    return (later - earlier) / _ONE_DAY


def expected_gap_days(frame: pd.DataFrame, typical_gap_days: float) -> np.ndarray:
    """Each customer's expected days between purchases: own mean gap, else the shop-wide typical gap."""
    first_paid, last_paid, _, purchase_days = _checked_columns(frame)
    has_own_rhythm = purchase_days >= 2
    own_span_days = _days_between(last_paid, first_paid)
    own_gap = np.full(purchase_days.shape, float(typical_gap_days))
    # At least one day: purchase days are distinct calendar days by definition,
    # this only protects against inconsistent input.
    own_gap[has_own_rhythm] = np.maximum(
        own_span_days[has_own_rhythm] / (purchase_days[has_own_rhythm] - 1.0), 1.0
    )
    return own_gap


def estimate_typical_gap_days(frame: pd.DataFrame, fallback_days: float = 60.0) -> float:
    """Shop-wide typical gap: median of repeat customers' own mean gaps (fallback if none).

    Compute it once over the whole population and put it in
    ``LifecycleRules.typical_gap_days`` so sharded runs agree.
    """
    _, _, _, purchase_days = _checked_columns(frame)
    repeat = purchase_days >= 2
    if not np.any(repeat):
        return float(fallback_days)
    gaps = expected_gap_days(frame, fallback_days)[repeat]
    return float(np.median(gaps))


def _silence_level_from_rhythm(silence_days, expected_gap, rules: LifecycleRules) -> np.ndarray:
    """0 active / 1 dormant / 2 churned from days of silence vs the expected gap."""
    gaps_late = silence_days / expected_gap
    level = np.full(silence_days.shape, _ACTIVE_LEVEL)
    dormant = (gaps_late >= rules.dormant_gap_multiple) & (silence_days >= rules.min_dormant_silence_days)
    churned = (gaps_late >= rules.churned_gap_multiple) & (silence_days >= rules.min_churned_silence_days)
    level[dormant] = _DORMANT_LEVEL
    level[churned] = _CHURNED_LEVEL
    return level


def _silence_level_from_model(p_alive, rules: LifecycleRules) -> np.ndarray:
    """0 active / 1 dormant / 2 churned from P(alive)."""
    level = np.full(p_alive.shape, _ACTIVE_LEVEL)
    level[p_alive < rules.dormant_p_alive] = _DORMANT_LEVEL
    level[p_alive < rules.churned_p_alive] = _CHURNED_LEVEL
    return level


def assign_lifecycle(frame: pd.DataFrame, p_alive, as_of, rules: LifecycleRules = LifecycleRules()) -> np.ndarray:
    """Lifecycle stage per customer (see module docstring for the rules).

    ``frame`` columns: ``first_paid_at``, ``last_paid_at`` (datetime, NaT if no
    paid order), ``paid_orders`` (lifetime paid orders), ``purchase_days``
    (distinct days with a paid order). ``p_alive`` aligned with ``frame``; NaN
    means "no model estimate" and leaves the decision to the rhythm.
    Returns an object array of LIFECYCLE_STAGES names or "prospect".
    """
    first_paid, last_paid, paid_orders, purchase_days = _checked_columns(frame)
    p_alive = np.asarray(p_alive, dtype=float).reshape(-1)
    if p_alive.shape != paid_orders.shape:
        raise InvalidInput("p_alive must have one value per customer")
    today = _calendar_day(as_of)

    is_prospect = np.isnat(last_paid) | (paid_orders == 0)
    days_since_first = _days_between(today, first_paid)
    # Orders stamped after as_of (the job ran on a cut-off date while orders
    # kept arriving) count as a purchase today, not as invalid data.
    silence_days = np.maximum(_days_between(today, last_paid), 0.0)
    expected_gap = expected_gap_days(frame, rules.typical_gap_days)

    rhythm_level = _silence_level_from_rhythm(silence_days, expected_gap, rules)
    model_level = _silence_level_from_model(p_alive, rules)
    single_purchase_day = purchase_days <= 1
    rhythm_only = single_purchase_day | np.isnan(p_alive)
    combined_level = np.where(rhythm_only, rhythm_level, np.minimum(rhythm_level, model_level))
    combined_level = np.where(silence_days >= rules.churned_after_days, _CHURNED_LEVEL, combined_level)

    stages = np.full(paid_orders.shape, "active", dtype=object)
    stages[single_purchase_day] = "first_order_only"
    stages[combined_level == _DORMANT_LEVEL] = "dormant"
    stages[combined_level == _CHURNED_LEVEL] = "churned"
    stages[days_since_first <= rules.new_days] = "new"
    stages[is_prospect] = PROSPECT
    return stages


def needs_repurchase_nudge(frame: pd.DataFrame, as_of, rules: LifecycleRules = LifecycleRules()) -> np.ndarray:
    """True for customers with exactly one paid order placed at most ``repurchase_nudge_days`` calendar days ago."""
    first_paid, _, paid_orders, _ = _checked_columns(frame)
    today = _calendar_day(as_of)
    days_since_first = _days_between(today, first_paid)
    within_window = (days_since_first >= 0) & (days_since_first <= rules.repurchase_nudge_days)
    return (paid_orders == 1) & within_window
