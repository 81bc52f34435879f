"""Membership tiers (regular < silver < gold < black) from RFM scores and 12-month spend.

Rules (users' glossary): upgrades are immediate; downgrades only happen after
the customer has qualified for a lower tier for ``downgrade_grace_days``
(default 30) in a row. The caller stores the tier history; this module only
decides the next state from the previous one.

Default thresholds are set for a shop whose typical order is 100-300 currency
units (see :class:`TierRules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "InvalidInput",
    "InvalidRules",
    "TIERS",
    "TierRequirement",
    "TierRules",
    "candidate_tiers",
    "apply_tier_transitions",
    "spend_to_next_tier",
]

TIERS = ("regular", "silver", "gold", "black")
_TIER_RANK = {tier: rank for rank, tier in enumerate(TIERS)}
_NO_PREVIOUS_TIER = -1


class InvalidInput(ValueError):
    """Raised when tier inputs are malformed (unknown tier, missing columns...)."""


class InvalidRules(ValueError):
    """Raised when a TierRules configuration is inconsistent."""


@dataclass(frozen=True)
class TierRequirement:
    """What a customer needs for one tier.

    ``combine="and"``: spend >= min_spend AND every score minimum is met.
    ``combine="or"``:  spend >= min_spend OR every score minimum is met (so a
    frequent buyer with small baskets can still qualify).
    Spend is the 12-month net spend (the RFM ``monetary`` column).
    """

    min_spend: float
    min_recency_score: int = 1
    min_frequency_score: int = 1
    min_monetary_score: int = 1
    combine: str = "and"

    def __post_init__(self):
        if self.combine not in ("and", "or"):
            raise InvalidRules(f"combine must be 'and' or 'or', not {self.combine!r}")
        if self.min_spend < 0:
            raise InvalidRules("min_spend must be >= 0")
        for score in (self.min_recency_score, self.min_frequency_score, self.min_monetary_score):
            if not 1 <= score <= 5:
                raise InvalidRules("score minimums must be between 1 and 5")
        scores_required = max(self.min_recency_score, self.min_frequency_score, self.min_monetary_score) > 1
        if self.combine == "or" and not scores_required:
            # "spend OR (no score condition)" would let everybody in.
            raise InvalidRules("combine='or' needs at least one score minimum above 1")


@dataclass(frozen=True)
class TierRules:
    """Tier thresholds and the downgrade grace period (all configurable).

    Defaults, for typical orders of 100-300:

    * silver: 12-month spend >= 500 (about 2-5 orders) OR F score >= 3
      (a repeat buyer in the top 60% by order count, even with small baskets);
    * gold:   spend >= 2,000 (about 10 orders) AND F score >= 4 (buys often,
      not one big purchase);
    * black:  spend >= 8,000 (roughly the top 1%) AND R score >= 4 (still
      buying recently: the top tier is not given to lapsed big spenders);
    * a downgrade waits 30 days of continuously qualifying lower.
    """

    silver: TierRequirement = field(
        default_factory=lambda: TierRequirement(min_spend=500.0, min_frequency_score=3, combine="or")
    )
    gold: TierRequirement = field(
        default_factory=lambda: TierRequirement(min_spend=2000.0, min_frequency_score=4, combine="and")
    )
    black: TierRequirement = field(
        default_factory=lambda: TierRequirement(min_spend=8000.0, min_recency_score=4, combine="and")
    )
    downgrade_grace_days: int = 30

    def __post_init__(self):
        if self.downgrade_grace_days < 0:
            raise InvalidRules("downgrade_grace_days must be >= 0")
        if not self.silver.min_spend <= self.gold.min_spend <= self.black.min_spend:
            raise InvalidRules("tier min_spend must not decrease from silver to gold to black")

    def requirement(self, tier: str) -> TierRequirement:
        """The requirement of a non-regular tier."""
        return {"silver": self.silver, "gold": self.gold, "black": self.black}[tier]


def _meets(requirement: TierRequirement, monetary, r, f, m) -> np.ndarray:
    """Boolean array: who satisfies one tier requirement."""
    spend_ok = monetary >= requirement.min_spend
    scores_ok = (
        (r >= requirement.min_recency_score)
        & (f >= requirement.min_frequency_score)
        & (m >= requirement.min_monetary_score)
    )
    if requirement.combine == "or":
        return spend_ok | scores_ok
    return spend_ok & scores_ok


def candidate_tiers(rfm_frame: pd.DataFrame, rules: TierRules = TierRules()) -> np.ndarray:
    """The highest tier each customer qualifies for today (columns monetary, r, f, m)."""
    missing = {"monetary", "r", "f", "m"} - set(rfm_frame.columns)
    if missing:
        raise InvalidInput(f"rfm_frame is missing columns {sorted(missing)}")
    monetary = rfm_frame["monetary"].fillna(0.0).to_numpy(dtype=float)
    r = rfm_frame["r"].to_numpy()
    f = rfm_frame["f"].to_numpy()
    m = rfm_frame["m"].to_numpy()
    tiers = np.full(monetary.shape, "regular", dtype=object)
    # Checked from low to high so the highest tier met wins.
    for tier in TIERS[1:]:
        tiers[_meets(rules.requirement(tier), monetary, r, f, m)] = tier
    return tiers


def _tier_ranks(tiers, allow_missing: bool) -> np.ndarray:
    """Map tier names to 0..3 (-1 for a missing previous tier)."""
    ranks = np.empty(len(tiers), dtype=int)
    for position, tier in enumerate(tiers):
        if tier is None or (isinstance(tier, float) and np.isnan(tier)) or tier is pd.NA:
            if not allow_missing:
                raise InvalidInput("candidate tier must not be missing")
            ranks[position] = _NO_PREVIOUS_TIER
        elif tier in _TIER_RANK:
            ranks[position] = _TIER_RANK[tier]
        else:
            raise InvalidInput(f"unknown tier {tier!r}; expected one of {TIERS}")
    return ranks


def apply_tier_transitions(
    previous_tier,
    previous_since,
    pending_since,
    candidate,
    as_of,
    rules: TierRules = TierRules(),
) -> pd.DataFrame:
    """Decide today's tier from yesterday's state; returns columns tier, since, pending_since.

    Inputs are aligned arrays (one entry per customer) plus the scalar ``as_of``:

    * ``previous_tier``: stored tier, None/NaN for a customer without one yet;
    * ``previous_since``: date the stored tier began;
    * ``pending_since``: date the customer FIRST qualified for a lower tier in
      the current uninterrupted run (NaT if no downgrade is pending);
    * ``candidate``: tier qualified for today (see :func:`candidate_tiers`).

    Rules:

    * no previous tier -> candidate, since = as_of;
    * candidate higher -> upgrade now, since = as_of, pending cleared;
    * candidate equal  -> unchanged, pending cleared (they re-qualified);
    * candidate lower  -> pending_since is set to as_of if not already pending;
      once as_of - pending_since >= downgrade_grace_days the customer moves to
      today's candidate (possibly several steps down), since = as_of, pending
      cleared; before that tier and since are unchanged.

    Store all three returned columns and pass them back in on the next run.
    """
    candidate_ranks = _tier_ranks(list(candidate), allow_missing=False)
    previous_ranks = _tier_ranks(list(previous_tier), allow_missing=True)
    count = candidate_ranks.size
    if previous_ranks.size != count:
        raise InvalidInput("previous_tier and candidate must have the same length")
    as_of_timestamp = pd.Timestamp(as_of)
    since = pd.to_datetime(pd.Series(previous_since, dtype="object").to_numpy(), errors="raise")
    pending = pd.to_datetime(pd.Series(pending_since, dtype="object").to_numpy(), errors="raise")
    if len(since) != count or len(pending) != count:
        raise InvalidInput("previous_since and pending_since must have one entry per customer")
    since = np.asarray(since, dtype="datetime64[ns]")
    pending = np.asarray(pending, dtype="datetime64[ns]")
    today = np.datetime64(as_of_timestamp.to_datetime64(), "ns")
    not_a_time = np.datetime64("NaT", "ns")

    is_new = previous_ranks == _NO_PREVIOUS_TIER
    is_upgrade = ~is_new & (candidate_ranks > previous_ranks)
    is_same = ~is_new & (candidate_ranks == previous_ranks)
    is_lower = ~is_new & (candidate_ranks < previous_ranks)

    lower_since = np.where(np.isnat(pending), today, pending)
    grace = np.timedelta64(int(rules.downgrade_grace_days), "D")
    grace_over = is_lower & (today - lower_since >= grace)
    still_waiting = is_lower & ~grace_over

    changes_now = is_new | is_upgrade | grace_over
    new_ranks = np.where(changes_now, candidate_ranks, previous_ranks)
    new_since = np.where(changes_now, today, since)
    new_pending = np.where(still_waiting, lower_since, not_a_time)
    # Customers staying at the same tier clear any pending downgrade.
    new_pending = np.where(is_same, not_a_time, new_pending)

    tier_names = np.array(TIERS, dtype=object)[new_ranks]
    index = candidate.index if isinstance(candidate, pd.Series) else None
    return pd.DataFrame(
        {
            "tier": tier_names,
            "since": pd.to_datetime(new_since),
            "pending_since": pd.to_datetime(new_pending),
        },
        index=index,
    )


def spend_to_next_tier(monetary, tier, rules: TierRules = TierRules()) -> np.ndarray:
    """Extra 12-month spend needed to reach the next tier's min_spend (0 if met, NaN for black).

    Only the spend condition is measured; score conditions (e.g. gold's F >= 4)
    may still be missing, and for an "or" tier spend is just one of two routes.
    """
    monetary = np.asarray(monetary, dtype=float).reshape(-1)
    tier_ranks = _tier_ranks(list(tier), allow_missing=False)
    if tier_ranks.size != monetary.size:
        raise InvalidInput("monetary and tier must have the same length")
    next_tier_spend = np.full(monetary.shape, np.nan)
    for rank in range(len(TIERS) - 1):
        next_tier = TIERS[rank + 1]
        next_tier_spend[tier_ranks == rank] = rules.requirement(next_tier).min_spend
    spend_today = np.nan_to_num(monetary, nan=0.0)
    return np.maximum(next_tier_spend - spend_today, 0.0)
