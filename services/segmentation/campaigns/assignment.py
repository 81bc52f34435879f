"""Who a campaign contacts: opted-out, global-control and frequency-capped customers leave, the rest split by hash."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.statistics import holdout_group, unit_hash

GROUPS = ("treatment", "control")
# Each skipped customer is counted under the first reason that applies, in this order.
SKIP_REASONS = ("opted_out", "global_control", "frequency_capped")


def in_global_control(customer_id: str, fraction: float, salt: str) -> bool:
    """True for the fixed share `fraction` of all customers that no campaign contacts (raising it only adds)."""
    if fraction <= 0:
        return False
    return unit_hash("global-control", salt, customer_id) < fraction


@dataclass(frozen=True)
class Candidate:
    """An audience customer, in rank order, with what may leave them out."""

    customer_id: str
    tier: str | None
    opted_out: bool
    frequency_capped: bool


@dataclass
class Selection:
    """The members (customer id, group, tier) in rank order and the skipped counts by reason."""

    members: list[tuple[str, str, str | None]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    @property
    def audience_size(self) -> int:
        return len(self.members) + sum(self.skipped.values())


def select_members(candidates: Iterable[Candidate], campaign_id: str, holdout_fraction: float,
                   global_control_fraction: float, global_control_salt: str) -> Selection:
    """Leave out opted-out, global-control and frequency-capped customers; split the rest by hash."""
    selection = Selection()
    for candidate in candidates:
        if candidate.opted_out:
            selection.skipped["opted_out"] += 1
        elif in_global_control(candidate.customer_id, global_control_fraction, global_control_salt):
            selection.skipped["global_control"] += 1
        elif candidate.frequency_capped:
            selection.skipped["frequency_capped"] += 1
        else:
            group = holdout_group(campaign_id, candidate.customer_id, holdout_fraction)
            selection.members.append((candidate.customer_id, group, candidate.tier))
    return selection
