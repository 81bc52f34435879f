"""Cart cross-sell: merge the cart items' precomputed neighbour lists with the popularity list.

Serving and offline evaluation run the *same* code: ``recommend_for_cart``
builds the lists a web worker would pull from Redis (each cart item's stored
top-N row of ``model.scores_`` plus the model's top ``n_popular`` popularity
list) and hands them to ``merge_neighbor_lists``.  So the offline HR@10 is
the served HR@10, including the effect of top-N pruning and of truncating the
popularity backfill.

Bounded work for huge carts: only the ``model.cart.max_cart_items`` (K, default
20) most informative cart items contribute neighbour lists.  Informativeness
of an item = the sum of its stored neighbour scores (= its total excess
co-purchase probability), which the web tier can compute from the lists it
fetched; items with no evidence add nothing anyway, so capping at K loses
little while a 500-item cart costs K lists, not 500.  Every cart item is
still excluded from the output.

Pure module: numpy only.
"""

from __future__ import annotations

import numpy as np


class InvalidCartError(ValueError):
    """Raised when cart items, exclusions or neighbour lists are malformed."""


def merge_neighbor_lists(lists, n, exclude=None):
    """Top-n (items, scores) of sum(weight * score) over lists of (items, scores, weight), skipping exclude.

    Ties are broken by the lower item index so results are deterministic.
    ``exclude`` is an array of item indices (not a mask) so the web tier never
    needs a catalogue-sized array per request.
    """
    if n < 0:
        raise InvalidCartError("n must be >= 0")
    item_parts, score_parts = [], []
    for items, scores, weight in lists:
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        if items.shape != scores.shape:
            raise InvalidCartError("each list needs one score per item")
        item_parts.append(items)
        score_parts.append(scores * float(weight))
    if not item_parts:
        return np.zeros(0, np.int64), np.zeros(0)
    all_items = np.concatenate(item_parts)
    all_scores = np.concatenate(score_parts)
    if exclude is not None and len(exclude):
        keep = ~np.isin(all_items, np.asarray(exclude, dtype=np.int64))
        all_items, all_scores = all_items[keep], all_scores[keep]
    candidates, positions = np.unique(all_items, return_inverse=True)
    totals = np.bincount(positions, weights=all_scores, minlength=candidates.size)
    order = np.lexsort((candidates, -totals))[:n]
    return candidates[order], totals[order]


def select_cart_items(cart_items, informativeness, max_items):
    """The max_items cart items with the highest informativeness (ties: lower index), distinct."""
    cart = np.unique(np.asarray(cart_items, dtype=np.int64))
    if cart.size <= max_items:
        return cart
    values = np.asarray(informativeness, dtype=float)[cart]
    order = np.lexsort((cart, -values))
    return cart[order[:max_items]]


def cart_neighbor_lists(model, cart_items):
    """The (items, scores, weight) lists that serving merges for this cart, popularity list included."""
    cart = np.unique(np.asarray(cart_items, dtype=np.int64))
    if cart.size and (cart.min() < 0 or cart.max() >= model.n_items_):
        raise InvalidCartError(f"cart items must be within 0..{model.n_items_ - 1}")
    lists = [(model.popular_items_, model.popular_scores_, model.cart.popularity_weight)]
    for item in select_cart_items(cart, model.informativeness_, model.cart.max_cart_items):
        items, scores = model.neighbor_list(item)
        lists.append((items, scores, 1.0))
    return lists


def recommend_for_cart(model, cart_items, n, exclude_mask=None):
    """(items, scores): the n best add-to-cart items for a cart; never cart or excluded items."""
    cart = np.unique(np.asarray(cart_items, dtype=np.int64))
    exclude = cart
    if exclude_mask is not None:
        exclude_mask = np.asarray(exclude_mask, dtype=bool)
        if exclude_mask.shape != (model.n_items_,):
            raise InvalidCartError("exclude_mask must have one flag per item")
        exclude = np.union1d(cart, np.flatnonzero(exclude_mask))
    return merge_neighbor_lists(cart_neighbor_lists(model, cart), n, exclude)


def cart_reason(model, cart_items, item, item_names=None):
    """A short sentence saying why ``item`` is suggested for this cart."""
    names = (lambda i: str(item_names[i])) if item_names is not None else (lambda i: f"item {i}")
    best_anchor, best_score, best_count = None, 0.0, 0
    for anchor in select_cart_items(cart_items, model.informativeness_, model.cart.max_cart_items):
        row = model.scores_.getrow(anchor)
        hit = np.flatnonzero(row.indices == item)
        if hit.size and row.data[hit[0]] > best_score:
            best_anchor, best_score = anchor, row.data[hit[0]]
            best_count = int(model.pair_counts_[anchor, item])
    if best_anchor is None:
        return f"popular right now: in {model.popularity_[item]:.0%} of recent orders"
    return f"often bought with {names(best_anchor)} ({best_count} orders together)"
