"""The add-on search as it was before its per-request cost was cut (commit 2154d6e), kept verbatim as the
reference that tests/unit/test_addons_equivalence.py compares the served implementation with."""

import numpy as np

from services.recommend.addons import DEFAULT_OPTIONS, InvalidAddOnInputError


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
    """Distinct, positively priced candidates with their price, affinity and margin, each scaled to [0, 1]."""
    candidates = np.asarray(candidates, dtype=np.int64)
    affinity = np.asarray(affinity, dtype=float)
    price = np.asarray(price, dtype=float)
    margin = np.asarray(margin, dtype=float)
    if affinity.shape != candidates.shape:
        raise InvalidAddOnInputError("affinity must be aligned with candidates")
    if candidates.size and (candidates.min() < 0 or candidates.max() >= price.shape[0] or margin.shape != price.shape):
        raise InvalidAddOnInputError("candidates must index the price and margin arrays")
    candidates, first_position = np.unique(candidates, return_index=True)
    affinity = affinity[first_position]
    item_price = price[candidates] if candidates.size else np.zeros(0)
    # Free or mispriced items cannot close a spend gap.
    priced = item_price > 0
    candidates, affinity, item_price = candidates[priced], affinity[priced], item_price[priced]
    if candidates.size == 0:
        return candidates, item_price, affinity, np.zeros(0)

    # The median is taken over the candidates only: a request must not scan a 50,000-item catalogue.
    candidate_margin = margin[candidates]
    known_margin = candidate_margin[np.isfinite(candidate_margin)]
    default_margin = float(np.median(known_margin)) if known_margin.size else 0.0
    item_margin = np.clip(np.nan_to_num(candidate_margin, nan=default_margin), 0.0, 1.0)
    best_affinity = max(float(np.max(affinity)), 0.0)
    item_affinity = np.clip(affinity / best_affinity, 0.0, 1.0) if best_affinity > 0 else np.zeros_like(affinity)
    return candidates, item_price, item_affinity, item_margin


def _pair_options(candidates, item_price, item_affinity, item_margin, gap, allowed, options):
    """Scored pairs among the most relevant candidates that are each alone short of the gap."""
    short = np.flatnonzero(item_price < gap)
    pool = short[np.lexsort((candidates[short], -item_affinity[short]))][: options.max_pair_candidates]
    pool = pool[np.argsort(item_price[pool], kind="stable")]
    pool_price = item_price[pool]
    low = np.searchsorted(pool_price, gap - pool_price, side="left")
    high = np.searchsorted(pool_price, gap + allowed - pool_price, side="right")
    # Only partners after the first item in price order, so each pair is listed once.
    low = np.maximum(low, np.arange(pool.size) + 1)
    counts = np.clip(high - low, 0, None)
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
    items = [option["items"] for option in scored]
    totals = np.concatenate([option["total"] for option in scored])
    ranks = np.concatenate([option["rank"] for option in scored])
    sizes = np.concatenate([np.full(option["total"].size, len(option["items"])) for option in scored])
    starts = np.cumsum([0] + [option["total"].size for option in scored])
    # Best rank first; ties: smaller overshoot, then fewer items.
    order = np.lexsort((sizes, totals, -ranks))
    names = (lambda i: str(item_names[i])) if item_names is not None else (lambda i: f"item {i}")
    currency = options.currency
    uses = {}
    suggestions = []
    for position in order:
        if len(suggestions) >= options.n:
            break
        block = int(np.searchsorted(starts, position, side="right") - 1)
        local = position - starts[block]
        chosen = [int(column[local]) for column in items[block]]
        if any(uses.get(item, 0) >= options.max_uses_per_item for item in chosen):
            continue
        for item in chosen:
            uses[item] = uses.get(item, 0) + 1
        total = float(totals[position])
        overshoot = round(total - float(gap), 2)
        listed = " + ".join(names(i) for i in chosen)
        suggestions.append({
            "items": chosen,
            "total_price": round(total, 2),
            "overshoot": overshoot,
            "saving": float(saving),
            "rank_score": float(ranks[position]),
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
