"""The demo shop generator: deterministic, and with the structure the models are meant to find."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
import pytest

from services.admin.demo import (
    ARCHETYPES,
    DEFAULT_AS_OF,
    KINDS,
    STAPLES,
    ShopBlock,
    block_orders,
    build_catalogue,
    event_keys,
    generate_shop,
)
from shared.ingest import event_key, order_content_hash

CUSTOMERS = 500


def materialise(customers=CUSTOMERS, seed=7, **kwargs):
    """The catalogue and the one block of a small shop."""
    iterator = generate_shop(customers, seed, **kwargs)
    shop = next(iterator)
    blocks = list(iterator)
    assert len(blocks) == 1
    return shop, blocks[0]


@pytest.fixture(scope="module")
def small_shop():
    return materialise()


def block_fingerprint(block: ShopBlock) -> tuple:
    """Every generated value, for byte-for-byte comparison."""
    arrays = (
        block.joined_at, block.community_member, block.opted_out, block.order_customer, block.placed_at,
        block.line_order, block.line_sku, block.line_quantity, block.line_unit_price, block.event_customer,
        block.event_sku, block.event_at,
    )
    return (
        tuple(array.tobytes() for array in arrays),
        tuple(block.customer_ids), tuple(block.channels), tuple(block.archetypes), tuple(block.order_ids),
        tuple(block.status), tuple(block.event_type),
    )


def test_same_seed_same_shop_different_seed_different_shop(small_shop):
    shop, block = small_shop
    again_shop, again = materialise()
    assert block_fingerprint(block) == block_fingerprint(again)
    assert again_shop.catalogue.skus == shop.catalogue.skus
    assert again_shop.catalogue.prices.tobytes() == shop.catalogue.prices.tobytes()
    assert again_shop.promotions == shop.promotions
    _other_shop, other = materialise(seed=8)
    assert block_fingerprint(other) != block_fingerprint(block)
    # The date is fixed, never today: the shop does not drift with the calendar.
    assert shop.as_of == DEFAULT_AS_OF
    assert block.placed_at.max() < (DEFAULT_AS_OF - datetime(1970, 1, 1)).total_seconds()


def test_catalogue_has_prices_margins_and_scales_with_skus():
    catalogue = build_catalogue(300, seed=7)
    assert len(catalogue) == 300
    assert len(set(catalogue.categories)) >= 10
    margins = 1 - catalogue.costs / catalogue.prices
    assert margins.min() >= 0.19 and margins.max() <= 0.61
    assert (catalogue.prices > 0).all()
    assert 0 < (catalogue.stock == 0).sum() < 30 and 0 < (~catalogue.active).sum() < 30
    assert catalogue.repeat_purchase.sum() > 30
    assert len(build_catalogue(50_000, seed=7)) == 50_000


def test_archetype_shares_and_size(small_shop):
    _shop, block = small_shop
    shares = Counter(block.archetypes)
    for name, share in ARCHETYPES:
        assert abs(shares[name] / CUSTOMERS - share) < 0.06, (name, shares[name])
    lines_per_customer = block.line_count / CUSTOMERS
    assert 7 <= lines_per_customer <= 13
    one_time = {index for index, name in enumerate(block.archetypes) if name == "one_time"}
    orders_per_customer = Counter(block.order_customer.tolist())
    assert all(orders_per_customer[index] == 1 for index in one_time)
    statuses = Counter(block.status)
    assert 0.015 < statuses["refunded"] / len(block.status) < 0.05
    assert 0.002 < statuses["cancelled"] / len(block.status) < 0.025


def baskets(block: ShopBlock) -> list[set[int]]:
    """Sku sets per order."""
    result: list[set[int]] = [set() for _ in block.order_ids]
    for order, sku in zip(block.line_order.tolist(), block.line_sku.tolist()):
        result[order].add(sku)
    return result


def test_complementary_pairs_co_occur_far_above_chance(small_shop):
    shop, block = small_shop
    catalogue = shop.catalogue
    kind_names = [KINDS[kind][0] for kind in catalogue.kind.tolist()]
    orders = baskets(block)
    for anchor, complement in (("Smartphone", "Phone case"), ("Camera", "SD card"), ("Printer", "Ink cartridge")):
        has_anchor = [any(kind_names[sku] == anchor for sku in basket) for basket in orders]
        has_complement = [any(kind_names[sku] == complement for sku in basket) for basket in orders]
        both = sum(a and c for a, c in zip(has_anchor, has_complement))
        p_complement = sum(has_complement) / len(orders)
        p_given_anchor = both / max(sum(has_anchor), 1)
        assert sum(has_anchor) >= 10, anchor
        assert p_given_anchor > 5 * p_complement, (anchor, p_given_anchor, p_complement)


def test_staples_are_in_many_baskets_and_slow_movers_exist(small_shop):
    shop, block = small_shop
    catalogue = shop.catalogue
    staple_skus = {index for index, kind in enumerate(catalogue.kind.tolist()) if KINDS[kind][0] in STAPLES}
    orders = baskets(block)
    with_staple = sum(1 for basket in orders if basket & staple_skus) / len(orders)
    assert with_staple > 0.35
    sales = np.bincount(block.line_sku, minlength=len(catalogue))
    # A long tail: the top fifth of the catalogue sells far more than the bottom half.
    ranked = np.sort(sales)[::-1]
    assert ranked[: len(ranked) // 5].sum() > 3 * ranked[len(ranked) // 2 :].sum()


def test_repeat_items_repeat(small_shop):
    shop, block = small_shop
    repeat = shop.catalogue.repeat_purchase
    bought: dict[tuple[int, int], int] = Counter()
    for order, sku in zip(block.line_order.tolist(), block.line_sku.tolist()):
        bought[(int(block.order_customer[order]), sku)] += 1
    repeat_again = sum(1 for (_customer, sku), times in bought.items() if times >= 2 and repeat[sku])
    other_again = sum(1 for (_customer, sku), times in bought.items() if times >= 2 and not repeat[sku])
    assert repeat_again > 3 * max(other_again, 1)
    loyal = [index for index, name in enumerate(block.archetypes) if name == "loyal"]
    loyal_repeaters = {customer for (customer, sku), times in bought.items() if times >= 3 and repeat[sku]}
    assert len(loyal_repeaters & set(loyal)) > 0.5 * len(loyal)


def test_events_are_modest_and_community_members_interact(small_shop):
    _shop, block = small_shop
    types = Counter(block.event_type)
    assert types["view"] + types["add_to_cart"] <= 2 * len(block.order_ids)
    members = int(block.community_member.sum())
    assert 0.1 < members / CUSTOMERS < 0.35
    assert types["follow"] == members and types["community_interaction"] > members


def test_hashes_and_event_keys_match_the_rest_path(small_shop):
    shop, block = small_shop
    catalogue = shop.catalogue
    orders = block_orders(block, catalogue)
    hashes, totals = orders.order_hashes, orders.order_totals
    bounds = np.searchsorted(block.line_order, np.arange(len(block.order_ids) + 1))
    for order in range(0, len(block.order_ids), 37):
        lines = [
            {"sku": catalogue.skus[block.line_sku[index]], "quantity": int(block.line_quantity[index]),
             "unit_price": float(block.line_unit_price[index])}
            for index in range(bounds[order], bounds[order + 1])
        ]
        placed = datetime.utcfromtimestamp(int(block.placed_at[order]))
        customer = block.customer_ids[block.order_customer[order]]
        assert hashes[order] == order_content_hash(customer, placed, lines)
        assert totals[order] == round(sum(line["quantity"] * line["unit_price"] for line in lines), 2)
    keys = event_keys(block, catalogue)
    for index in range(0, len(keys), 41):
        sku = int(block.event_sku[index])
        record = {
            "customer_id": block.customer_ids[block.event_customer[index]],
            "type": block.event_type[index],
            "sku": catalogue.skus[sku] if sku >= 0 else None,
            "occurred_at": datetime.utcfromtimestamp(int(block.event_at[index])),
        }
        assert keys[index] == event_key(record)


def test_promotions_are_active_around_as_of(small_shop):
    shop, _block = small_shop
    by_id = {promotion["promotion_id"]: promotion for promotion in shop.promotions}
    thresholds = sorted((p["threshold"], p["discount"]) for p in shop.promotions if p["category"] is None)
    assert thresholds == [(100.0, 10.0), (200.0, 30.0)]
    assert any(promotion["category"] for promotion in by_id.values())
    for promotion in shop.promotions:
        assert promotion["starts_at"] < shop.as_of < promotion["ends_at"]
