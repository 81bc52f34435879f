"""Quarantine: rows that break a retrain step's assumptions are set aside, counted and sampled.

The edge (REST schemas, CSV importer) rejects implausible records, but rows may still reach the
database another way (an older version, a manual fix, a restore). One such row must not fail every
nightly run: each step drops the rows it cannot use, and the run's metrics say how many and why
(`metrics.quarantine`: a count per reason and a few ids with their reason).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

SAMPLE_SIZE = 20
# pandas' nanosecond timestamps span 1677-09-21 to 2262-04-11; differences of two of them overflow
# beyond about 292 years, so anything outside this window cannot be computed with safely.
PANDAS_SAFE_MIN = np.datetime64("1700-01-01")
PANDAS_SAFE_MAX = np.datetime64("2200-01-01")


def empty_report() -> dict:
    """A quarantine report with nothing in it."""
    return {"count": 0, "reasons": {}, "sample": []}


def merge_reports(first: dict | None, second: dict | None) -> dict:
    """Two reports added together (the sample stays at most SAMPLE_SIZE long)."""
    merged = empty_report()
    for report in (first, second):
        if not report:
            continue
        merged["count"] += report.get("count", 0)
        for reason, count in report.get("reasons", {}).items():
            merged["reasons"][reason] = merged["reasons"].get(reason, 0) + count
        merged["sample"].extend(report.get("sample", []))
        if "min_date" in report:
            merged["min_date"] = report["min_date"]
    merged["sample"] = merged["sample"][:SAMPLE_SIZE]
    return merged


def _datetimes(series: pd.Series) -> np.ndarray:
    """A date column as numpy datetime64 in its own unit (NaT for missing), without nanosecond overflow."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.to_numpy()
    converted = pd.to_datetime(series, errors="coerce", format="ISO8601")
    return converted.to_numpy()


def _report(ids: pd.Series, reasons: np.ndarray, kind: str) -> dict:
    """Count reasons (None: the row is fine) and sample the ids they apply to."""
    report = empty_report()
    flagged = np.flatnonzero(pd.notna(reasons))
    report["count"] = int(len(flagged))
    for index in flagged.tolist():
        reason = reasons[index]
        report["reasons"][reason] = report["reasons"].get(reason, 0) + 1
        if len(report["sample"]) < SAMPLE_SIZE:
            report["sample"].append({kind: str(ids.iloc[index]), "reason": reason})
    return report


def _first_reason(reasons: np.ndarray, condition: np.ndarray, reason: str) -> None:
    """Give `reason` to the rows where condition holds and no earlier reason was found."""
    reasons[condition & pd.isna(reasons)] = reason


def quarantine_customers(frame: pd.DataFrame, as_of: datetime, min_date: datetime) -> tuple[pd.DataFrame, dict]:
    """(usable customer rows with nanosecond dates, report) for the scorer's one-row-per-customer frame."""
    size = len(frame)
    reasons = np.full(size, None, dtype=object)
    earliest = np.datetime64(min_date)
    latest = np.datetime64(as_of)
    first = _datetimes(frame["first_paid_at"])
    last = _datetimes(frame["last_paid_at"])
    joined = _datetimes(frame["joined_at"])
    paid_orders = pd.to_numeric(frame["paid_orders"], errors="coerce").to_numpy(dtype=float)
    _first_reason(reasons, (paid_orders > 0) & (np.isnat(first) | np.isnat(last)), "paid order time unreadable")
    _first_reason(reasons, first < earliest, "first_paid_at before MIN_PLAUSIBLE_DATE")
    _first_reason(reasons, last > latest, "last_paid_at after the run's as_of (negative recency)")
    _first_reason(reasons, first > last, "first_paid_at after last_paid_at")
    _first_reason(reasons, (joined < PANDAS_SAFE_MIN) | (joined > PANDAS_SAFE_MAX), "joined_at out of range")
    for column in ("net_spend", "window_spend", "paid_orders", "purchase_days", "window_orders"):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        _first_reason(reasons, ~np.isfinite(values), f"{column} not a finite number")
        _first_reason(reasons, values < 0, f"{column} negative")
    report = _report(frame["customer_id"], reasons, "customer_id")
    kept = frame[pd.isna(reasons)].copy() if report["count"] else frame
    for column in ("joined_at", "first_paid_at", "last_paid_at"):
        kept[column] = pd.to_datetime(kept[column]).astype("datetime64[ns]")
    return kept, report


def quarantine_order_lines(lines: pd.DataFrame, as_of: datetime, min_date: datetime) -> tuple[pd.DataFrame, dict]:
    """(usable paid order lines, report): lines placed in the plausible window with a finite revenue."""
    reasons = np.full(len(lines), None, dtype=object)
    placed = _datetimes(lines["placed_at"])
    revenue = pd.to_numeric(lines["revenue"], errors="coerce").to_numpy(dtype=float)
    _first_reason(reasons, np.isnat(placed), "placed_at unreadable")
    _first_reason(reasons, placed < np.datetime64(min_date), "placed_at before MIN_PLAUSIBLE_DATE")
    _first_reason(reasons, placed > np.datetime64(as_of), "placed_at after the run's as_of")
    _first_reason(reasons, ~np.isfinite(revenue) | (revenue < 0), "line revenue not a finite amount")
    report = _report(lines["order_id"], reasons, "order_id")
    if not report["count"]:
        return lines, report
    kept = lines[pd.isna(reasons)].copy()
    kept["placed_at"] = pd.to_datetime(kept["placed_at"]).astype("datetime64[ns]")
    return kept, report
