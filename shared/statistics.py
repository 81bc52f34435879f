"""Comparing a treatment group with a control group: stable hash assignment, Wilson and Newcombe intervals.

Pure (the standard library only): used by campaigns' holdout groups and uplift reports, and by anything
else that compares a treatment with a control.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

# Two-sided 95 %: the normal quantile 1.959964.
Z_95 = 1.959963984540054
# 80 % power: the normal quantile 0.841621.
Z_POWER_80 = 0.8416212335729143


def unit_hash(*parts: str) -> float:
    """A number in [0, 1) from sha256 of the parts: uniform, and the same in every process and on every machine."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_group(campaign_id: str, customer_id: str, holdout_fraction: float) -> str:
    """'control' for a deterministic share `holdout_fraction` of a campaign's members, else 'treatment'."""
    if unit_hash("holdout", campaign_id, customer_id) < holdout_fraction:
        return "control"
    return "treatment"


def sample_size_per_group(baseline_rate: float, minimum_detectable_effect: float, z_alpha: float = Z_95,
                          z_power: float = Z_POWER_80) -> int:
    """Units each group needs to detect an absolute change `minimum_detectable_effect` of a proportion
    (two-sided test at 5 %, 80 % power; the classic two-proportion formula)."""
    if minimum_detectable_effect <= 0:
        raise ValueError("the minimum detectable effect must be positive")
    low = min(max(baseline_rate, 0.0), 1.0)
    high = min(low + minimum_detectable_effect, 1.0)
    if high == low:
        low = max(high - minimum_detectable_effect, 0.0)
    pooled = (low + high) / 2
    numerator = (z_alpha * math.sqrt(2 * pooled * (1 - pooled))
                 + z_power * math.sqrt(low * (1 - low) + high * (1 - high))) ** 2
    return math.ceil(numerator / (high - low) ** 2)


def weighted_choice(position: float, names: list[str], weights: list[float]) -> str:
    """The name whose share of the cumulative weights holds `position` (in [0, 1))."""
    total = sum(weights)
    cumulative = 0.0
    for name, weight in zip(names, weights):
        cumulative += weight / total
        if position < cumulative:
            return name
    return names[-1]


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    proportion = successes / trials
    denominator = 1 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / denominator
    half_width = z / denominator * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def newcombe_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                      z: float = Z_95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10, from two Wilson intervals) for rate_a - rate_b."""
    rate_a = successes_a / trials_a if trials_a else 0.0
    rate_b = successes_b / trials_b if trials_b else 0.0
    low_a, high_a = wilson_interval(successes_a, trials_a, z)
    low_b, high_b = wilson_interval(successes_b, trials_b, z)
    difference = rate_a - rate_b
    lower = difference - math.sqrt((rate_a - low_a) ** 2 + (high_b - rate_b) ** 2)
    upper = difference + math.sqrt((high_a - rate_a) ** 2 + (rate_b - low_b) ** 2)
    return lower, upper


@dataclass(frozen=True)
class GroupTotals:
    """What one group of a campaign did since launch."""

    members: int
    converters: int
    orders: int
    revenue: float

    def as_dict(self) -> dict:
        return {
            "members": self.members,
            "converters": self.converters,
            "conversion_rate": self.converters / self.members if self.members else None,
            "orders": self.orders,
            "revenue": round(self.revenue, 2),
            "revenue_per_member": round(self.revenue / self.members, 4) if self.members else None,
        }


def uplift_summary(treatment: GroupTotals, control: GroupTotals, min_members: int, min_converters: int) -> dict:
    """Conversion uplift of treatment over control with a 95 % Newcombe interval, and a verdict in plain words."""
    small_groups = [
        name for name, totals in (("treatment", treatment), ("control", control))
        if totals.members < min_members or totals.converters < min_converters
    ]
    uplift: dict = {
        "conversion_uplift": None,
        "ci95_low": None,
        "ci95_high": None,
        "ci_method": "newcombe-wilson",
        "relative_uplift": None,
        "revenue_per_member_uplift": None,
    }
    if treatment.members and control.members:
        treatment_rate = treatment.converters / treatment.members
        control_rate = control.converters / control.members
        low, high = newcombe_interval(treatment.converters, treatment.members, control.converters, control.members)
        uplift.update(
            conversion_uplift=treatment_rate - control_rate,
            ci95_low=low,
            ci95_high=high,
            relative_uplift=(treatment_rate - control_rate) / control_rate if control_rate > 0 else None,
            revenue_per_member_uplift=round(treatment.revenue / treatment.members
                                            - control.revenue / control.members, 4),
        )
    if control.members == 0:
        verdict = "insufficient_data"
        conclusion = "There is no control group, so the campaign's uplift cannot be measured."
    elif small_groups:
        verdict = "insufficient_data"
        conclusion = (
            f"Too few members or converters in the {' and '.join(small_groups)} group to conclude anything "
            f"(each group needs at least {min_members} members and {min_converters} converters)."
        )
    elif uplift["ci95_low"] > 0:
        verdict = "significant_positive"
        conclusion = (f"Treatment converted better than control: +{uplift['conversion_uplift']:.2%} "
                      f"(95 % CI {uplift['ci95_low']:.2%} to {uplift['ci95_high']:.2%}).")
    elif uplift["ci95_high"] < 0:
        verdict = "significant_negative"
        conclusion = (f"Treatment converted worse than control: {uplift['conversion_uplift']:.2%} "
                      f"(95 % CI {uplift['ci95_low']:.2%} to {uplift['ci95_high']:.2%}).")
    else:
        verdict = "not_significant"
        conclusion = (f"Not significant: the 95 % interval of the uplift ({uplift['ci95_low']:.2%} to "
                      f"{uplift['ci95_high']:.2%}) includes zero.")
    return {**uplift, "verdict": verdict, "conclusion": conclusion}
