"""The demo shop: a deterministic synthetic e-commerce history with structure worth modelling.

`generate_shop` is a pure generator (numpy, vectorised, no database): the same (customers, seed,
as_of, skus) always gives the same shop, byte for byte, because every block of customers draws from
its own random stream derived from (seed, block number) and `as_of` is a fixed date, never today.
It yields the catalogue and promotions first, then blocks of customers with their orders, order
lines and events, so a 1M-customer / 10M-line shop is generated in bounded memory.

What is in it, so models have something to find:
- ~10 categories, product kinds with prices and costs (margins 20-60 %), a popularity long tail
  (slow movers), a few items out of stock or inactive;
- staples (milk, bread, eggs, bananas) that a large share of baskets contain;
- repeat-purchase consumables (tea, coffee, pet food, diapers, ink, shampoo...) that a customer with
  the habit buys again and again, roughly on the item's purchase cycle;
- complementary items bought together: phone + case + charger, camera + SD card + tripod,
  printer + ink + paper, tea + teapot, diapers + wipes... (variant i of an anchor goes with
  variant i of its complement, so item-level pairs are strong);
- customer archetypes (kept in `attributes.demo_archetype`): one-time buyers (~48 %), occasional,
  loyal frequent buyers, big spenders, customers dormant for months, churned ones, new recent ones;
- ~20 % community members with follow and community_interaction events; views and add_to_cart
  events (at most 2 per order); ~3 % refunded and ~1 % cancelled orders;
- promotions: spend 200 save 30, spend 100 save 10 (long windows around as_of), and one
  category promotion.

`seed_demo_shop` writes it with the bulk helpers (COPY on PostgreSQL), not through the REST path.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from tqdm import tqdm

from shared.ingest import bulk
from shared.ingest.aggregates import refresh_customer_aggregates
from shared.ingest.columns import CUSTOMER_COLUMNS, EVENT_COLUMNS, PRODUCT_COLUMNS, PROMOTION_COLUMNS
from shared.ingest.common import utcnow
from shared.ingest.orders import LineColumns, OrderChunk, chunk_of_orders
from shared.ingest.records import event_content_key
from shared.models import Order

# A fixed "today" for the shop: a seed always gives the same shop, whatever the date.
DEFAULT_AS_OF = datetime(2026, 11, 1)
DEFAULT_SKUS = 300
HISTORY_DAYS = 3 * 365
# Customers per generated block. Part of the shop's definition: changing it changes the shop.
BLOCK_CUSTOMERS = 10_000
EPOCH = datetime(1970, 1, 1)
DAY = 86_400

# name, category, low price, high price, repeat purchase, purchase cycle in days (0: none),
# how often it is a basket's main item, share of the catalogue's skus.
KINDS = [
    ("Milk", "Fresh & Dairy", 2.5, 6, True, 7, 0.0, 0.6),
    ("Bread", "Fresh & Dairy", 2, 5, True, 7, 0.0, 0.6),
    ("Eggs", "Fresh & Dairy", 3, 7, True, 10, 0.0, 0.5),
    ("Bananas", "Fresh & Dairy", 1.5, 4, True, 7, 0.0, 0.3),
    ("Yogurt", "Fresh & Dairy", 2, 6, True, 10, 2.0, 1.0),
    ("Green tea", "Tea & Coffee", 8, 40, True, 30, 4.0, 2.0),
    ("Coffee beans", "Tea & Coffee", 12, 45, True, 21, 4.0, 2.0),
    ("Teapot", "Tea & Coffee", 25, 90, False, 0, 0.6, 1.0),
    ("Mug", "Tea & Coffee", 8, 25, False, 0, 0.8, 1.0),
    ("Coffee grinder", "Tea & Coffee", 40, 150, False, 0, 0.4, 0.6),
    ("Dog food", "Pet", 25, 80, True, 30, 3.0, 1.5),
    ("Cat food", "Pet", 20, 60, True, 30, 3.0, 1.5),
    ("Pet toy", "Pet", 5, 20, False, 0, 0.8, 1.2),
    ("Pet bowl", "Pet", 8, 25, False, 0, 0.3, 0.6),
    ("Diapers", "Baby", 25, 60, True, 14, 3.0, 1.2),
    ("Baby wipes", "Baby", 5, 15, True, 14, 1.0, 0.8),
    ("Stroller", "Baby", 150, 600, False, 0, 0.2, 0.5),
    ("Smartphone", "Phones", 300, 1200, False, 0, 1.5, 1.5),
    ("Phone case", "Phones", 10, 40, False, 0, 0.8, 2.0),
    ("Charger", "Phones", 15, 45, False, 0, 0.8, 1.0),
    ("Earbuds", "Phones", 30, 200, False, 0, 0.8, 1.0),
    ("Camera", "Cameras", 350, 1500, False, 0, 0.6, 1.0),
    ("SD card", "Cameras", 10, 60, False, 0, 0.4, 0.8),
    ("Tripod", "Cameras", 25, 120, False, 0, 0.2, 0.6),
    ("Camera bag", "Cameras", 30, 90, False, 0, 0.2, 0.6),
    ("Printer", "Office", 80, 400, False, 0, 0.6, 0.8),
    ("Ink cartridge", "Office", 15, 60, True, 60, 1.0, 1.2),
    ("Printer paper", "Office", 5, 15, True, 45, 0.6, 0.5),
    ("Notebook", "Office", 3, 12, False, 0, 1.0, 1.0),
    ("Candle", "Home & Kitchen", 8, 30, False, 0, 0.6, 1.5),
    ("Vase", "Home & Kitchen", 15, 80, False, 0, 0.3, 1.5),
    ("Towel set", "Home & Kitchen", 20, 60, False, 0, 0.5, 1.0),
    ("Storage box", "Home & Kitchen", 10, 40, False, 0, 0.5, 1.0),
    ("Shampoo", "Beauty", 6, 20, True, 45, 2.0, 1.2),
    ("Conditioner", "Beauty", 6, 20, True, 45, 0.6, 1.0),
    ("Face cream", "Beauty", 20, 80, False, 0, 1.0, 1.5),
    ("Yoga mat", "Sports", 20, 70, False, 0, 0.6, 0.8),
    ("Water bottle", "Sports", 8, 30, False, 0, 0.8, 1.0),
    ("Running socks", "Sports", 5, 15, False, 0, 0.6, 0.8),
    ("Dumbbells", "Sports", 30, 120, False, 0, 0.3, 0.6),
]
STAPLES = ("Milk", "Bread", "Eggs", "Bananas")
STAPLE_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
# Anchor kind -> (complement kind, probability that an order with the anchor also has it).
COMPLEMENTS = {
    "Smartphone": (("Phone case", 0.6), ("Charger", 0.45), ("Earbuds", 0.2)),
    "Camera": (("SD card", 0.65), ("Tripod", 0.3), ("Camera bag", 0.25)),
    "Printer": (("Ink cartridge", 0.7), ("Printer paper", 0.5)),
    "Green tea": (("Teapot", 0.15), ("Mug", 0.08)),
    "Coffee beans": (("Coffee grinder", 0.1), ("Mug", 0.12)),
    "Diapers": (("Baby wipes", 0.5),),
    "Dog food": (("Pet toy", 0.2), ("Pet bowl", 0.08)),
    "Cat food": (("Pet toy", 0.2),),
    "Shampoo": (("Conditioner", 0.4),),
    "Yoga mat": (("Water bottle", 0.3),),
}
# A complement is the anchor's own matching variant this often (else any variant, by popularity).
MATCHING_VARIANT = 0.85
STAPLE_SHARE = 0.45

# name, share, orders (low, high), basket price appetite.
ARCHETYPES = [
    ("one_time", 0.48),
    ("occasional", 0.17),
    ("loyal", 0.10),
    ("big_spender", 0.03),
    ("dormant", 0.09),
    ("churned", 0.07),
    ("new", 0.06),
]
ARCHETYPE_NAMES = [name for name, _share in ARCHETYPES]
CHANNELS = ("web", "app", "wecom", "store")
CHANNEL_WEIGHTS = (0.45, 0.35, 0.12, 0.08)


def _timestamp(value: datetime) -> int:
    return int((value - EPOCH).total_seconds())


def _datetime(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=int(seconds))


# ---- the catalogue -------------------------------------------------------------------------------


@dataclass
class Catalogue:
    """Products as columns (index = position in the catalogue), plus what baskets are built from."""

    skus: list[str]
    names: list[str]
    categories: list[str]
    prices: np.ndarray
    costs: np.ndarray
    stock: np.ndarray
    active: np.ndarray
    repeat_purchase: np.ndarray
    kind: np.ndarray  # index into KINDS per sku
    cycle_days: np.ndarray
    kind_skus: list[np.ndarray]  # sku indices of each kind, most popular first
    kind_cumulative: list[np.ndarray]  # cumulative popularity within each kind

    def __len__(self) -> int:
        return len(self.skus)


def build_catalogue(skus: int = DEFAULT_SKUS, seed: int = 7) -> Catalogue:
    """The catalogue: every kind gets variants in proportion to its share (at least one each)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1_000_003]))
    shares = np.array([kind[7] for kind in KINDS])
    counts = np.maximum(1, np.floor(shares / shares.sum() * skus).astype(int))
    # Hand the rounding remainder to the largest kinds so the catalogue has exactly `skus` items.
    order = np.argsort(-shares, kind="stable")
    position = 0
    while counts.sum() < skus:
        counts[order[position % len(order)]] += 1
        position += 1
    while counts.sum() > skus and counts.max() > 1:
        counts[np.argmax(counts)] -= 1

    names, categories, sku_ids, kinds = [], [], [], []
    prices, cycle_days, repeat = [], [], []
    kind_skus = []
    number = 0
    for kind_index, (name, category, low, high, is_repeat, cycle, _main, _share) in enumerate(KINDS):
        variant_prices = np.round(np.exp(rng.uniform(np.log(low), np.log(high), counts[kind_index])), 2) - 0.01
        indices = []
        for variant in range(counts[kind_index]):
            number += 1
            sku_ids.append(f"SKU{number:06d}")
            names.append(f"{name} {_variant_label(variant)}")
            categories.append(category)
            kinds.append(kind_index)
            prices.append(max(float(variant_prices[variant]), 0.99))
            cycle_days.append(cycle)
            repeat.append(is_repeat)
            indices.append(len(sku_ids) - 1)
        kind_skus.append(np.array(indices, dtype=np.int64))

    count = len(sku_ids)
    prices_array = np.array(prices)
    margins = rng.uniform(0.2, 0.6, count)
    costs = np.round(prices_array * (1 - margins), 2)
    stock = rng.integers(20, 500, count)
    stock[rng.random(count) < 0.02] = 0  # stocked out
    active = rng.random(count) >= 0.02  # discontinued
    # Staples are never out: every basket model should see them.
    staple_kinds = [index for index, kind in enumerate(KINDS) if kind[0] in STAPLES]
    for kind_index in staple_kinds:
        stock[kind_skus[kind_index]] = np.maximum(stock[kind_skus[kind_index]], 50)
        active[kind_skus[kind_index]] = True
    # Popularity within a kind: a Zipf-like long tail, so the last variants are slow movers.
    cumulative = []
    for indices in kind_skus:
        weights = 1.0 / np.arange(1, len(indices) + 1) ** 1.1
        cumulative.append(np.cumsum(weights) / weights.sum())
    return Catalogue(
        skus=sku_ids, names=names, categories=categories, prices=prices_array, costs=costs, stock=stock,
        active=active, repeat_purchase=np.array(repeat), kind=np.array(kinds, dtype=np.int64),
        cycle_days=np.array(cycle_days), kind_skus=kind_skus, kind_cumulative=cumulative,
    )


def _variant_label(variant: int) -> str:
    labels = ("Classic", "Plus", "Pro", "Lite", "Max", "Mini", "Eco", "Deluxe")
    if variant < len(labels):
        return labels[variant]
    return f"{labels[variant % len(labels)]} {variant // len(labels) + 1}"


def _pick_variant(catalogue: Catalogue, kind_index: int, uniforms: np.ndarray) -> np.ndarray:
    """Sku indices of one kind drawn by popularity."""
    positions = np.searchsorted(catalogue.kind_cumulative[kind_index], uniforms, side="right")
    positions = np.minimum(positions, len(catalogue.kind_skus[kind_index]) - 1)
    return catalogue.kind_skus[kind_index][positions]


def _pick_kind_variants(catalogue: Catalogue, kinds: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Sku indices for an array of kinds (one popularity draw each)."""
    result = np.empty(len(kinds), dtype=np.int64)
    for kind_index in np.unique(kinds):
        mask = kinds == kind_index
        result[mask] = _pick_variant(catalogue, int(kind_index), uniforms[mask])
    return result


# ---- promotions ----------------------------------------------------------------------------------


def demo_promotions(as_of: datetime) -> list[dict]:
    """Two spend thresholds for the whole shop and one category promotion, active around as_of."""
    starts = as_of - timedelta(days=90)
    ends = as_of + timedelta(days=365)
    return [
        {"promotion_id": "demo-spend-200-save-30", "kind": "spend_threshold", "threshold": 200.0, "discount": 30.0,
         "starts_at": starts, "ends_at": ends, "category": None},
        {"promotion_id": "demo-spend-100-save-10", "kind": "spend_threshold", "threshold": 100.0, "discount": 10.0,
         "starts_at": starts, "ends_at": ends, "category": None},
        {"promotion_id": "demo-tea-coffee-150-save-20", "kind": "spend_threshold", "threshold": 150.0,
         "discount": 20.0, "starts_at": as_of - timedelta(days=30), "ends_at": as_of + timedelta(days=60),
         "category": "Tea & Coffee"},
    ]


# ---- customers, orders, events -------------------------------------------------------------------


@dataclass
class ShopBlock:
    """One block of customers with all their orders, lines and events, as columns."""

    number: int
    customer_ids: list[str]
    joined_at: np.ndarray  # seconds since 1970, UTC
    channels: list[str]
    community_member: np.ndarray
    opted_out: np.ndarray
    archetypes: list[str]
    order_ids: list[str] = field(default_factory=list)
    order_customer: np.ndarray = None  # index into this block's customers
    placed_at: np.ndarray = None
    status: list[str] = field(default_factory=list)
    line_order: np.ndarray = None  # index into this block's orders, lines grouped by order
    line_sku: np.ndarray = None  # index into the catalogue
    line_quantity: np.ndarray = None
    line_unit_price: np.ndarray = None
    event_customer: np.ndarray = None
    event_type: list[str] = field(default_factory=list)
    event_sku: np.ndarray = None  # -1: no sku
    event_at: np.ndarray = None

    @property
    def line_count(self) -> int:
        return len(self.line_sku)


@dataclass
class Shop:
    """What generate_shop yields first: the catalogue and the promotions."""

    catalogue: Catalogue
    promotions: list[dict]
    as_of: datetime
    customers: int
    seed: int


def generate_shop(customers: int = 2000, seed: int = 7, as_of: datetime | None = None, *,
                  skus: int = DEFAULT_SKUS) -> Iterator:
    """Yield a Shop (catalogue, promotions), then ShopBlocks of at most BLOCK_CUSTOMERS customers."""
    as_of = as_of or DEFAULT_AS_OF
    catalogue = build_catalogue(skus, seed)
    yield Shop(catalogue=catalogue, promotions=demo_promotions(as_of), as_of=as_of, customers=customers, seed=seed)
    first_order_number = 0
    for number, start in enumerate(range(0, customers, BLOCK_CUSTOMERS)):
        size = min(BLOCK_CUSTOMERS, customers - start)
        block = _generate_block(catalogue, number, start, size, seed, as_of, customers, first_order_number)
        first_order_number += len(block.order_ids)
        yield block


def _generate_block(catalogue: Catalogue, number: int, start: int, size: int, seed: int, as_of: datetime,
                    total_customers: int, first_order_number: int) -> ShopBlock:
    rng = np.random.default_rng(np.random.SeedSequence([seed, number]))
    as_of_s = _timestamp(as_of)
    width = max(7, len(str(total_customers)))
    customer_ids = [f"C{index:0{width}d}" for index in range(start + 1, start + size + 1)]

    archetype = rng.choice(len(ARCHETYPES), size=size, p=[share for _name, share in ARCHETYPES])
    names = np.array(ARCHETYPE_NAMES)[archetype]
    history_start = as_of_s - HISTORY_DAYS * DAY
    # Join dates and the window in which each customer orders, by archetype (in days before as_of).
    joined = history_start + rng.uniform(0, HISTORY_DAYS * DAY, size)
    joined = np.where(names == "new", as_of_s - rng.uniform(1, 60, size) * DAY, joined)
    joined = np.where(names == "churned", history_start + rng.uniform(0, 500, size) * DAY, joined)
    joined = np.where(names == "dormant", history_start + rng.uniform(0, HISTORY_DAYS - 300, size) * DAY, joined)
    joined = np.where(np.isin(names, ["loyal", "big_spender"]),
                      history_start + rng.uniform(0, HISTORY_DAYS - 120, size) * DAY, joined)
    first_order = np.minimum(joined + rng.exponential(5, size) * DAY, as_of_s - 3600)
    last_order = as_of_s - rng.exponential(15, size) * DAY
    last_order = np.where(names == "dormant", as_of_s - rng.uniform(90, 240, size) * DAY, last_order)
    last_order = np.where(names == "churned", as_of_s - rng.uniform(400, 900, size) * DAY, last_order)
    last_order = np.maximum(last_order, first_order)

    orders_low = {"one_time": 1, "occasional": 2, "loyal": 10, "big_spender": 6, "dormant": 3, "churned": 2, "new": 1}
    orders_high = {"one_time": 1, "occasional": 6, "loyal": 30, "big_spender": 16, "dormant": 8, "churned": 5, "new": 3}
    low = np.array([orders_low[name] for name in ARCHETYPE_NAMES])[archetype]
    high = np.array([orders_high[name] for name in ARCHETYPE_NAMES])[archetype]
    order_counts = rng.integers(low, high + 1)

    channel_index = rng.choice(len(CHANNELS), size=size, p=CHANNEL_WEIGHTS)
    community = rng.random(size) < np.where(np.array(CHANNELS)[channel_index] == "wecom", 0.6, 0.15)
    opted_out = rng.random(size) < 0.03

    # Each customer's tastes: a favourite category and, for most repeat buyers, a consumable habit.
    category_names = sorted({kind[1] for kind in KINDS})
    favourite_category = rng.integers(0, len(category_names), size)
    repeat_kinds = np.array([index for index, kind in enumerate(KINDS) if kind[4] and kind[0] not in STAPLES])
    habit_kind = repeat_kinds[rng.integers(0, len(repeat_kinds), size)]
    habit_sku = _pick_kind_variants(catalogue, habit_kind, rng.random(size))
    has_habit = (names != "one_time") & (rng.random(size) < 0.65)

    block = ShopBlock(
        number=number, customer_ids=customer_ids, joined_at=joined.astype(np.int64),
        channels=[CHANNELS[index] for index in channel_index], community_member=community, opted_out=opted_out,
        archetypes=names.tolist(),
    )
    customers = BlockCustomers(names=names, order_counts=order_counts, joined=joined, first_order=first_order,
                               last_order=last_order, favourite_category=favourite_category, habit_sku=habit_sku,
                               has_habit=has_habit)
    _generate_orders(block, catalogue, rng, customers, category_names, first_order_number, as_of_s)
    _generate_events(block, rng, as_of_s)
    return block


@dataclass
class BlockCustomers:
    """The per-customer draws of one block that its orders are generated from (arrays, one entry per customer)."""

    names: np.ndarray  # archetype names
    order_counts: np.ndarray
    joined: np.ndarray  # epoch seconds
    first_order: np.ndarray
    last_order: np.ndarray
    favourite_category: np.ndarray
    habit_sku: np.ndarray
    has_habit: np.ndarray


def _generate_orders(block: ShopBlock, catalogue: Catalogue, rng, customers: BlockCustomers,
                     category_names: list[str], first_order_number: int, as_of_s: int) -> None:
    """The block's orders (times, ids, statuses) and their lines (main item, complements, staples, extras)."""
    order_customer = _place_orders(block, rng, customers, first_order_number, as_of_s)
    line_orders, line_skus = _basket_items(catalogue, rng, customers, order_customer, category_names)
    _write_lines(block, catalogue, rng, customers.names[order_customer], line_orders, line_skus)


def _place_orders(block: ShopBlock, rng, customers: BlockCustomers, first_order_number: int,
                  as_of_s: int) -> np.ndarray:
    """Order times, ids and statuses of the block; returns each order's customer (index in the block)."""
    order_counts = customers.order_counts
    order_customer = np.repeat(np.arange(len(order_counts)), order_counts)
    total = len(order_customer)
    # Order times: the first at first_order, the rest spread over the customer's window, in time order.
    spread = rng.random(total)
    order_rank = np.arange(total) - np.repeat(np.cumsum(order_counts) - order_counts, order_counts)
    spread[order_rank == 0] = 0.0
    sort_key = np.lexsort((spread, order_customer))
    spread = spread[sort_key]
    window = (customers.last_order - customers.first_order)[order_customer]
    placed = (customers.first_order[order_customer] + spread * window).astype(np.int64)
    # Shops are busier in the evening: shift times of day towards 19:00-22:00 for half the orders.
    evening = rng.random(total) < 0.5
    placed = np.where(evening, placed - placed % DAY + 19 * 3600 + rng.integers(0, 3 * 3600, total), placed)
    # Never before the customer joined, never after as_of.
    placed = np.maximum(placed, customers.joined[order_customer].astype(np.int64))
    placed = np.minimum(placed, as_of_s - 60)
    order_numbers = np.arange(first_order_number + 1, first_order_number + total + 1)
    block.order_ids = [f"O{number:09d}" for number in order_numbers]
    block.order_customer = order_customer
    block.placed_at = placed
    status_draw = rng.random(total)
    block.status = np.where(status_draw < 0.03, "refunded", np.where(status_draw < 0.04, "cancelled", "paid")).tolist()
    return order_customer


def _basket_items(catalogue: Catalogue, rng, customers: BlockCustomers, order_customer: np.ndarray,
                  category_names: list[str]) -> tuple[list, list]:
    """(order index, sku) arrays of every basket's items, possibly repeated: main, complements, staples, extras."""
    total = len(order_customer)
    names = customers.names
    kind_main_weight = np.array([kind[6] for kind in KINDS])
    kind_category = np.array([category_names.index(kind[1]) for kind in KINDS])
    line_orders, line_skus = [], []

    # 1. The main item: the customer's habit consumable, or a kind from the favourite category
    #    (60 %) or from the whole shop, by how often each kind leads a basket.
    uses_habit = customers.has_habit[order_customer] & (
        rng.random(total) < np.where(names[order_customer] == "loyal", 0.7, 0.5))
    from_favourite = rng.random(total) < 0.6
    main_kind = rng.choice(len(KINDS), size=total, p=kind_main_weight / kind_main_weight.sum())
    for category_index in range(len(category_names)):
        in_category = np.flatnonzero((kind_category == category_index) & (kind_main_weight > 0))
        mask = from_favourite & (customers.favourite_category[order_customer] == category_index)
        weights = kind_main_weight[in_category] / kind_main_weight[in_category].sum()
        main_kind[mask] = rng.choice(in_category, size=int(mask.sum()), p=weights)
    main_sku = _pick_kind_variants(catalogue, main_kind, rng.random(total))
    main_sku = np.where(uses_habit, customers.habit_sku[order_customer], main_sku)
    line_orders.append(np.arange(total))
    line_skus.append(main_sku)

    # 2. Complements of an anchor: usually the anchor's matching variant.
    _add_complements(catalogue, rng, main_sku, line_orders, line_skus)

    # 3. Staples: a large share of all baskets.
    kind_names = [kind[0] for kind in KINDS]
    staple_orders = np.flatnonzero(rng.random(total) < STAPLE_SHARE)
    staple_kind = np.array([kind_names.index(name) for name in STAPLES])[
        rng.choice(len(STAPLES), size=len(staple_orders), p=STAPLE_WEIGHTS)
    ]
    line_orders.append(staple_orders)
    line_skus.append(_pick_kind_variants(catalogue, staple_kind, rng.random(len(staple_orders))))

    # 4. A few more items from anywhere; big spenders fill bigger baskets.
    extra_mean = np.where(names[order_customer] == "big_spender", 2.0, 0.45)
    extra_counts = rng.poisson(extra_mean)
    extra_orders = np.repeat(np.arange(total), extra_counts)
    extra_kind = rng.choice(len(KINDS), size=len(extra_orders), p=kind_main_weight / kind_main_weight.sum())
    line_orders.append(extra_orders)
    line_skus.append(_pick_kind_variants(catalogue, extra_kind, rng.random(len(extra_orders))))
    return line_orders, line_skus


def _add_complements(catalogue: Catalogue, rng, main_sku: np.ndarray, line_orders: list, line_skus: list) -> None:
    """Append the complements of each order whose main item is an anchor (usually its matching variant)."""
    main_kind = catalogue.kind[main_sku]
    kind_names = [kind[0] for kind in KINDS]
    for anchor, complements in COMPLEMENTS.items():
        anchor_index = kind_names.index(anchor)
        with_anchor = np.flatnonzero(main_kind == anchor_index)
        if not len(with_anchor):
            continue
        anchor_variant = np.searchsorted(catalogue.kind_skus[anchor_index], main_sku[with_anchor])
        for complement, probability in complements:
            complement_index = kind_names.index(complement)
            variants = catalogue.kind_skus[complement_index]
            chosen = rng.random(len(with_anchor)) < probability
            matching = rng.random(len(with_anchor)) < MATCHING_VARIANT
            sku = np.where(
                matching,
                variants[anchor_variant % len(variants)],
                _pick_variant(catalogue, complement_index, rng.random(len(with_anchor))),
            )
            line_orders.append(with_anchor[chosen])
            line_skus.append(sku[chosen])


def _write_lines(block: ShopBlock, catalogue: Catalogue, rng, order_archetypes: np.ndarray, line_orders: list,
                 line_skus: list) -> None:
    """One line per sku per order, grouped by order (sorted by order, then sku), with quantities and prices."""
    combined = np.unique(np.concatenate(line_orders) * len(catalogue) + np.concatenate(line_skus))
    line_order = combined // len(catalogue)
    line_sku = combined % len(catalogue)
    count = len(line_sku)
    consumable = catalogue.repeat_purchase[line_sku]
    quantity = np.where(consumable, 1 + rng.poisson(0.5, count), 1 + (rng.random(count) < 0.05))
    quantity = np.where(order_archetypes[line_order] == "big_spender", quantity + rng.integers(0, 2, count),
                        quantity)
    # A tenth of the lines were bought on sale.
    discount = np.where(rng.random(count) < 0.1, rng.uniform(0.8, 0.95, count), 1.0)
    unit_price = np.maximum(np.round(catalogue.prices[line_sku] * discount, 2), 0.01)
    block.line_order = line_order
    block.line_sku = line_sku
    block.line_quantity = quantity.astype(np.int64)
    block.line_unit_price = unit_price


def _generate_events(block: ShopBlock, rng, as_of_s: int) -> None:
    """Views and add-to-cart before orders (at most 2 per order); follows and interactions for community members."""
    first_line = np.searchsorted(block.line_order, np.arange(len(block.order_ids)))
    total = len(block.order_ids)
    viewed = np.flatnonzero(rng.random(total) < 0.6)
    carted = np.flatnonzero(rng.random(total) < 0.25)
    customers, types, skus, times = [], [], [], []
    for orders, kind, lead_minutes in ((viewed, "view", 60), (carted, "add_to_cart", 10)):
        customers.append(block.order_customer[orders])
        types.append(np.full(len(orders), kind))
        skus.append(block.line_sku[first_line[orders]])
        times.append(block.placed_at[orders] - rng.integers(1, lead_minutes * 60, len(orders)))
    members = np.flatnonzero(block.community_member)
    customers.append(members)
    types.append(np.full(len(members), "follow"))
    skus.append(np.full(len(members), -1))
    times.append(block.joined_at[members] + rng.integers(0, 7 * DAY, len(members)))
    interactions = rng.poisson(np.where(np.isin(np.array(block.archetypes)[members], ["loyal", "big_spender"]), 6, 2))
    interacting = np.repeat(members, interactions)
    customers.append(interacting)
    types.append(np.full(len(interacting), "community_interaction"))
    skus.append(np.full(len(interacting), -1))
    span = np.maximum(as_of_s - block.joined_at[interacting], DAY)
    times.append(block.joined_at[interacting] + (rng.random(len(interacting)) * span).astype(np.int64))
    at = np.minimum(np.concatenate(times), as_of_s)
    block.event_customer = np.concatenate(customers)
    block.event_type = np.concatenate(types).tolist()
    block.event_sku = np.concatenate(skus)
    block.event_at = at


# ---- identities exactly like the REST path ----------------------------------------------------------


def block_orders(block: ShopBlock, catalogue: Catalogue) -> OrderChunk:
    """A block's orders and lines as the order writer takes them (hashes and totals from order_identity)."""
    bounds = np.searchsorted(block.line_order, np.arange(len(block.order_ids) + 1)).astype(np.int64)
    lines = LineColumns([catalogue.skus[sku] for sku in block.line_sku.tolist()], block.line_quantity,
                        block.line_unit_price, bounds[:-1], bounds[1:])
    customer_ids = [block.customer_ids[customer] for customer in block.order_customer.tolist()]
    placed_micros = np.asarray(block.placed_at, dtype=np.int64) * 1_000_000
    return chunk_of_orders(list(block.order_ids), customer_ids, placed_micros, list(block.status), lines)


def event_keys(block: ShopBlock, catalogue: Catalogue) -> list[str]:
    """Each event's key as shared.ingest.event_key computes it for an event without event_id."""
    return [
        event_content_key(block.customer_ids[customer], kind, catalogue.skus[sku] if sku >= 0 else None,
                          _datetime(at))
        for customer, kind, sku, at in zip(block.event_customer.tolist(), block.event_type,
                                           block.event_sku.tolist(), block.event_at.tolist())
    ]


# ---- loading -------------------------------------------------------------------------------------


@dataclass
class DemoSummary:
    """What seed_demo_shop wrote."""

    customers: int = 0
    products: int = 0
    promotions: int = 0
    orders: int = 0
    order_lines: int = 0
    events: int = 0
    seconds: float = 0.0
    seed: int = 7
    as_of: datetime = DEFAULT_AS_OF

    def describe(self) -> str:
        """One paragraph for the command line."""
        rate = self.order_lines / self.seconds if self.seconds > 0 else 0
        return (
            f"demo shop (seed {self.seed}, as of {self.as_of:%Y-%m-%d}): {self.customers:,} customers, "
            f"{self.products:,} products, {self.promotions} promotions, {self.orders:,} orders, "
            f"{self.order_lines:,} order lines, {self.events:,} events written in {self.seconds:.1f} s "
            f"({rate:,.0f} order lines/s)"
        )


def database_has_orders(database) -> bool:
    """True when at least one order is stored."""
    with database.session() as session:
        return session.execute(select(Order.order_id).limit(1)).first() is not None


def seed_demo_shop(database, customers: int = 2000, seed: int = 7, as_of: datetime | None = None,
                   progress: bool = True, *, skus: int = DEFAULT_SKUS) -> DemoSummary:
    """Generate the demo shop and write it with the bulk helpers; rows already stored are left alone."""
    started = time.perf_counter()
    shop_iterator = generate_shop(customers, seed, as_of, skus=skus)
    shop: Shop = next(shop_iterator)
    summary = DemoSummary(seed=seed, as_of=shop.as_of)
    now = utcnow()
    with bulk.raw_connection(database) as connection:
        bulk.begin_sqlite_write(connection)
        summary.products = _write_products(connection, shop.catalogue, now)
        summary.promotions = _write_promotions(connection, shop.promotions, now)
    bar = tqdm(total=customers, unit=" customers", unit_scale=True, desc="demo shop", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for block in shop_iterator:
            # One transaction per block: memory and lock time stay bounded.
            with bulk.raw_connection(database) as connection:
                bulk.begin_sqlite_write(connection)
                bulk.tune_postgres_session(connection)
                _write_block(connection, block, shop.catalogue, now, summary)
            bar.update(len(block.customer_ids))
    finally:
        bar.close()
    with database.session() as session:
        refresh_customer_aggregates(session, None)
    summary.seconds = time.perf_counter() - started
    return summary


def _write_products(connection, catalogue: Catalogue, now: datetime) -> int:
    rows = [
        (sku, name, category, price, cost, stock, active, repeat, False, now)
        for sku, name, category, price, cost, stock, active, repeat in zip(
            catalogue.skus, catalogue.names, catalogue.categories, catalogue.prices.tolist(),
            catalogue.costs.tolist(), catalogue.stock.tolist(), catalogue.active.tolist(),
            catalogue.repeat_purchase.tolist(),
        )
    ]
    bulk.bulk_write(connection, "products", PRODUCT_COLUMNS, rows, ["sku"], PRODUCT_COLUMNS[1:])
    return len(rows)


def _write_promotions(connection, promotions: list[dict], now: datetime) -> int:
    rows = [tuple(promotion[name] for name in PROMOTION_COLUMNS[:-1]) + (now,) for promotion in promotions]
    bulk.bulk_write(connection, "promotions", PROMOTION_COLUMNS, rows, ["promotion_id"], PROMOTION_COLUMNS[1:])
    return len(rows)


def _write_block(connection, block: ShopBlock, catalogue: Catalogue, now: datetime, summary: DemoSummary) -> None:
    """Customers, then their orders through the one order writer (an order already stored is left as it
    is), then events."""
    keys = event_keys(block, catalogue)
    postgres = bulk.dialect_of(connection) == "postgresql"
    stamp = _time_formatter(postgres)
    now_text = stamp(_timestamp(now)) if postgres else now.strftime(bulk.SQLITE_DATETIME_FORMAT)
    customers = [
        (customer_id, stamp(joined), channel, member, opted, {"demo_archetype": archetype}, False, 0, 0.0, 0,
         now_text)
        for customer_id, joined, channel, member, opted, archetype in zip(
            block.customer_ids, block.joined_at.tolist(), block.channels, block.community_member.tolist(),
            block.opted_out.tolist(), block.archetypes,
        )
    ]
    events = [
        (key, block.customer_ids[customer], kind, catalogue.skus[sku] if sku >= 0 else None, stamp(at))
        for key, customer, kind, sku, at in zip(
            keys, block.event_customer.tolist(), block.event_type, block.event_sku.tolist(), block.event_at.tolist()
        )
    ]
    summary.customers += bulk.bulk_write(connection, "customers", CUSTOMER_COLUMNS, customers, ["customer_id"])
    written = bulk.write_orders(connection, block_orders(block, catalogue), bulk_load=True)
    summary.orders += written.created
    summary.order_lines += written.created_lines
    summary.events += bulk.bulk_write(connection, "events", EVENT_COLUMNS, events, ["event_key"])


def _time_formatter(postgres: bool):
    """Seconds since 1970 -> the text each database stores (PostgreSQL COPY text or SQLAlchemy's SQLite format)."""
    if postgres:
        return lambda seconds: _datetime(seconds).isoformat(sep=" ")
    return lambda seconds: _datetime(seconds).strftime(bulk.SQLITE_DATETIME_FORMAT)


def _line_numbers(line_order: np.ndarray) -> np.ndarray:
    """1, 2, 3... within each order (lines are grouped by order)."""
    if not len(line_order):
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(line_order)) + 1]
    counts = np.diff(np.r_[starts, len(line_order)])
    return np.arange(len(line_order)) - np.repeat(starts, counts) + 1
