"""Database side of a scoring run: read one row per customer, write one score row per customer."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import delete, text
from sqlalchemy.engine import Engine

from shared.frames import id_range_condition, read_frame, text_hashes, write_frame
from shared.models import CustomerScore

CUSTOMER_DATE_COLUMNS = ("joined_at", "first_paid_at", "last_paid_at")

# One row per customer: the running aggregates plus what the window and the last 30 days add.
# Windows are counted over orders (not order lines), with an index on (customer_id, placed_at).
CUSTOMER_FRAME_SQL = """
SELECT c.customer_id, c.joined_at, c.community_member, c.first_paid_at, c.last_paid_at,
       c.paid_orders, c.net_spend, c.purchase_days,
       COALESCE(w.window_orders, 0) AS window_orders,
       COALESCE(w.window_spend, 0) AS window_spend,
       COALESCE(w.recent_orders, 0) AS recent_orders,
       COALESCE(e.recent_interactions, 0) AS recent_interactions
FROM customers c
LEFT JOIN (
    SELECT customer_id, COUNT(*) AS window_orders, SUM(total) AS window_spend,
           SUM(CASE WHEN placed_at >= :recent_start THEN 1 ELSE 0 END) AS recent_orders
    FROM orders
    WHERE status = 'paid' AND placed_at >= :window_start AND placed_at <= :as_of {order_range}
    GROUP BY customer_id
) w ON w.customer_id = c.customer_id
LEFT JOIN (
    SELECT customer_id, COUNT(*) AS recent_interactions
    FROM events
    WHERE type = 'community_interaction' AND occurred_at >= :recent_start AND occurred_at <= :as_of {event_range}
    GROUP BY customer_id
) e ON e.customer_id = c.customer_id
WHERE 1 = 1 {customer_range}
ORDER BY c.customer_id
"""


def load_customer_frame(engine: Engine, as_of: datetime, window_days: int = 365, recent_days: int = 30,
                        low: str | None = None, high: str | None = None) -> pd.DataFrame:
    """Customers with customer_id in [low, high) (all when both are None), one row each."""
    id_range, range_params = id_range_condition("customer_id", low, high)
    query = CUSTOMER_FRAME_SQL.format(
        order_range=id_range,
        event_range=id_range,
        customer_range=id_range_condition("c.customer_id", low, high)[0],
    )
    params: dict = {
        "as_of": as_of,
        "window_start": as_of - timedelta(days=window_days),
        "recent_start": as_of - timedelta(days=recent_days),
        **range_params,
    }
    # Dates pandas cannot hold become NaT here and are quarantined by the retrain (shared.quarantine).
    frame = read_frame(engine, query, params, date_columns=CUSTOMER_DATE_COLUMNS, dtypes={"customer_id": str},
                       date_errors="coerce")
    frame["community_member"] = frame["community_member"].astype(str).str.lower().isin(["true", "t", "1"])
    return frame


def hash_sample(frame: pd.DataFrame, fraction: float, column: str = "customer_id") -> pd.DataFrame:
    """The rows whose id hashes below `fraction` of the hash range: the same ids in every shard and every run."""
    if fraction >= 1.0:
        return frame
    return frame[text_hashes(frame[column]) < np.uint64(int(fraction * 2**64))]


def shard_boundaries(engine: Engine, shard_size: int) -> list[tuple[str | None, str | None]]:
    """Split customer ids into [low, high) ranges of about `shard_size` customers."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT customer_id FROM (SELECT customer_id, ROW_NUMBER() OVER (ORDER BY customer_id) AS position "
                "FROM customers) numbered WHERE (position - 1) % :size = 0 ORDER BY customer_id"
            ),
            {"size": shard_size},
        ).scalars().all()
    starts = list(rows[1:])
    lows: list[str | None] = [None, *starts]
    highs: list[str | None] = [*starts, None]
    return list(zip(lows, highs))


def load_previous_tiers(engine: Engine, run_id: str | None, low: str | None = None,
                        high: str | None = None) -> pd.DataFrame | None:
    """Last published run's tier state for the customers in [low, high)."""
    if run_id is None:
        return None
    id_range, range_params = id_range_condition("customer_id", low, high)
    query = ("SELECT customer_id, tier, tier_since, tier_pending_since FROM customer_scores WHERE run_id = :run_id"
             + id_range)
    params = {"run_id": run_id, **range_params}
    return read_frame(engine, query, params, date_columns=("tier_since", "tier_pending_since"),
                      dtypes={"customer_id": str})


def write_scores(engine: Engine, run_id: str, scores: pd.DataFrame, low: str | None = None,
                 high: str | None = None) -> int:
    """Replace this run's rows for the shard with `scores` (a retried shard writes them once)."""
    with engine.begin() as connection:
        statement = delete(CustomerScore).where(CustomerScore.run_id == run_id)
        if low is not None:
            statement = statement.where(CustomerScore.customer_id >= low)
        if high is not None:
            statement = statement.where(CustomerScore.customer_id < high)
        connection.execute(statement)
    rows = scores.copy()
    rows.insert(0, "run_id", run_id)
    return write_frame(engine, "customer_scores", rows)
