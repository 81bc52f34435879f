"""Training's map step: line shards of disjoint customer ranges join into the data one read of every line gives."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from services.recommend.lines import LineShard, LineShardsDisagree, TrainingData, line_shard_of

SKUS = pd.Index(["apple", "bread", "cheese", "dates", "eggs"])
TIERS = {"c1": "gold", "c2": "regular", "c3": "silver", "c4": "black", "c5": "regular"}


def order_lines(seed: int = 0) -> pd.DataFrame:
    """Lines of five customers: repeat purchases, one unknown sku, and orders that tie on time."""
    rows = [
        ("o1", "c1", "2026-10-01 10:00", "apple", 3.0), ("o1", "c1", "2026-10-01 10:00", "bread", 2.0),
        ("o2", "c1", "2026-10-03 09:00", "apple", 3.0), ("o2", "c1", "2026-10-03 09:00", "apple", 3.0),
        ("o3", "c2", "2026-10-03 09:00", "cheese", 7.5), ("o3", "c2", "2026-10-03 09:00", "dates", 4.0),
        ("o4", "c3", "2026-10-02 12:00", "eggs", 2.5), ("o4", "c3", "2026-10-02 12:00", "unknown", 9.0),
        ("o5", "c4", "2026-10-03 09:00", "bread", 2.0), ("o5", "c4", "2026-10-03 09:00", "cheese", 7.5),
        ("o6", "c5", "2026-10-04 08:00", "unknown", 1.0),
        ("o7", "c3", "2026-10-05 18:30", "apple", 3.0), ("o7", "c3", "2026-10-05 18:30", "eggs", 2.5),
    ]
    lines = pd.DataFrame(rows, columns=["order_id", "customer_id", "placed_at", "sku", "revenue"])
    lines["placed_at"] = pd.to_datetime(lines["placed_at"])
    # The database returns rows in no promised order.
    return lines.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def shard(lines: pd.DataFrame) -> LineShard:
    return line_shard_of(lines, SKUS, lambda ids: np.array([TIERS[customer] for customer in ids], dtype=object))


def test_shards_of_customer_ranges_join_into_the_data_of_one_read():
    lines = order_lines()
    whole = TrainingData([shard(lines)], len(SKUS))
    low, high = lines[lines["customer_id"] < "c3"], lines[lines["customer_id"] >= "c3"]
    joined = TrainingData([shard(high), shard(low)], len(SKUS))

    assert (whole.baskets != joined.baskets).nnz == 0
    np.testing.assert_array_equal(whole.basket_times, joined.basket_times)
    np.testing.assert_array_equal(whole.basket_tiers, joined.basket_tiers)
    np.testing.assert_array_equal(whole.revenue, joined.revenue)
    np.testing.assert_array_equal(whole.item_customers, joined.item_customers)
    assert (whole.n_customers, whole.order_lines) == (joined.n_customers, joined.order_lines) == (4, 11)


def test_baskets_are_ordered_by_time_then_order_id_hash_whatever_the_row_order():
    first = TrainingData([shard(order_lines(seed=1))], len(SKUS))
    second = TrainingData([shard(order_lines(seed=2))], len(SKUS))
    assert (first.baskets != second.baskets).nnz == 0
    assert np.all(np.diff(first.basket_times) >= 0)
    # o2, o3 and o5 tie at 3 Oct 09:00: they follow the order of their ids' hashes.
    tied = np.array(["o2", "o3", "o5"], dtype=object)
    by_hash = tied[np.argsort(pd.util.hash_array(tied, categorize=False))]
    items_of = {"o2": [0], "o3": [2, 3], "o5": [1, 2]}
    tie_day = (np.datetime64("2026-10-03T09:00") - np.datetime64("1970-01-01")) / np.timedelta64(1, "D")
    tied_rows = np.flatnonzero(first.basket_times == tie_day)
    assert [sorted(first.baskets[row].indices.tolist()) for row in tied_rows] == [items_of[order] for order in by_hash]


def test_sums_count_known_lines_and_each_customer_once_per_item():
    data = TrainingData([shard(order_lines())], len(SKUS))
    # apple: c1 (three lines in two orders) and c3; the unknown sku's lines are left out, and c5, who
    # bought nothing else, is not a customer of the catalogue.
    assert data.item_customers.tolist() == [2, 2, 2, 1, 1]
    assert data.revenue.tolist() == [12.0, 4.0, 15.0, 4.0, 5.0]
    assert data.baskets.shape == (6, 5) and data.baskets.data.tolist() == [1.0] * data.baskets.nnz
    # Tiers index CUSTOMER_TIERS (regular, silver, gold, black), one per basket.
    assert sorted(data.basket_tiers.tolist()) == [0, 1, 1, 2, 2, 3]


def test_a_shard_survives_the_trip_through_redis_bytes():
    original = replace(shard(order_lines()), id_range=("c1", None))
    back = LineShard.from_bytes(original.to_bytes())
    for name in ("line_baskets", "line_items", "basket_times", "basket_keys", "basket_tiers", "basket_customers",
                 "revenue", "item_customers", "customer_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    assert (back.customers, back.tier_run, back.catalogue_key, back.quarantine, back.id_range) == (
        original.customers, original.tier_run, original.catalogue_key, original.quarantine, ("c1", None))


def test_a_shard_gives_each_customer_the_items_of_their_usable_lines():
    # What a for-you shard builds its histories from, in place of reading the lines again.
    staged = shard(order_lines(seed=3))
    assert staged.customer_ids.tolist() == ["c1", "c2", "c3", "c4"]
    histories = {}
    for customer, item in zip(staged.line_customers(), staged.line_items):
        histories.setdefault(staged.customer_ids[customer], set()).add(SKUS[item])
    # c5 bought only an unknown sku, and c3's unknown line is left out.
    assert histories == {"c1": {"apple", "bread"}, "c2": {"cheese", "dates"}, "c3": {"eggs", "apple"},
                         "c4": {"bread", "cheese"}}


def test_shards_read_next_to_different_published_runs_are_refused():
    lines = order_lines()
    first = replace(shard(lines), tier_run="r1")
    second = replace(shard(lines[lines["customer_id"] == "c9"]), tier_run="r2")
    with pytest.raises(LineShardsDisagree):
        TrainingData([first, second], len(SKUS))


def test_no_shards_is_an_empty_shop():
    data = TrainingData([], len(SKUS))
    assert data.baskets.shape == (0, 5) and data.n_customers == 0 and data.order_lines == 0
    assert data.quarantine["count"] == 0
