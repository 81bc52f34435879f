"""The order lines a training shard reads: exactly its customers' paid lines, on SQLite and PostgreSQL.

On PostgreSQL a shard reads them order by order through the primary key (SHARD_ORDER_LINES_SQL), where
the whole shop is one join; both must give the same rows.
"""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import text

from services.recommend.training import SHARD_ORDER_LINES_SQL, load_order_lines
from shared.extensions import db
from tests.factories import AS_OF, small_shop

COLUMNS = ["order_id", "customer_id", "placed_at", "sku", "revenue"]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[COLUMNS].sort_values(["order_id", "sku"]).reset_index(drop=True)


@pytest.mark.parametrize("low, high", [("c0030", "c0060"), (None, "c0010"), ("c0110", None)])
def test_a_shard_reads_exactly_its_customers_paid_lines(database_url, low, high):
    small_shop()
    with db.engine.begin() as connection:  # an unpaid order of the shard must stay out
        connection.execute(text("UPDATE orders SET status = 'cancelled' WHERE order_id = 'c0031-0'"))
    everyone = load_order_lines(db.engine, AS_OF)
    in_range = pd.Series(True, index=everyone.index)
    if low is not None:
        in_range &= everyone["customer_id"] >= low
    if high is not None:
        in_range &= everyone["customer_id"] < high

    shard = load_order_lines(db.engine, AS_OF, low, high)

    assert len(shard) > 0
    assert "c0031-0" not in set(shard["order_id"])
    pd.testing.assert_frame_equal(_sorted(shard), _sorted(everyone[in_range]))


def test_postgres_shard_read_walks_the_primary_key(database_url):
    """The shard query is a nested loop over the shard's orders, never a hash join over all order lines."""
    if db.dialect != "postgresql":
        pytest.skip("the plan is PostgreSQL's")
    small_shop()
    shard = " AND o.customer_id >= 'c0030' AND o.customer_id < 'c0060'"
    with db.engine.connect() as connection:
        connection.execute(text("ANALYZE orders"))
        connection.execute(text("ANALYZE order_lines"))
        rows = connection.execute(text("EXPLAIN " + SHARD_ORDER_LINES_SQL + shard), {"as_of": AS_OF})
        plan = "\n".join(row[0] for row in rows)
    assert "Nested Loop" in plan
    assert "Hash Join" not in plan
