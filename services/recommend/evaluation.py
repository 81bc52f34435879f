"""Offline evaluation of cart recommenders, with synthetic basket generators.

Protocol (the one in tests/data/README.md): sort baskets by time, train on
the first 80 %, test on the later baskets that hold >= 2 distinct items; in
each test basket hide one item picked with ``np.random.default_rng(seed)``
(``rng.choice`` over the basket's item indices in ascending order, one draw
per test basket in time order), the rest is the cart; a hit when the hidden
item is in the top k.  Because the hidden item is a random draw, HR@10 on
2,954 cases moves by about +-0.01 between seeds: compare models on the same
cases and also report the mean over several seeds.

Results are plain dicts so a training run can store them as JSON.
Pure module: numpy / scipy.sparse only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


class InvalidEvaluationInputError(ValueError):
    """Raised when a split, test case or metric input is malformed."""


@dataclass(frozen=True)
class CartTestCase:
    """One leave-one-out case: the visible cart and the hidden item to find."""

    cart_items: np.ndarray
    hidden_item: int
    basket_index: int


def time_ordered_split(basket_times, train_fraction=0.8):
    """(train_idx, test_idx): baskets sorted by time (stable), first fraction is train."""
    times = np.asarray(basket_times, dtype=float)
    if not 0.0 < train_fraction < 1.0:
        raise InvalidEvaluationInputError("train_fraction must be in (0, 1)")
    if times.ndim != 1 or times.size < 2:
        raise InvalidEvaluationInputError("need a 1-d array of at least two basket times")
    # Stable sort: baskets on the same day keep their given order, so the split
    # is reproducible for a fixed input order.
    order = np.argsort(times, kind="stable")
    n_train = int(times.size * train_fraction)
    return order[:n_train], order[n_train:]


def basket_rows(baskets, basket_indices) -> sp.csr_matrix:
    """The given baskets (rows, in the given order) with each row's distinct items in ascending order."""
    baskets = sp.csr_matrix(baskets)
    rows = np.asarray(basket_indices, dtype=np.int64).reshape(-1)
    # Row indexing copies, so canonicalising the copy never touches the caller's matrix.
    selected = sp.csr_matrix(baskets[rows], copy=True)
    selected.has_canonical_format = False
    selected.sum_duplicates()
    return selected


def leave_one_out_cases(baskets, basket_indices, seed=42, min_items=2, max_cases=None) -> list:
    """One CartTestCase per basket (in the given order) that holds >= min_items distinct items.

    max_cases: at most this many, a sample seeded apart from the hidden items (sample_cases); only the
    sampled cases are built, so the evaluation of a large shop holds thousands of cases, not millions.
    """
    if not sp.issparse(baskets):
        raise InvalidEvaluationInputError("baskets must be a scipy.sparse matrix")
    if min_items < 2:
        raise InvalidEvaluationInputError("min_items must be >= 2 so a cart is left")
    basket_indices = np.asarray(basket_indices).reshape(-1)
    rows = basket_rows(baskets, basket_indices)
    lengths = np.diff(rows.indptr)
    eligible = np.flatnonzero(lengths >= min_items)
    if eligible.size == 0:
        return []
    # One draw per eligible basket in order: integers(0, sizes) consumes the generator exactly as a
    # loop of rng.choice(items) does (tests/unit/test_evaluation.py checks it against that loop).
    hidden_entries = rows.indptr[eligible] + np.random.default_rng(seed).integers(0, lengths[eligible])
    if max_cases is not None and eligible.size > max_cases:
        picks = sample_cases(eligible.size, max_cases)
        eligible, hidden_entries = eligible[picks], hidden_entries[picks]
    return cases_from_entries(rows, eligible, hidden_entries, basket_indices)


def sample_cases(n_cases: int, max_cases: int, seed: int = 42) -> np.ndarray:
    """Ascending positions of a fixed, seeded sample of max_cases of n_cases (comparable night to night)."""
    return np.sort(np.random.default_rng(seed).choice(n_cases, max_cases, replace=False))


def every_item_case_entries(rows: sp.csr_matrix, max_cases: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(row, entry) of every case hiding one entry of a row of 2+ items, in row then entry order; a seeded
    sample of at most max_cases (selection's validation cases and the softmax candidate's training cases)."""
    lengths = np.diff(rows.indptr)
    entry_rows = np.repeat(np.arange(lengths.size), lengths)
    case_entries = np.flatnonzero(lengths[entry_rows] >= 2)
    if case_entries.size > max_cases:
        case_entries = case_entries[sample_cases(case_entries.size, max_cases, seed)]
    return entry_rows[case_entries], case_entries


def cases_from_entries(rows: sp.csr_matrix, cart_rows, hidden_entries, basket_indices) -> list:
    """CartTestCases hiding entry hidden_entries[k] of row cart_rows[k] of rows (basket_rows' output)."""
    cart_rows = np.asarray(cart_rows, dtype=np.int64)
    hidden_entries = np.asarray(hidden_entries, dtype=np.int64)
    starts, stops = rows.indptr[cart_rows], rows.indptr[cart_rows + 1]
    # Each cart is its row without the hidden entry: one gather of every cart's entries, then slices.
    lengths = stops - starts - 1
    cart_starts = np.concatenate([[0], np.cumsum(lengths)])
    offsets = np.arange(cart_starts[-1]) - np.repeat(cart_starts[:-1], lengths)
    entries = np.repeat(starts, lengths) + offsets
    entries += entries >= np.repeat(hidden_entries, lengths)
    cart_items = rows.indices[entries]
    hidden_items = rows.indices[hidden_entries].tolist()
    baskets = np.asarray(basket_indices)[cart_rows].tolist()
    bounds = cart_starts.tolist()
    return [CartTestCase(cart_items[bounds[k]:bounds[k + 1]], int(hidden_items[k]), int(baskets[k]))
            for k in range(cart_rows.size)]


def hit_rate_at_k(recommended_lists, hidden_items, k=10) -> float:
    """Share of cases whose hidden item is in the first k recommendations."""
    if len(recommended_lists) != len(hidden_items):
        raise InvalidEvaluationInputError("one recommendation list per hidden item")
    if not hidden_items:
        return 0.0
    hits = [hidden in list(recs[:k]) for recs, hidden in zip(recommended_lists, hidden_items)]
    return float(np.mean(hits))


def ndcg_at_k(recommended_lists, hidden_items, k=10) -> float:
    """Mean NDCG@k with one relevant item per case (1 / log2(rank + 2) when found)."""
    if len(recommended_lists) != len(hidden_items):
        raise InvalidEvaluationInputError("one recommendation list per hidden item")
    if not hidden_items:
        return 0.0
    gains = []
    for recs, hidden in zip(recommended_lists, hidden_items):
        positions = np.flatnonzero(np.asarray(recs[:k]) == hidden)
        gains.append(1.0 / np.log2(positions[0] + 2.0) if positions.size else 0.0)
    return float(np.mean(gains))


def catalogue_coverage(recommended_lists, n_items, k=10) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    if n_items <= 0:
        raise InvalidEvaluationInputError("n_items must be positive")
    shown = np.zeros(n_items, dtype=bool)
    for recs in recommended_lists:
        shown[np.asarray(recs[:k], dtype=int)] = True
    return float(shown.mean())


def evaluate_cart_recommender(recommend_fn, test_cases, k=10, n_items=None) -> dict:
    """HR@k, NDCG@k and coverage of ``recommend_fn(cart_items, k) -> item indices``."""
    start = time.perf_counter()
    recommended = [np.asarray(recommend_fn(case.cart_items, k))[:k] for case in test_cases]
    elapsed = time.perf_counter() - start
    hidden = [case.hidden_item for case in test_cases]
    for recs, case in zip(recommended, test_cases):
        if np.isin(recs, case.cart_items).any():
            raise InvalidEvaluationInputError("a recommender returned an item already in the cart")
    result = {
        "k": k,
        "n_cases": len(test_cases),
        "hit_rate": hit_rate_at_k(recommended, hidden, k),
        "ndcg": ndcg_at_k(recommended, hidden, k),
        "ms_per_request": 1000.0 * elapsed / max(len(test_cases), 1),
    }
    if n_items is not None:
        result["coverage"] = catalogue_coverage(recommended, n_items, k)
    return result


def popularity_recommend_fn(popularity):
    """A cart recommender that returns the most popular items not in the cart."""
    popularity = np.asarray(popularity, dtype=float)
    # Stable order: score desc, then lower item index first.
    ranked = np.lexsort((np.arange(popularity.size), -popularity))

    def recommend(cart_items, k):
        """Most popular items not in the cart."""
        keep = ~np.isin(ranked[: k + len(cart_items)], cart_items)
        return ranked[: k + len(cart_items)][keep][:k]

    return recommend


def evaluate_against_popularity(recommend_fn, train_baskets, test_cases, k=10) -> dict:
    """{'model': ..., 'popularity': ..., 'hit_rate_lift': ...} on the same test cases."""
    train_baskets = sp.csr_matrix(train_baskets)
    presence = train_baskets.copy()
    presence.data = np.ones_like(presence.data, dtype=float)
    counts = np.asarray(presence.sum(axis=0)).ravel()
    n_items = train_baskets.shape[1]
    model_result = evaluate_cart_recommender(recommend_fn, test_cases, k, n_items)
    popularity_result = evaluate_cart_recommender(popularity_recommend_fn(counts), test_cases, k, n_items)
    return {
        "model": model_result,
        "popularity": popularity_result,
        "hit_rate_lift": model_result["hit_rate"] - popularity_result["hit_rate"],
    }


# --- synthetic shapes ------------------------------------------------------
# Small generators of basket data with shapes unlike groceries, so models are
# not tuned to one dataset.  Each returns a dict with baskets (CSR), times
# (days) and customers, plus price/category/cost for the priced catalogue.


def _rows_to_csr(rows, n_items) -> sp.csr_matrix:
    """CSR binary matrix from a list of item-index arrays."""
    lengths = np.array([len(r) for r in rows])
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    matrix = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(rows), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _synthetic_shop(name: str, rows: list, n_items: int, rng, n_customers: int) -> dict:
    """A generated shop: its baskets, sorted times spread over a year, and a customer per basket."""
    n_baskets = len(rows)
    return {
        "name": name,
        "baskets": _rows_to_csr(rows, n_items),
        "times": np.sort(rng.uniform(0, 365, n_baskets)),
        "customers": rng.integers(0, n_customers, n_baskets),
    }


def synthetic_strong_pairs(n_baskets=6000, n_groups=10, random_state=0) -> dict:
    """Few items in complementary triples (phone / case / charger) plus popular fillers."""
    rng = np.random.default_rng(random_state)
    n_fillers = 10
    n_items = n_groups * 3 + n_fillers
    filler_popularity = 1.0 / np.arange(1, n_fillers + 1)
    filler_popularity /= filler_popularity.sum()
    rows = []
    for _ in range(n_baskets):
        group = rng.integers(n_groups)
        anchor = group * 3
        items = [anchor] if rng.random() < 0.7 else []
        # Accessories follow the anchor often, and each other sometimes.
        for offset, probability in ((1, 0.6), (2, 0.45)):
            if (items and rng.random() < probability) or (not items and rng.random() < 0.3):
                items.append(anchor + offset)
        n_filler = rng.poisson(1.2)
        items.extend(n_groups * 3 + rng.choice(n_fillers, size=n_filler, p=filler_popularity))
        if not items:
            items = [n_groups * 3 + rng.choice(n_fillers, p=filler_popularity)]
        rows.append(np.unique(items))
    return _synthetic_shop("strong_pairs", rows, n_items, rng, n_customers=n_baskets // 4)


def synthetic_long_tail(n_baskets=20000, n_items=2000, n_topics=40, random_state=0) -> dict:
    """Many items with power-law popularity and latent topics (a basket = a staple or two + one topic)."""
    rng = np.random.default_rng(random_state)
    n_staples = 8
    topic_of_item = rng.integers(0, n_topics, n_items)
    topic_of_item[:n_staples] = -1
    item_weight = 1.0 / np.arange(1, n_items + 1) ** 0.9
    topic_items = [np.flatnonzero(topic_of_item == t) for t in range(n_topics)]
    topic_probs = [item_weight[items] / item_weight[items].sum() for items in topic_items]
    staple_probs = item_weight[:n_staples] / item_weight[:n_staples].sum()
    rows = []
    for _ in range(n_baskets):
        topic = rng.integers(n_topics)
        n_topic_items = 1 + rng.poisson(1.5)
        chosen = rng.choice(topic_items[topic], size=n_topic_items, p=topic_probs[topic])
        staples = rng.choice(n_staples, size=rng.poisson(1.0), p=staple_probs)
        rows.append(np.unique(np.concatenate([chosen, staples])))
    return _synthetic_shop("long_tail", rows, n_items, rng, n_customers=n_baskets // 5)


def synthetic_priced_catalogue(n_baskets=8000, n_mains=60, random_state=0) -> dict:
    """Priced catalogue: a main item (category 0) drives accessories in other categories.

    Every main has two dedicated accessories (categories 1 and 2, a tenth of the
    price) and baskets add cheap impulse items (category 3).  Costs are known
    for most items (NaN for some) so bundle and add-on pricing can be tested.
    """
    rng = np.random.default_rng(random_state)
    n_impulse = 30
    n_items = n_mains * 3 + n_impulse
    price = np.empty(n_items)
    category = np.empty(n_items, dtype=np.int64)
    main_price = np.round(rng.uniform(40, 400, n_mains), 2)
    for offset in range(3):
        price[offset:n_mains * 3:3] = main_price if offset == 0 else np.round(main_price * rng.uniform(0.05, 0.2, n_mains), 2)
        category[offset:n_mains * 3:3] = offset
    price[n_mains * 3:] = np.round(rng.uniform(1, 15, n_impulse), 2)
    category[n_mains * 3:] = 3
    cost = price * rng.uniform(0.5, 0.8, n_items)
    cost[rng.random(n_items) < 0.1] = np.nan
    main_weight = 1.0 / np.arange(1, n_mains + 1) ** 1.1
    main_weight /= main_weight.sum()
    impulse_weight = 1.0 / np.arange(1, n_impulse + 1)
    impulse_weight /= impulse_weight.sum()
    rows = []
    for _ in range(n_baskets):
        main = rng.choice(n_mains, p=main_weight)
        items = []
        if rng.random() < 0.8:
            items.append(main * 3)
        if rng.random() < 0.5:
            items.append(main * 3 + 1)
        if rng.random() < 0.35:
            items.append(main * 3 + 2)
        items.extend(n_mains * 3 + rng.choice(n_impulse, size=rng.poisson(1.0), p=impulse_weight))
        if not items:
            items = [main * 3]
        rows.append(np.unique(items))
    shop = _synthetic_shop("priced_catalogue", rows, n_items, rng, n_customers=n_baskets // 3)
    return {**shop, "price": price, "cost": cost, "category": category}


def split_and_cases(baskets, basket_times, train_fraction=0.8, seed=42, max_cases=None):
    """Convenience: (train_baskets, train_times, test_cases) with the standard protocol.

    max_cases: at most this many test cases, a seeded sample (sample_cases), drawn before they are built.
    """
    baskets = sp.csr_matrix(baskets)
    train_idx, test_idx = time_ordered_split(basket_times, train_fraction)
    cases = leave_one_out_cases(baskets, test_idx, seed=seed, max_cases=max_cases)
    times = np.asarray(basket_times, dtype=float)
    return rows_in_order(baskets, train_idx), times[train_idx], cases


def rows_in_order(matrix: sp.csr_matrix, row_indices) -> sp.csr_matrix:
    """matrix[row_indices]; a view sharing the matrix's arrays when the rows are one ascending run.

    Training's baskets are sorted by time, so its train and fit parts are leading runs of rows: a view
    saves a copy of most of the shop's lines.
    """
    row_indices = np.asarray(row_indices)
    n_rows = row_indices.size
    is_run = n_rows > 0 and row_indices[-1] - row_indices[0] == n_rows - 1 and bool(np.all(np.diff(row_indices) == 1))
    if not is_run:
        return matrix[row_indices]
    first, stop = int(row_indices[0]), int(row_indices[-1]) + 1
    start_entry, stop_entry = matrix.indptr[first], matrix.indptr[stop]
    view = sp.csr_matrix((matrix.data[start_entry:stop_entry], matrix.indices[start_entry:stop_entry],
                          matrix.indptr[first:stop + 1] - start_entry), shape=(n_rows, matrix.shape[1]), copy=False)
    view.has_canonical_format = matrix.has_canonical_format
    return view


def synthetic_dense_accessories(n_baskets=6000, n_devices=8, random_state=0) -> dict:
    """A small dense catalogue (~40 skus): a device family and its accessories, baskets of 2-5 items.

    Each device has three dedicated accessories; eight universal accessories go with any device.
    A basket is one family's device and/or accessories plus universal ones, so pair evidence is
    strong and best sellers carry little information beyond it.
    """
    rng = np.random.default_rng(random_state)
    n_universal = 8
    n_items = n_devices * 4 + n_universal
    family_weight = 1.0 / np.arange(1, n_devices + 1) ** 0.7
    family_weight /= family_weight.sum()
    universal_weight = 1.0 / np.arange(1, n_universal + 1) ** 0.8
    universal_weight /= universal_weight.sum()
    rows = []
    for _ in range(n_baskets):
        family = rng.choice(n_devices, p=family_weight)
        size = rng.integers(2, 6)
        n_family = min(rng.integers(1, size + 1), 4)
        items = list(family * 4 + rng.choice(4, size=n_family, replace=False, p=[0.4, 0.25, 0.2, 0.15]))
        n_other = size - n_family
        items += list(n_devices * 4 + rng.choice(n_universal, size=n_other, replace=False, p=universal_weight))
        rows.append(np.unique(items))
    return _synthetic_shop("dense_accessories", rows, n_items, rng, n_customers=n_baskets // 3)


def synthetic_cafe(n_baskets=20000, n_items=100, random_state=0) -> dict:
    """A café (~100 skus) where one staple (coffee) is in most orders; food pairs with drinks.

    Ten drinks (coffee dominant) and ninety foods in ten kinds; each drink prefers two kinds of
    food. An order is a drink (coffee in ~60 %) with 0-3 foods, half of them from its kinds.
    """
    rng = np.random.default_rng(random_state)
    n_drinks = 10
    n_kinds = 10
    foods = np.arange(n_drinks, n_items)
    kind_of_food = rng.integers(0, n_kinds, foods.size)
    drink_weight = np.array([6.0] + [0.45] * (n_drinks - 1))
    drink_weight /= drink_weight.sum()
    food_weight = 1.0 / np.arange(1, foods.size + 1) ** 0.8
    food_weight = rng.permutation(food_weight)
    preferred_kinds = [rng.choice(n_kinds, 2, replace=False) for _ in range(n_drinks)]
    rows = []
    for _ in range(n_baskets):
        drink = rng.choice(n_drinks, p=drink_weight)
        items = [drink] if rng.random() < 0.9 else []
        for _food in range(rng.integers(0, 4)):
            if rng.random() < 0.5:
                pool = foods[np.isin(kind_of_food, preferred_kinds[drink])]
            else:
                pool = foods
            weights = food_weight[pool - n_drinks]
            items.append(rng.choice(pool, p=weights / weights.sum()))
        if rng.random() < 0.15:
            items.append(rng.choice(n_drinks, p=drink_weight))
        rows.append(np.unique(items if items else [drink]))
    return _synthetic_shop("cafe", rows, n_items, rng, n_customers=n_baskets // 6)


def synthetic_large_sparse(n_baskets=20000, n_items=4000, n_topics=80, random_state=0) -> dict:
    """A large sparse catalogue (thousands of skus) with big baskets (~15 items from 2-3 topics)."""
    rng = np.random.default_rng(random_state)
    topic_of_item = rng.integers(0, n_topics, n_items)
    item_weight = rng.permutation(1.0 / np.arange(1, n_items + 1) ** 0.8)
    topic_items = [np.flatnonzero(topic_of_item == topic) for topic in range(n_topics)]
    topic_probs = [item_weight[items] / item_weight[items].sum() for items in topic_items]
    global_probs = item_weight / item_weight.sum()
    topic_weight = rng.dirichlet(np.ones(n_topics))
    rows = []
    for _ in range(n_baskets):
        topics = rng.choice(n_topics, size=rng.integers(2, 4), replace=False, p=topic_weight)
        parts = [rng.choice(topic_items[topic], size=1 + rng.poisson(4), p=topic_probs[topic]) for topic in topics]
        parts.append(rng.choice(n_items, size=rng.poisson(2), p=global_probs))
        rows.append(np.unique(np.concatenate(parts)))
    return _synthetic_shop("large_sparse", rows, n_items, rng, n_customers=n_baskets // 4)


def synthetic_repeat_purchases(n_customers=1500, n_items=300, baskets_per_customer=10, random_state=0) -> dict:
    """Strong repeat purchases: each customer rebuys from a personal set of ~8 favourites.

    Favourites are drawn around a personal theme (neighbouring item indices), so habitual sets
    overlap between customers; a basket is 2-6 favourites plus sometimes a best seller.
    """
    rng = np.random.default_rng(random_state)
    item_weight = 1.0 / np.arange(1, n_items + 1) ** 0.9
    global_probs = item_weight / item_weight.sum()
    rows, times, customers = [], [], []
    for customer in range(n_customers):
        theme = rng.integers(0, n_items)
        favourites = np.unique((theme + rng.integers(-12, 13, size=8)) % n_items)
        preference = rng.dirichlet(np.ones(favourites.size))
        n_baskets = 1 + rng.poisson(baskets_per_customer - 1)
        for day in np.sort(rng.uniform(0, 365, n_baskets)):
            size = min(rng.integers(2, 7), favourites.size)
            items = list(rng.choice(favourites, size=size, replace=False, p=preference))
            if rng.random() < 0.3:
                items.append(rng.choice(n_items, p=global_probs))
            rows.append(np.unique(items))
            times.append(day)
            customers.append(customer)
    return {
        "name": "repeat_purchases",
        "baskets": _rows_to_csr(rows, n_items),
        "times": np.asarray(times, dtype=float),
        "customers": np.asarray(customers),
    }
