"""Bundles: 2-3 complementary items per anchor, priced with a margin-safe discount.

How a bundle is built for an anchor item (settings: ``BundleOptions`` and
``BundlePricing``; item arrays: ``BundleCatalogue``):

1. Partners are the anchor's co-purchase neighbours (``model.scores_``: bought
   together beyond chance) that are active, in stock, priced > 0, bought
   together in at least ``min_pair_count`` orders and -- unless
   ``allow_same_category`` -- in a different category (a bundle of two
   phones is a substitute, not a complement).
2. Partners are ranked by co-purchase score, boosted by ``slow_mover_boost``
   when the partner is a slow mover (ABC class C) and the anchor sells
   (A or B): the anchor's traffic clears stock that would not move alone.
3. A 3-item bundle adds the second-best partner when its category differs
   from both others (or same-category is allowed).
4. Price: discount = min(target_discount, the largest discount that keeps
   gross margin >= margin_floor), never below 0.  Unknown cost (NaN) is
   assumed to be price * (1 - default_margin), default_margin = 0.30 -- a
   deliberately cautious typical retail gross margin so an unknown cost never
   leads to a deep discount.  Bundle price is rounded *up* to the cent so
   rounding cannot push the margin under the floor.  Bundles whose allowed
   discount is below ``min_discount`` are dropped: a 0 % bundle is noise.

Pure module: numpy / scipy.sparse only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.recommend.cooccurrence import top_n_per_row


class InvalidBundleInputError(ValueError):
    """Raised when item metadata arrays or pricing parameters are invalid."""


def _item_array(values, n_items, name, dtype):
    """Validate one per-item metadata array."""
    array = np.asarray(values, dtype=dtype)
    if array.shape != (n_items,):
        raise InvalidBundleInputError(f"{name} must have one value per item ({n_items})")
    return array


def effective_cost(price, cost, default_margin):
    """Cost per item, with unknown (NaN) costs assumed at price * (1 - default_margin)."""
    price = np.asarray(price, dtype=float)
    cost = np.asarray(cost, dtype=float)
    return np.where(np.isnan(cost), price * (1.0 - default_margin), cost)


def margin_safe_discount(list_price, total_cost, target_discount, margin_floor):
    """min(target, largest discount keeping (price - cost) / price >= floor), clipped at 0."""
    list_price = np.asarray(list_price, dtype=float)
    total_cost = np.asarray(total_cost, dtype=float)
    # (P - C) / P >= f  <=>  P >= C / (1 - f)  <=>  discount <= 1 - C / ((1 - f) * L)
    with np.errstate(divide="ignore", invalid="ignore"):
        max_discount = 1.0 - total_cost / ((1.0 - margin_floor) * list_price)
    max_discount = np.nan_to_num(max_discount, nan=0.0, neginf=0.0)
    return np.clip(np.minimum(target_discount, max_discount), 0.0, None)


@dataclass(frozen=True)
class BundleCatalogue:
    """Per-item arrays a bundle is built from, aligned with the model's item indices.

    ``abc``: ABC class per item (None: every item "B"); ``names``: item names for the reasons.
    """

    price: np.ndarray
    cost: np.ndarray
    category: np.ndarray
    active: np.ndarray
    in_stock: np.ndarray
    abc: np.ndarray | None = None
    names: np.ndarray | list | None = None


@dataclass(frozen=True)
class BundlePricing:
    """Discount target, the margin floor it must respect, the margin assumed for unknown costs, the least discount."""

    target_discount: float = 0.10
    margin_floor: float = 0.08
    default_margin: float = 0.30
    min_discount: float = 0.01


@dataclass(frozen=True)
class BundleOptions:
    """How many bundles per anchor, of how many items, from which partners, and how they are priced."""

    bundles_per_anchor: int = 2
    max_items: int = 3
    allow_same_category: bool = False
    min_pair_count: int = 5
    slow_mover_boost: float = 0.5
    pricing: BundlePricing = field(default_factory=BundlePricing)


DEFAULT_OPTIONS = BundleOptions()


def build_bundles(model, catalogue: BundleCatalogue, options: BundleOptions = DEFAULT_OPTIONS, anchors=None) -> list:
    """List of bundle dicts (anchor, items, list_price, bundle_price, discount, margin, reason), best first per anchor."""
    n_items = model.n_items_
    price = _item_array(catalogue.price, n_items, "price", float)
    cost = _item_array(catalogue.cost, n_items, "cost", float)
    category = _item_array(catalogue.category, n_items, "category", np.int64)
    active = _item_array(catalogue.active, n_items, "active", bool)
    in_stock = _item_array(catalogue.in_stock, n_items, "in_stock", bool)
    abc = np.full(n_items, "B") if catalogue.abc is None else _item_array(catalogue.abc, n_items, "abc", "<U1")
    pricing = options.pricing
    if not all(0 <= value < 1 for value in (pricing.target_discount, pricing.margin_floor, pricing.default_margin)):
        raise InvalidBundleInputError("target_discount, margin_floor and default_margin must be in [0, 1)")
    if options.max_items not in (2, 3):
        raise InvalidBundleInputError("max_items must be 2 or 3")
    item_names = catalogue.names
    names = (lambda i: str(item_names[i])) if item_names is not None else (lambda i: f"item {i}")

    sellable = active & in_stock & (price > 0)
    anchor_mask = sellable.copy()
    if anchors is not None:
        chosen = np.zeros(n_items, dtype=bool)
        chosen[np.asarray(anchors, dtype=np.int64)] = True
        anchor_mask &= chosen
    pairs = _ranked_pairs(model, anchor_mask, sellable, category, abc, options)
    unit_cost = effective_cost(price, cost, pricing.default_margin)
    rows = pairs["rows"]
    bundles = []
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if rows.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], rows.size] if rows.size else np.zeros(0, np.int64)
    for start, end in zip(starts, ends):
        for items in _candidate_sets(int(rows[start]), pairs["cols"][start:end], category, options):
            bundle = _price_bundle(items, price, unit_cost, pricing.target_discount, pricing.margin_floor)
            if bundle["discount"] < pricing.min_discount:
                continue
            bundle.update(_describe_bundle(items, pairs, start, end, names))
            bundles.append(bundle)
    return bundles


def _ranked_pairs(model, anchor_mask, sellable, category, abc, options) -> dict:
    """Eligible (anchor, partner) pairs from the sparse neighbour lists, the best few per anchor, ranked."""
    scores = model.scores_.tocoo()
    counts = model.pair_counts_.tocsr()
    rows, cols, pair_scores = scores.row.astype(np.int64), scores.col.astype(np.int64), scores.data
    pair_counts = np.asarray(counts[rows, cols]).ravel() if rows.size else np.zeros(0)
    eligible = anchor_mask[rows] & sellable[cols] & (pair_counts >= options.min_pair_count)
    if not options.allow_same_category:
        eligible &= category[rows] != category[cols]
    rows, cols, pair_scores, pair_counts = rows[eligible], cols[eligible], pair_scores[eligible], pair_counts[eligible]
    clears_stock = (abc[cols] == "C") & np.isin(abc[rows], ("A", "B"))
    ranking = pair_scores * np.where(clears_stock, 1.0 + options.slow_mover_boost, 1.0)
    top = top_n_per_row(rows, cols, ranking, max(options.bundles_per_anchor, 2))
    return {"rows": rows[top], "cols": cols[top], "pair_counts": pair_counts[top],
            "clears_stock": clears_stock[top], "ranking": ranking[top]}


def _candidate_sets(anchor, partners, category, options) -> list:
    """Item lists to price for one anchor: the 3-item bundle first when allowed, then anchor + each partner."""
    candidate_sets = [[anchor, int(partner)] for partner in partners[: options.bundles_per_anchor]]
    if options.max_items == 3 and partners.size >= 2:
        first, second = int(partners[0]), int(partners[1])
        if options.allow_same_category or category[first] != category[second]:
            candidate_sets.insert(0, [anchor, first, second])
    return candidate_sets[: options.bundles_per_anchor]


def _describe_bundle(items, pairs, start, end, names) -> dict:
    """Anchor, orders bought together, score and the merchant-readable reason of one bundle."""
    anchor = items[0]
    partners = pairs["cols"][start:end]
    partner_positions = [start + int(np.flatnonzero(partners == item)[0]) for item in items[1:]]
    together = int(min(pairs["pair_counts"][p] for p in partner_positions))
    slow = [items[1 + k] for k, p in enumerate(partner_positions) if pairs["clears_stock"][p]]
    reason = f"bought together with {names(anchor)} in {together} orders"
    if slow:
        reason += "; clears slow-moving " + ", ".join(names(i) for i in slow)
    return {
        "anchor": anchor,
        "pair_count": together,
        "score": float(max(pairs["ranking"][p] for p in partner_positions)),
        "reason": reason,
    }


def _price_bundle(items, price, unit_cost, target_discount, margin_floor) -> dict:
    """Price one bundle: list price, margin-safe discount, bundle price rounded up to the cent."""
    list_price = float(price[items].sum())
    total_cost = float(unit_cost[items].sum())
    discount = float(margin_safe_discount(list_price, total_cost, target_discount, margin_floor))
    bundle_price = np.ceil(list_price * (1.0 - discount) * 100.0 - 1e-6) / 100.0
    bundle_price = min(bundle_price, list_price)
    effective_discount = 1.0 - bundle_price / list_price
    margin = (bundle_price - total_cost) / bundle_price
    return {
        "items": [int(i) for i in items],
        "list_price": round(list_price, 2),
        "bundle_price": round(float(bundle_price), 2),
        "discount": round(float(effective_discount), 4),
        "margin_after_discount": round(float(margin), 4),
    }
