"""The order lines a training shard reads: exactly its customers' paid lines, on SQLite and PostgreSQL.

On PostgreSQL a shard reads them order by order through the primary key (SHARD_ORDER_LINES_SQL), where
the whole shop is one join; both must give the same rows. Staged line shards join into the same data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select, text

from services.recommend.lines import SHARD_ORDER_LINES_SQL, TrainingData, load_order_lines
from services.recommend.store import customer_payloads
from services.recommend.training import (
    collect_line_shards,
    line_shard_key,
    load_catalogue,
    stage_line_shard,
    train_bundles,
    train_for_you_shard,
    train_models,
)
from shared.extensions import db, redis_store
from shared.models import Product, RecommendationList
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


def _rows_by_kind(version: str) -> dict[str, tuple[int, int]]:
    """(rows, distinct keys) per list kind of a version in the database copy."""
    with db.session() as session:
        rows = session.execute(select(RecommendationList.kind, func.count(),
                                      func.count(func.distinct(RecommendationList.list_key)))
                               .where(RecommendationList.model_version == version)
                               .group_by(RecommendationList.kind)).all()
    return {kind: (count, distinct) for kind, count, distinct in rows}


def test_train_models_and_train_bundles_each_rewrite_only_their_own_lists(database_url, app_config, redis_prefix):
    """The two tasks run side by side on the same version, in either order, and either may be retried:
    neither drops what the other wrote, and a retried one replaces its own rows without doubling them."""
    from shared.config import load_config

    small_shop()
    redis_store.configure(app_config["REDIS_URL"], redis_prefix, socket_timeout=5.0)
    config = load_config(app_config)
    boundaries = [(None, "c0060"), ("c0060", None)]
    for index, (low, high) in enumerate(boundaries):
        stage_line_shard("v1", index, AS_OF, config, low, high)

    bundles = train_bundles("v1", AS_OF, config, boundaries)
    trained = train_models("v1", AS_OF, config, boundaries)
    first = _rows_by_kind("v1")
    assert bundles["bundles"] > 0 and bundles["order_lines"] == trained["order_lines"] > 0
    assert first["bundles"][0] == first["bundles"][1] > 0
    assert first["nb"][0] == first["nb"][1] == trained["items_with_neighbours"]
    assert first["catalogue"] == (1, 1)
    assert redis_store.client.get(f"{redis_prefix}:recs:v1:bundles:TEA-1") is not None

    train_models("v1", AS_OF, config, boundaries)  # retried after the bundles were written
    train_bundles("v1", AS_OF, config, boundaries)  # retried after train_models
    assert _rows_by_kind("v1") == first


def test_a_for_you_shard_reads_the_line_shard_of_its_range_and_else_the_database(
        database_url, app_config, redis_prefix):
    """The for-you shard of a range builds its customers' histories from the line shard train_models read.

    A missing shard, or one staged for another range, is read from the database instead, and gives the
    same lists; so a night reads the shop's lines from the database once.
    """
    from shared.config import load_config

    small_shop()
    redis_store.configure(app_config["REDIS_URL"], redis_prefix, socket_timeout=5.0)
    config = load_config(app_config)
    boundaries = [(None, "c0040"), ("c0040", "c0080"), ("c0080", None)]
    for index, (low, high) in enumerate(boundaries):
        stage_line_shard("v1", index, AS_OF, config, low, high)
    train_models("v1", AS_OF, config, boundaries)
    low, high = boundaries[1]
    in_range = [f"c{number:04d}" for number in range(40, 80)]

    from_shard = train_for_you_shard("v1", AS_OF, config, low, high, 1)
    lists_from_shard = customer_payloads("v1", in_range)
    redis_store.client.delete(*(key for key in redis_store.client.scan_iter(f"{redis_prefix}:recs:v1:cust*")))
    redis_store.client.delete(line_shard_key("v1", 1))
    assert train_for_you_shard("v1", AS_OF, config, low, high, 1) == from_shard == 40
    assert customer_payloads("v1", in_range) == lists_from_shard
    assert all(payload is not None for payload in lists_from_shard)

    # Staged again, then c0041's orders are cancelled: the staged shard (read before) still counts them;
    # the database, read when the shard is missing or was staged for another range, no longer does.
    stage_line_shard("v1", 1, AS_OF, config, low, high)
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE orders SET status = 'cancelled' WHERE customer_id = 'c0041'"))
    assert train_for_you_shard("v1", AS_OF, config, low, high, 1) == 40
    assert train_for_you_shard("v1", AS_OF, config, low, high, None) == 39
    stage_line_shard("v1", 1, AS_OF, config, low, "c0060")
    assert train_for_you_shard("v1", AS_OF, config, low, high, 1) == 39


def test_a_failed_run_drops_the_line_shards_it_staged(database_url, app_config, redis_prefix):
    """Line shards live until the for-you fan-out ends; a run that fails before then drops them at once."""
    from services.pipeline.retrain import begin_run, fail_run
    from shared.config import load_config

    small_shop()
    redis_store.configure(app_config["REDIS_URL"], redis_prefix, socket_timeout=5.0)
    config = load_config(app_config)
    run = begin_run(config, as_of=AS_OF)
    for index, (low, high) in enumerate([(None, "c0040"), ("c0040", None)]):
        stage_line_shard(run.run_id, index, AS_OF, config, low, high)
    stage_line_shard("another-run", 0, AS_OF, config, None, None)

    fail_run(run.run_id, config, "stopped by the test")

    assert redis_store.client.exists(line_shard_key(run.run_id, 0), line_shard_key(run.run_id, 1)) == 0
    assert redis_store.client.exists(line_shard_key("another-run", 0)) == 1
