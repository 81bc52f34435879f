"""湊單 add-ons: close the gap to a spend-threshold promotion with the least overshoot.

Two steps, both pure and vectorised:

``best_threshold_gap`` picks the promotion worth chasing.  Promotions with the
same scope (cart-wide, or the same category) are *tiers*, not stackable
("spend 200 save 30", "spend 300 save 50"): reaching a tier is worth its
discount minus the best discount the cart already unlocked in that scope.
Different scopes stack.  Among unreached tiers with a positive incremental
saving the rule is: highest incremental saving per unit of extra spend
(saving / gap), then the larger saving, then the smaller gap, then the lower
promotion id -- a customer 10 short of "save 30" is a far better prompt than
one 150 short of "save 50".

``suggest_add_ons`` proposes single items or pairs whose total price reaches
the gap with an overshoot of at most ``max_overshoot_fraction * gap`` (settings
in ``AddOnOptions``).
Zero- or negative-priced items never count.  Pairs are searched among the
``max_pair_candidates`` candidates with the highest affinity only: sorted by
price, ``np.searchsorted`` finds for each first item the price window of
partners that land inside [gap, gap + allowed overshoot], so the search is
O(M log M + number of valid pairs), bounded by M^2 / 2.  A pair is dropped
when either of its items alone already reaches the gap (buying both would
only add overshoot).

Ranking blend (each term in [0, 1], weights are ``RankWeights``)::

    rank = 0.4 * closeness + 0.4 * affinity + 0.2 * margin   (x 0.9 for a pair)

closeness = 1 - overshoot / allowed overshoot; affinity = score to the cart
divided by the best candidate's (pairs: mean of both); margin = the items'
gross margin fraction (pairs: price-weighted).  Pairs get a 10 % penalty
because asking for two items converts worse than asking for one.  Each item
appears in at most ``max_uses_per_item`` suggestions so the list is not five
variations of one product.

Pure module: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class InvalidPromotionError(ValueError):
    """Raised when a promotion lacks a positive threshold or a non-negative discount."""


class InvalidAddOnInputError(ValueError):
    """Raised when candidate, price, affinity or margin arrays do not fit together."""


def _scope_total(promotion, cart_total, cart_categories_totals):
    """Cart spend that counts toward a promotion: the category's total for a category promotion."""
    category = promotion.get("category")
    if category is None:
        return float(cart_total)
    return float((cart_categories_totals or {}).get(category, 0.0))


def best_threshold_gap(cart_total, promotions, cart_categories_totals=None):
    """The unreached promotion with the best incremental saving per extra spend, or None.

    Returns a dict: promotion_id, threshold, discount, category, gap,
    saving (incremental over tiers already reached in the same scope),
    saving_per_unit.
    """
    if cart_total < 0:
        raise InvalidAddOnInputError("cart_total must be >= 0")
    scopes = {}
    for promotion in promotions:
        if not promotion.get("active", True):
            continue
        threshold = float(promotion["threshold"])
        discount = float(promotion["discount"])
        if threshold <= 0 or discount < 0:
            raise InvalidPromotionError(f"promotion {promotion.get('promotion_id')} needs threshold > 0 and discount >= 0")
        scopes.setdefault(promotion.get("category"), []).append(promotion)

    best, best_key = None, None
    for category, tiers in scopes.items():
        spent = _scope_total(tiers[0], cart_total, cart_categories_totals)
        unlocked = max((float(p["discount"]) for p in tiers if spent >= float(p["threshold"])), default=0.0)
        for promotion in tiers:
            gap = float(promotion["threshold"]) - spent
            saving = float(promotion["discount"]) - unlocked
            if gap <= 0 or saving <= 0:
                continue
            key = (-saving / gap, -saving, gap, str(promotion.get("promotion_id")))
            if best_key is None or key < best_key:
                best_key = key
                best = {
                    "promotion_id": promotion.get("promotion_id"),
                    "threshold": float(promotion["threshold"]),
                    "discount": float(promotion["discount"]),
                    "category": category,
                    "gap": round(gap, 2),
                    "saving": round(saving, 2),
                    "saving_per_unit": saving / gap,
                }
    return best


@dataclass(frozen=True)
class RankWeights:
    """Weights of the ranking blend of add-on suggestions (see the module docstring)."""

    closeness: float = 0.4
    affinity: float = 0.4
    margin: float = 0.2
    pair_penalty: float = 0.9


@dataclass(frozen=True)
class AddOnOptions:
    """How many suggestions, how far they may overshoot, how pairs are searched, and how they are worded."""

    max_overshoot_fraction: float = 0.5
    n: int = 5
    allow_pairs: bool = True
    max_pair_candidates: int = 200
    max_uses_per_item: int = 2
    weights: RankWeights = field(default_factory=RankWeights)
    currency: str = ""


DEFAULT_OPTIONS = AddOnOptions()


def suggest_add_ons(gap, candidates, price, affinity, margin, saving=0.0, item_names=None, options=DEFAULT_OPTIONS):
    """Single items or pairs that close ``gap`` with least overshoot, best first; None when gap <= 0.

    ``candidates``: item indices (already filtered to the promotion's category,
    in stock, not in the cart). ``affinity``: score to the cart, aligned with
    ``candidates``. ``price`` and ``margin`` (gross margin fraction, NaN =
    unknown -> median of the candidates' known margins) are catalogue arrays indexed by item.
    Each suggestion: items, total_price, overshoot, saving, rank_score, reason.
    """
    if gap is None or gap <= 0:
        return None
    if options.max_overshoot_fraction < 0 or options.n < 0:
        raise InvalidAddOnInputError("max_overshoot_fraction and n must be >= 0")
    candidates, item_price, item_affinity, item_margin = _priced_candidates(candidates, price, affinity, margin)
    if candidates.size == 0:
        return []
    allowed = float(gap) * options.max_overshoot_fraction
    weights = options.weights

    # Singles: price within [gap, gap + allowed].
    single = (item_price >= gap) & (item_price <= gap + allowed)
    scored = [_score_options(
        [candidates[single]], item_price[single], item_affinity[single], item_margin[single], gap, allowed,
        weights, 1.0,
    )]
    if options.allow_pairs and candidates.size >= 2:
        scored.append(_pair_options(candidates, item_price, item_affinity, item_margin, gap, allowed, options))
    return _pick_suggestions(scored, gap, saving, item_names, options)


def _priced_candidates(candidates, price, affinity, margin):
    """Distinct, positively priced candidates with their price, affinity and margin, each scaled to [0, 1].

    Written with as few numpy calls as it takes (a request has about 60 candidates, so each call's fixed
    cost dominates); tests/unit/test_addons_equivalence.py checks it answers exactly as np.unique,
    np.median and np.nan_to_num did.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    affinity = np.asarray(affinity, dtype=float)
    price = np.asarray(price, dtype=float)
    margin = np.asarray(margin, dtype=float)
    if affinity.shape != candidates.shape:
        raise InvalidAddOnInputError("affinity must be aligned with candidates")
    if candidates.size and (candidates.min() < 0 or candidates.max() >= price.shape[0] or margin.shape != price.shape):
        raise InvalidAddOnInputError("candidates must index the price and margin arrays")
    # Distinct candidates in item order, each with its first affinity (what np.unique(return_index=True) gives).
    order = candidates.argsort(kind="stable")
    candidates = candidates[order]
    if candidates.size > 1:
        first = np.empty(candidates.size, dtype=bool)
        first[0] = True
        np.not_equal(candidates[1:], candidates[:-1], out=first[1:])
        if not first.all():
            order, candidates = order[first], candidates[first]
    affinity = affinity[order]
    item_price = price[candidates]
    # Free or mispriced items cannot close a spend gap.
    priced = item_price > 0
    if not priced.all():
        candidates, affinity, item_price = candidates[priced], affinity[priced], item_price[priced]
    if candidates.size == 0:
        return candidates, item_price, affinity, np.zeros(0)

    # The median is taken over the candidates only: a request must not scan a 50,000-item catalogue.
    candidate_margin = margin[candidates]
    unknown = np.isnan(candidate_margin)
    known_margin = np.sort(candidate_margin[np.isfinite(candidate_margin)])
    default_margin = _median_of_sorted(known_margin)
    if unknown.any():
        candidate_margin = np.where(unknown, default_margin, candidate_margin)
    # Clipped as np.clip would (an infinite margin goes to 0 or 1).
    item_margin = np.minimum(np.maximum(candidate_margin, 0.0), 1.0)
    best_affinity = max(float(affinity.max()), 0.0)
    if best_affinity > 0:
        item_affinity = np.minimum(np.maximum(affinity / best_affinity, 0.0), 1.0)
    else:
        item_affinity = np.zeros_like(affinity)
    return candidates, item_price, item_affinity, item_margin


def _median_of_sorted(values) -> float:
    """np.median of an already sorted array (the mean of the middle two for an even count), 0.0 when empty."""
    count = values.size
    if count == 0:
        return 0.0
    middle = count // 2
    if count % 2:
        return float(values[middle])
    return float((values[middle - 1] + values[middle]) / 2.0)


def _pair_options(candidates, item_price, item_affinity, item_margin, gap, allowed, options):
    """Scored pairs among the most relevant candidates that are each alone short of the gap."""
    short = np.flatnonzero(item_price < gap)
    # Highest affinity first, ties by item: candidates come sorted by item (_priced_candidates), so a stable
    # sort on affinity alone orders them as a lexsort on (affinity, item) would.
    pool = short[np.argsort(-item_affinity[short], kind="stable")][: options.max_pair_candidates]
    pool = pool[np.argsort(item_price[pool], kind="stable")]
    pool_price = item_price[pool]
    low = pool_price.searchsorted(gap - pool_price, side="left")
    high = pool_price.searchsorted(gap + allowed - pool_price, side="right")
    # Only partners after the first item in price order, so each pair is listed once.
    low = np.maximum(low, np.arange(1, pool.size + 1))
    counts = np.maximum(high - low, 0)
    first = np.repeat(np.arange(pool.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    second = np.repeat(low, counts) + offsets
    a, b = pool[first], pool[second]
    pair_price = item_price[a] + item_price[b]
    pair_margin = (item_price[a] * item_margin[a] + item_price[b] * item_margin[b]) / pair_price
    return _score_options(
        [candidates[a], candidates[b]], pair_price, (item_affinity[a] + item_affinity[b]) / 2.0, pair_margin,
        gap, allowed, options.weights, options.weights.pair_penalty,
    )


def _pick_suggestions(scored, gap, saving, item_names, options):
    """The best ``options.n`` scored options, each item used at most ``max_uses_per_item`` times, with reasons."""
    sizes_per_block = [option["total"].size for option in scored]
    totals = np.concatenate([option["total"] for option in scored])
    ranks = np.concatenate([option["rank"] for option in scored])
    sizes = np.repeat([len(option["items"]) for option in scored], sizes_per_block)
    # Best rank first; ties: smaller overshoot, then fewer items.
    order = np.lexsort((sizes, totals, -ranks)).tolist()
    # Every option's items as plain ints, in the concatenated order (one conversion, not one per option).
    chosen_items = []
    for option in scored:
        chosen_items.extend(zip(*(column.tolist() for column in option["items"])))
    totals, ranks = totals.tolist(), ranks.tolist()
    names = (lambda i: str(item_names[i])) if item_names is not None else (lambda i: f"item {i}")
    currency = options.currency
    uses = {}
    suggestions = []
    for position in order:
        if len(suggestions) >= options.n:
            break
        chosen = list(chosen_items[position])
        if any(uses.get(item, 0) >= options.max_uses_per_item for item in chosen):
            continue
        for item in chosen:
            uses[item] = uses.get(item, 0) + 1
        total = totals[position]
        overshoot = round(total - float(gap), 2)
        listed = " + ".join(names(i) for i in chosen)
        suggestions.append({
            "items": chosen,
            "total_price": round(total, 2),
            "overshoot": overshoot,
            "saving": float(saving),
            "rank_score": ranks[position],
            "reason": (
                f"add {listed} ({currency}{total:.2f}) to close the {currency}{float(gap):.2f} gap"
                f" with {currency}{overshoot:.2f} to spare and unlock {currency}{float(saving):.2f} off"
            ),
        })
    return suggestions


def _score_options(item_columns, total, affinity, margin, gap, allowed, weights, penalty):
    """Rank score of candidate options (singles or pairs) with the documented blend."""
    overshoot = total - gap
    closeness = 1.0 - overshoot / allowed if allowed > 0 else (overshoot <= 1e-9).astype(float)
    rank = penalty * (weights.closeness * closeness + weights.affinity * affinity + weights.margin * margin)
    return {"items": item_columns, "total": np.asarray(total, dtype=float), "rank": np.asarray(rank, dtype=float)}
