"""ABC classification of items by cumulative revenue share (Pareto).

Pure module: numpy only.
"""

from __future__ import annotations

import numpy as np


class InvalidRevenueError(ValueError):
    """Raised for negative/NaN revenue or shares outside (0, 1]."""


def abc_classes(revenue, a_share=0.8, b_share=0.15) -> np.ndarray:
    """'A', 'B' or 'C' per item: A = items making the first a_share of revenue, B the next b_share.

    Items are sorted by revenue (desc, ties by lower index); an item is A while
    the cumulative share *before* it is below a_share, so the item that crosses
    the line is still A (a single item holding 90 % of revenue is A).  Items
    with zero revenue are always C.
    """
    revenue = np.asarray(revenue, dtype=float)
    if revenue.ndim != 1:
        raise InvalidRevenueError("revenue must be a 1-d array")
    if np.isnan(revenue).any() or (revenue < 0).any():
        raise InvalidRevenueError("revenue must be non-negative and not NaN")
    if not (0 < a_share <= 1 and 0 <= b_share and a_share + b_share <= 1):
        raise InvalidRevenueError("need 0 < a_share, 0 <= b_share, a_share + b_share <= 1")
    classes = np.full(revenue.shape, "C", dtype="<U1")
    total = revenue.sum()
    if total <= 0:
        return classes
    order = np.lexsort((np.arange(revenue.size), -revenue))
    share_before = (np.cumsum(revenue[order]) - revenue[order]) / total
    sorted_classes = np.where(share_before < a_share, "A", np.where(share_before < a_share + b_share, "B", "C"))
    classes[order] = sorted_classes
    classes[revenue == 0] = "C"
    return classes
