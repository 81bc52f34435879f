"""Quarantine of rows a retrain step cannot use (pure pandas)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from shared.quarantine import merge_reports, quarantine_customers, quarantine_order_lines

AS_OF = datetime(2026, 11, 1, 12)
MIN_DATE = datetime(2000, 1, 1)


def customers() -> pd.DataFrame:
    """Six customers: one fine, one without orders, four broken in a different way each."""
    dates = np.array(["2026-10-01", "NaT", "0165-01-01", "2026-10-02", "2026-10-03", "2026-10-04"],
                     dtype="datetime64[s]")
    last = np.array(["2026-10-20", "NaT", "2026-10-20", "2026-11-01T17:00", "2026-10-01", "2026-10-20"],
                    dtype="datetime64[s]")
    return pd.DataFrame({
        "customer_id": ["fine", "prospect", "ancient", "future", "swapped", "infinite"],
        "joined_at": pd.Series([pd.NaT] * 6, dtype="datetime64[ns]"),
        "first_paid_at": dates, "last_paid_at": last,
        "paid_orders": [2, 0, 2, 1, 2, 1], "net_spend": [10.0, 0.0, 5.0, 3.0, 4.0, np.inf],
        "purchase_days": [2, 0, 2, 1, 2, 1], "window_orders": [2, 0, 1, 0, 2, 1],
        "window_spend": [10.0, 0.0, 5.0, 0.0, 4.0, 1.0],
    })


def test_broken_customers_are_set_aside_with_their_reason():
    kept, report = quarantine_customers(customers(), AS_OF, MIN_DATE)
    assert kept["customer_id"].tolist() == ["fine", "prospect"]
    assert kept["first_paid_at"].dtype == np.dtype("datetime64[ns]")
    assert report["count"] == 4
    assert report["reasons"] == {
        "first_paid_at before MIN_PLAUSIBLE_DATE": 1,
        "last_paid_at after the run's as_of (negative recency)": 1,
        "first_paid_at after last_paid_at": 1,
        "net_spend not a finite number": 1,
    }
    assert [entry["customer_id"] for entry in report["sample"]] == ["ancient", "future", "swapped", "infinite"]


def test_order_lines_outside_the_window_or_without_a_finite_revenue_are_set_aside():
    lines = pd.DataFrame({
        "order_id": ["a", "b", "c", "d"],
        "placed_at": np.array(["2026-10-01", "1700-01-01", "2026-10-01", "NaT"], dtype="datetime64[s]"),
        "revenue": [5.0, 5.0, np.nan, 1.0],
    })
    kept, report = quarantine_order_lines(lines, AS_OF, MIN_DATE)
    assert kept["order_id"].tolist() == ["a"]
    assert report["reasons"] == {"placed_at before MIN_PLAUSIBLE_DATE": 1, "line revenue not a finite amount": 1,
                                 "placed_at unreadable": 1}


def test_reports_add_up():
    first = {"count": 2, "reasons": {"x": 2}, "sample": [{"customer_id": "1", "reason": "x"}], "min_date": "2000"}
    second = {"count": 1, "reasons": {"x": 1}, "sample": [{"order_id": "o", "reason": "x"}]}
    assert merge_reports(first, second) == {"count": 3, "reasons": {"x": 3}, "min_date": "2000",
                                            "sample": [{"customer_id": "1", "reason": "x"},
                                                       {"order_id": "o", "reason": "x"}]}
