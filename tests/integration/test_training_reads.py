"""The order lines a training shard reads: exactly its customers' paid lines, on SQLite and PostgreSQL.

On PostgreSQL a shard reads them order by order through the primary key (SHARD_ORDER_LINES_SQL), where
the whole shop is one join; both must give the same rows. Staged line shards join into the same data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from services.recommend.lines import SHARD_ORDER_LINES_SQL, TrainingData, load_order_lines
from services.recommend.training import collect_line_shards, line_shard_key, load_catalogue, stage_line_shard
from shared.extensions import db, redis_store
from shared.models import Product
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


def _same_data(left: TrainingData, right: TrainingData) -> bool:
    return ((left.baskets != right.baskets).nnz == 0 and np.array_equal(left.basket_times, right.basket_times)
            and np.array_equal(left.item_customers, right.item_customers) and left.order_lines == right.order_lines)


def test_train_models_reads_again_a_line_shard_that_is_lost_or_staged_for_another_catalogue(
        database_url, app_config, redis_prefix):
    """Shards staged in Redis join into what one read of every line gives; a missing or stale one is re-read."""
    from shared.config import load_config

    small_shop()
    redis_store.configure(app_config["REDIS_URL"], redis_prefix, socket_timeout=5.0)
    config = load_config(app_config)
    boundaries = [(None, "c0040"), ("c0040", "c0080"), ("c0080", None)]
    staged = [stage_line_shard("v1", index, AS_OF, config, low, high) for index, (low, high) in enumerate(boundaries)]
    assert all(shard.order_lines > 0 for shard in staged)
    skus = pd.Index(load_catalogue(db.engine)["sku"])
    whole = TrainingData(collect_line_shards("v1", AS_OF, config, skus, None), len(skus))

    assert _same_data(TrainingData(collect_line_shards("v1", AS_OF, config, skus, boundaries), len(skus)), whole)
    # A lost shard (its key expired, or its worker's write never landed) is read again by train_models.
    redis_store.client.delete(line_shard_key("v1", 1))
    assert _same_data(TrainingData(collect_line_shards("v1", AS_OF, config, skus, boundaries), len(skus)), whole)
    # A product added after the shards were read renumbers the items: every shard is read again.
    with db.session() as session:
        session.add(Product(sku="0000-NEW", name="new", price=1.0, updated_at=AS_OF))  # sorts first
    skus = pd.Index(load_catalogue(db.engine)["sku"])
    rejoined = TrainingData(collect_line_shards("v1", AS_OF, config, skus, boundaries), len(skus))
    assert rejoined.baskets.shape[1] == len(skus) == whole.baskets.shape[1] + 1
    assert (rejoined.baskets[:, 1:] != whole.baskets).nnz == 0
