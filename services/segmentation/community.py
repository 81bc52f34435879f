"""Community layers for members of the shop's community (followers of the brand).

* ``potential``  - a member who has not (yet) engaged: a new follower;
* ``active``     - ``active_min_interactions`` or more interactions in the window;
* ``high_value`` - ``high_value_min_orders`` or more paid orders in the window
  ("2 or more orders a month" with the default 30-day window).

high_value beats active beats potential. Non-members have no layer (None).
Each layer gets a different kind of content (:data:`LAYER_CONTENT`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "InvalidInput",
    "InvalidRules",
    "COMMUNITY_LAYERS",
    "LAYER_CONTENT",
    "NON_MEMBER_LAYER",
    "CommunityRules",
    "assign_community_layer",
    "window_start",
]

COMMUNITY_LAYERS = ("potential", "active", "high_value")
LAYER_CONTENT = {"potential": "welfare", "active": "experience", "high_value": "exclusive"}
NON_MEMBER_LAYER = None


class InvalidInput(ValueError):
    """Raised when community inputs are malformed."""


class InvalidRules(ValueError):
    """Raised when CommunityRules thresholds are inconsistent."""


@dataclass(frozen=True)
class CommunityRules:
    """Thresholds for the community layers; counts are taken over ``window_days``."""

    active_min_interactions: int = 3
    high_value_min_orders: int = 2
    window_days: int = 30

    def __post_init__(self):
        if self.active_min_interactions < 1 or self.high_value_min_orders < 1:
            raise InvalidRules("layer thresholds must be at least 1")
        if self.window_days < 1:
            raise InvalidRules("window_days must be at least 1")


def window_start(as_of, rules: CommunityRules = CommunityRules()) -> pd.Timestamp:
    """First instant counted in the window: interactions/orders at or after it, up to as_of."""
    return pd.Timestamp(as_of) - pd.Timedelta(days=rules.window_days)


def _counts(values, name: str) -> np.ndarray:
    """Counts as floats with missing = 0; negative counts are invalid."""
    counts = pd.Series(np.asarray(values).reshape(-1), dtype="float64").fillna(0.0).to_numpy()
    if np.any(counts < 0):
        raise InvalidInput(f"{name} must be >= 0")
    return counts


def assign_community_layer(
    community_member,
    interactions_in_window,
    orders_in_window,
    rules: CommunityRules = CommunityRules(),
) -> np.ndarray:
    """Layer per customer: 'high_value' > 'active' > 'potential' for members, None otherwise.

    ``community_member`` is a boolean per customer (missing = not a member);
    ``interactions_in_window`` and ``orders_in_window`` (paid orders) are counts
    over the last ``rules.window_days`` days (missing = 0).
    """
    membership = pd.Series(np.asarray(community_member, dtype=object).reshape(-1))
    is_member = membership.fillna(False).astype(bool).to_numpy()
    interactions = _counts(interactions_in_window, "interactions_in_window")
    orders = _counts(orders_in_window, "orders_in_window")
    if not (is_member.shape == interactions.shape == orders.shape):
        raise InvalidInput("community_member, interactions_in_window and orders_in_window must align")

    layers = np.full(is_member.shape, NON_MEMBER_LAYER, dtype=object)
    layers[is_member] = "potential"
    # Assigned from the weakest to the strongest layer so the strongest wins.
    layers[is_member & (interactions >= rules.active_min_interactions)] = "active"
    layers[is_member & (orders >= rules.high_value_min_orders)] = "high_value"
    return layers
