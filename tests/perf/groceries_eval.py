"""Print the cart cross-sell evaluation table on groceries.csv and on synthetic shapes.

Run from the repo root:  python -m tests.perf.groceries_eval   (or python tests/perf/groceries_eval.py)
Data: tests/data/groceries.csv (source and licence in tests/data/README.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from services.recommend import evaluation  # noqa: E402
from services.recommend.cooccurrence import CartScoring, CoPurchaseModel  # noqa: E402
from services.recommend.crosssell import recommend_for_cart  # noqa: E402

SEEDS_FOR_MEAN = list(range(10))


def groceries_path() -> Path:
    """The groceries dataset shipped with the tests."""
    return REPO_ROOT / "tests" / "data" / "groceries.csv"


def load_groceries(path):
    """Baskets (one per member and date), basket days, member index and item names."""
    lines = pd.read_csv(path)
    lines["day"] = (pd.to_datetime(lines["date"], format="%d-%m-%Y") - pd.Timestamp("1970-01-01")).dt.days
    item_codes, item_names = pd.factorize(lines["items"], sort=True)
    member_codes, _ = pd.factorize(lines["transaction_number"], sort=True)
    lines["item"] = item_codes
    lines["member"] = member_codes
    keys = lines[["member", "day"]].drop_duplicates().sort_values(["member", "day"]).reset_index(drop=True)
    keys["basket"] = np.arange(len(keys))
    lines = lines.merge(keys, on=["member", "day"])
    baskets = sp.csr_matrix(
        (np.ones(len(lines)), (lines["basket"].to_numpy(), lines["item"].to_numpy())),
        shape=(len(keys), len(item_names)),
    )
    baskets.sum_duplicates()
    baskets.data[:] = 1.0
    return {
        "name": "groceries",
        "baskets": baskets,
        "times": keys["day"].to_numpy(dtype=float),
        "customers": keys["member"].to_numpy(),
        "item_names": np.asarray(item_names),
    }


def model_recommend_fn(model):
    """Wrap recommend_for_cart as an evaluation recommend_fn."""
    return lambda cart, k: recommend_for_cart(model, cart, k)[0]


def raw_cooccurrence_fn(train):
    """Sum of raw co-occurrence counts over cart items (popularity breaks ties)."""
    counts = (train.T @ train).toarray()
    np.fill_diagonal(counts, 0)
    popularity = np.asarray(train.sum(axis=0)).ravel()

    def recommend(cart, k):
        scores = counts[cart].sum(axis=0) + popularity * 1e-9
        scores[cart] = -np.inf
        return np.argsort(-scores, kind="stable")[:k]

    return recommend


def evaluate_model(dataset, params, seeds=(42,)):
    """Mean HR/NDCG/coverage of CoPurchaseModel(**params) over hidden-item seeds."""
    train, train_times, _ = evaluation.split_and_cases(dataset["baskets"], dataset["times"])
    model = CoPurchaseModel(**params).fit(train, train_times)
    results = []
    for seed in seeds:
        _, _, cases = evaluation.split_and_cases(dataset["baskets"], dataset["times"], seed=seed)
        results.append(evaluation.evaluate_against_popularity(model_recommend_fn(model), train, cases))
    return {
        "hit_rate": float(np.mean([r["model"]["hit_rate"] for r in results])),
        "popularity": float(np.mean([r["popularity"]["hit_rate"] for r in results])),
        "ndcg": float(np.mean([r["model"]["ndcg"] for r in results])),
    }


def mlxtend_rules_fn(train, popularity):
    """fpgrowth + association rules (confidence), popularity backfill; None if mlxtend is missing."""
    try:
        from mlxtend.frequent_patterns import association_rules, fpgrowth
    except ImportError:
        return None
    frame = pd.DataFrame(train.toarray().astype(bool))
    itemsets = fpgrowth(frame, min_support=0.001, use_colnames=True, max_len=3)
    rules = association_rules(itemsets, metric="confidence", min_threshold=0.0)
    antecedents = [np.array(sorted(a)) for a in rules["antecedents"]]
    consequents = [np.array(sorted(c)) for c in rules["consequents"]]
    confidence = rules["confidence"].to_numpy()
    ranked_popular = np.argsort(-popularity, kind="stable")

    def recommend(cart, k):
        scores = {}
        for antecedent, consequent, conf in zip(antecedents, consequents, confidence):
            if np.isin(antecedent, cart).all():
                for item in consequent:
                    if item not in cart and conf > scores.get(item, -1.0):
                        scores[item] = conf
        chosen = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        for item in ranked_popular:
            if len(chosen) >= k:
                break
            if item not in cart and item not in chosen:
                chosen.append(item)
        return np.array(chosen[:k])

    return recommend


def implicit_fn(train, kind):
    """implicit CosineRecommender / BM25Recommender item-item, cart as the user; None if missing."""
    try:
        import implicit.nearest_neighbours as nn
    except ImportError:
        return None
    model = (nn.CosineRecommender if kind == "cosine" else nn.BM25Recommender)(K=50)
    model.fit(sp.csr_matrix(train), show_progress=False)
    n_items = train.shape[1]

    def recommend(cart, k):
        user = sp.csr_matrix((np.ones(len(cart)), (np.zeros(len(cart), int), cart)), shape=(1, n_items))
        items, _ = model.recommend(0, user, N=k + len(cart), filter_already_liked_items=False, recalculate_user=True)
        items = np.asarray(items)
        return items[~np.isin(items, cart)][:k]

    return recommend


def timed(build):
    """(result, seconds) of build()."""
    start = time.perf_counter()
    result = build()
    return result, time.perf_counter() - start


def groceries_table(data):
    """Print the cross-sell table on groceries: seed 42 and the mean over 10 seeds."""
    baskets, times = data["baskets"], data["times"]
    train, train_times, cases = evaluation.split_and_cases(baskets, times, seed=42)
    seeds_cases = [evaluation.split_and_cases(baskets, times, seed=s)[2] for s in SEEDS_FOR_MEAN]
    n_items = baskets.shape[1]
    popularity = np.asarray(train.sum(axis=0)).ravel()
    print(f"groceries: {baskets.shape[0]} baskets, {n_items} items; train {train.shape[0]} baskets, {len(cases)} test cases (seed 42)")
    rows = []
    rows.append(("most popular (all-time)", evaluation.popularity_recommend_fn(popularity), 0.0))
    from services.recommend.popularity import item_popularity
    recent, seconds = timed(lambda: item_popularity(train, train_times, half_life_days=60))
    rows.append(("most popular (60-day half-life)", evaluation.popularity_recommend_fn(recent), seconds))
    raw, seconds = timed(lambda: raw_cooccurrence_fn(train))
    rows.append(("raw co-occurrence counts", raw, seconds))
    model, seconds = timed(lambda: CoPurchaseModel().fit(train, train_times))
    rows.append(("segrec CoPurchaseModel (served merge)", model_recommend_fn(model), seconds))
    for label, build in (
        ("mlxtend fpgrowth rules (confidence)", lambda: mlxtend_rules_fn(train, popularity)),
        ("implicit CosineRecommender", lambda: implicit_fn(train, "cosine")),
        ("implicit BM25Recommender", lambda: implicit_fn(train, "bm25")),
    ):
        try:
            fn, seconds = timed(build)
        except Exception as error:  # reference tools only: report, never fail the table
            print(f"  ({label} skipped: {error})")
            continue
        if fn is not None:
            rows.append((label, fn, seconds))
    print(f"{'method':40s} {'HR@10':>7s} {'NDCG@10':>8s} {'cover':>6s} {'HR@10 mean(10 seeds)':>21s} {'fit s':>7s}")
    for label, fn, seconds in rows:
        result = evaluation.evaluate_cart_recommender(fn, cases, 10, n_items)
        mean_hr = np.mean([evaluation.evaluate_cart_recommender(fn, c, 10)["hit_rate"] for c in seeds_cases]) if "mlxtend" not in label else float("nan")
        print(f"{label:40s} {result['hit_rate']:7.3f} {result['ndcg']:8.3f} {result['coverage']:6.3f} {mean_hr:21.3f} {seconds:7.2f}")
    return model


GRID = {
    "significance": [0.0, 1.0, 2.0, 3.0],
    "shrinkage": [0.0, 5.0, 20.0, 100.0],
    "popularity_weight": [0.5, 1.0, 2.0],
    "popularity_half_life_days": [None, 30.0, 60.0, 120.0],
    "min_support": [1, 2, 3],
    "n_neighbors": [20, 100],
}


def grid_params(name, value):
    """Constructor arguments that set one grid parameter; cart-scoring ones go inside CartScoring."""
    if name in CartScoring.__dataclass_fields__:
        return {"cart": CartScoring(**{name: value})}
    return {name: value}


def grid_across_shapes(datasets):
    """One-at-a-time grid around the defaults, HR@10 (seed 42) on every dataset."""
    print("\nHR@10 grid across shapes (one parameter varied from the defaults; * = default)")
    defaults = CoPurchaseModel().get_params()
    defaults.update(vars(defaults["cart"]))
    header = " ".join(f"{d['name'][:14]:>14s}" for d in datasets)
    print(f"{'parameter = value':38s} {header}")
    populars = []
    for d in datasets:
        populars.append(evaluate_model(d, {})["popularity"])
    print(f"{'(popularity baseline)':38s} " + " ".join(f"{p:14.3f}" for p in populars))
    for name, values in GRID.items():
        for value in values:
            mark = "*" if defaults[name] == value else " "
            hrs = [evaluate_model(d, grid_params(name, value))["hit_rate"] for d in datasets]
            print(f"{name + ' = ' + str(value) + mark:38s} " + " ".join(f"{h:14.3f}" for h in hrs))


def foryou_holdout(data):
    """Next-basket holdout: customers' first basket after the split vs their history before it."""
    from services.recommend.foryou import ForYouModel, Neighbourhood

    baskets, times, customers = data["baskets"], data["times"], data["customers"]
    train_idx, test_idx = evaluation.time_ordered_split(times, 0.8)
    n_customers = int(customers.max()) + 1
    membership = sp.csr_matrix((np.ones(train_idx.size), (customers[train_idx], np.arange(train_idx.size))), shape=(n_customers, train_idx.size))
    history = sp.csr_matrix(membership @ baskets[train_idx])
    has_history = np.diff(history.indptr) > 0
    first_test = {}
    for basket in test_idx:
        first_test.setdefault(int(customers[basket]), int(basket))
    targets = [(c, baskets[b].indices) for c, b in first_test.items() if has_history[c]]
    print(f"\nfor-you next-basket holdout: {len(targets)} customers with history and a later basket")
    popularity = np.asarray(history.astype(bool).sum(axis=0)).ravel()
    top_popular = np.argsort(-popularity, kind="stable")[:10]
    variants = [
        ("popularity", None),
        ("buy-again 0.5 + popularity", ForYouModel(method="neighbors", repeat_weight=0.5,
                                                        neighbourhood=Neighbourhood(n_neighbors=1, significance=1e9))),
        ("neighbors (default)", ForYouModel(method="neighbors")),
        ("svd 32 comps", ForYouModel(method="svd", n_components=32)),
        ("svd 8 comps", ForYouModel(method="svd", n_components=8)),
    ]
    print(f"{'variant':28s} {'HR@10':>7s} {'recall@10':>10s} {'fit+score s':>12s}")
    for label, model in variants:
        start = time.perf_counter()
        if model is None:
            lists = np.tile(top_popular, (n_customers, 1))
        else:
            lists, _ = model.fit(history).recommend_all(10)
        seconds = time.perf_counter() - start
        hits = [np.isin(target, lists[c]).any() for c, target in targets]
        recall = [np.isin(target, lists[c]).mean() for c, target in targets]
        print(f"{label:28s} {np.mean(hits):7.3f} {np.mean(recall):10.3f} {seconds:12.2f}")


def scale_check(n_baskets=2_000_000, n_items=50_000, mean_size=5.0, seed=0):
    """Synthetic power-law scale check: fit time and peak RSS (not part of the unit tests)."""
    import resource

    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, rng.poisson(mean_size - 1, n_baskets) + 1)
    weights = 1.0 / np.arange(1, n_items + 1) ** 1.0
    weights /= weights.sum()
    items = rng.choice(n_items, size=int(sizes.sum()), p=weights)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    baskets = sp.csr_matrix((np.ones(items.size, dtype=np.float32), items, indptr), shape=(n_baskets, n_items))
    baskets.sum_duplicates()
    times = np.sort(rng.uniform(0, 730, n_baskets))
    del items
    print(f"scale check: {n_baskets} baskets x {n_items} items, {baskets.nnz} order lines")
    start = time.perf_counter()
    model = CoPurchaseModel().fit(baskets, times)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for cart in rng.integers(0, n_items, (1000, 5)):
        recommend_for_cart(model, cart, 10)
    serve_ms = (time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fit {fit_seconds:.1f} s, scores nnz {model.scores_.nnz}, serve {serve_ms:.3f} ms/cart, peak RSS {peak_mb:.0f} MB")


def main(argv=None):
    """Entry point: groceries table, grid across shapes, for-you holdout; --scale for the scale check."""
    argv = sys.argv[1:] if argv is None else argv
    if "--scale" in argv:
        scale_check()
        return 0
    groceries = load_groceries(groceries_path())
    groceries_table(groceries)
    if "--quick" not in argv:
        shapes = [
            groceries,
            evaluation.synthetic_strong_pairs(),
            evaluation.synthetic_long_tail(),
            evaluation.synthetic_priced_catalogue(),
        ]
        grid_across_shapes(shapes)
        foryou_holdout(groceries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
