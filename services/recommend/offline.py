"""`segrec evaluate ORDERS.csv`: what a shop would get, measured on its own orders file, no database.

The same protocol as the nightly run: baskets (orders) sorted by time, the last 20 % held out;
selection on a validation split of the first 80 %; the chosen model refitted on that 80 % and
measured on the held-out orders (leave one out, HR@10 and NDCG@10), next to public methods on the
same cases: popularity, implicit's item kNN with cosine and BM25, and mlxtend association rules.

Pure module: pandas / numpy / scipy (implicit and mlxtend are imported when used).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone

from services.recommend.evaluation import evaluate_cart_recommender, popularity_recommend_fn, split_and_cases
from services.recommend.selection import SelectionSettings, evaluate_fitted, select_model

MAX_EVALUATION_CASES = 5000
# Frequent itemsets grow fast with the catalogue: rules are mined on at most this many baskets.
RULES_MAX_BASKETS = 50_000
RULES_MIN_SUPPORT = 0.001
RULES_MIN_ORDERS = 5
# mlxtend takes a dense frame; beyond this many cells rules are skipped (and the table says so).
RULES_MAX_CELLS = 100_000_000


@dataclass
class OrdersData:
    """Baskets of an orders file: binary orders x items, order days, sku per item index."""

    baskets: sp.csr_matrix
    times: np.ndarray
    skus: np.ndarray


def read_orders_file(path) -> OrdersData:
    """Orders CSV (order_id,customer_id,placed_at,sku,quantity,unit_price[,status]); paid lines only."""
    lines = pd.read_csv(path, dtype={"order_id": str, "customer_id": str, "sku": str})
    missing = {"order_id", "placed_at", "sku"} - set(lines.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    if "status" in lines.columns:
        lines = lines[lines["status"].fillna("paid").str.lower() == "paid"]
    placed = pd.to_datetime(lines["placed_at"], utc=True, format="mixed")
    order_codes, _orders = pd.factorize(lines["order_id"])
    item_codes, skus = pd.factorize(lines["sku"], sort=True)
    baskets = sp.csr_matrix((np.ones(len(lines), dtype=np.float32), (order_codes, item_codes)),
                            shape=(order_codes.max() + 1 if len(lines) else 0, len(skus)))
    baskets.sum_duplicates()
    baskets.data[:] = 1.0
    days = (placed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy() / 86_400.0
    times = np.zeros(baskets.shape[0])
    times[order_codes] = days
    return OrdersData(baskets, times, np.asarray(skus))


def implicit_recommend_fn(train, weighting: str, k_neighbours: int = 50):
    """A cart recommender from implicit's CosineRecommender / BM25Recommender (the cart as the user)."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    model = (CosineRecommender if weighting == "cosine" else BM25Recommender)(K=k_neighbours)
    model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
    n_items = train.shape[1]

    def recommend(cart, k):
        """implicit's top k for the cart, cart items dropped."""
        user = sp.csr_matrix((np.ones(len(cart)), (np.zeros(len(cart), int), cart)), shape=(1, n_items))
        items, _scores = model.recommend(0, user, N=k + len(cart), filter_already_liked_items=False,
                                         recalculate_user=True)
        items = np.asarray(items)
        return items[~np.isin(items, cart)][:k]

    return recommend


def rules_recommend_fn(train, max_baskets: int = RULES_MAX_BASKETS, min_support: float = RULES_MIN_SUPPORT):
    """(recommend_fn, note): mlxtend fpgrowth pair rules by confidence, popularity backfill; None without mlxtend."""
    try:
        from mlxtend.frequent_patterns import association_rules, fpgrowth
    except ImportError:
        return None, "mlxtend is not installed (pip install segrec[bench])"
    note = ""
    if train.shape[0] > max_baskets:
        train = train[train.shape[0] - max_baskets:]
        note = f"rules mined on the last {max_baskets} training orders"
    popularity = np.asarray(train.sum(axis=0)).ravel()
    if train.shape[0] * train.shape[1] > RULES_MAX_CELLS:
        return None, f"skipped: {train.shape[0]:,} orders x {train.shape[1]:,} skus is too large for mlxtend here"
    frame = pd.DataFrame(sp.csr_matrix(train).toarray().astype(bool))
    # An itemset needs 5 orders at least: on small files with big baskets a lower support explodes.
    # fpgrowth, not apriori: apriori is ten times faster on online retail's wide invoices (27 s against
    # 319 s) but materialises every candidate pair x basket (86 GB on 16,000 baskets x 4,000 skus).
    itemsets = fpgrowth(frame, min_support=max(min_support, RULES_MIN_ORDERS / train.shape[0]), max_len=2)
    best = {}
    if len(itemsets):
        rules = association_rules(itemsets, metric="confidence", min_threshold=0.0)
        for antecedent, consequent, confidence in zip(rules["antecedents"], rules["consequents"], rules["confidence"]):
            (source,), (target,) = tuple(antecedent), tuple(consequent)
            best.setdefault(int(source), {})[int(target)] = float(confidence)
    ranked = np.lexsort((np.arange(popularity.size), -popularity))

    def recommend(cart, k):
        """Best rule confidence of any cart item, then the best sellers."""
        scores = {}
        for item in cart:
            for target, confidence in best.get(int(item), {}).items():
                scores[target] = max(scores.get(target, 0.0), confidence)
        chosen = [item for item in sorted(scores, key=lambda i: (-scores[i], i)) if item not in cart][:k]
        for item in ranked[: k + len(cart) + len(chosen)]:
            if len(chosen) >= k:
                break
            if item not in cart and item not in chosen:
                chosen.append(int(item))
        return np.asarray(chosen, dtype=np.int64)

    return recommend, note


def peer_rows(train, cases) -> list[dict]:
    """HR@10 / NDCG@10 of the public methods on the same cases."""
    rows = []
    popularity = np.asarray(train.sum(axis=0)).ravel()
    peers = [("popularity", lambda: (popularity_recommend_fn(popularity), "")),
             ("implicit cosine", lambda: (implicit_recommend_fn(train, "cosine"), "")),
             ("implicit BM25", lambda: (implicit_recommend_fn(train, "bm25"), "")),
             ("mlxtend rules", lambda: rules_recommend_fn(train))]
    for name, build in peers:
        started = time.perf_counter()
        recommend, note = build()
        if recommend is None:
            rows.append({"method": name, "hr_at_10": None, "ndcg_at_10": None, "note": note})
            continue
        result = evaluate_cart_recommender(recommend, cases)
        rows.append({"method": name, "hr_at_10": round(result["hit_rate"], 4), "ndcg_at_10": round(result["ndcg"], 4),
                     "seconds": round(time.perf_counter() - started, 2), "note": note})
    return rows


def evaluate_baskets(baskets, times, config: dict | None = None, with_peers: bool = True) -> dict:
    """Selection, the chosen model on the holdout, and the public methods next to it."""
    settings = SelectionSettings.from_config(config or {})
    train, train_times, cases = split_and_cases(baskets, times)
    if len(cases) > MAX_EVALUATION_CASES:
        picks = np.random.default_rng(42).choice(len(cases), MAX_EVALUATION_CASES, replace=False)
        cases = [cases[index] for index in sorted(picks)]
    started = time.perf_counter()
    model, selection = select_model(train, train_times, settings)
    fitted = clone(model).fit(train, train_times)
    (_weight, hit_rate, ndcg), = evaluate_fitted(fitted, cases)
    rows = [{"method": f"segrec ({selection['chosen']['name']} {selection['chosen']['params']})",
             "hr_at_10": round(hit_rate, 4), "ndcg_at_10": round(ndcg, 4),
             "seconds": round(time.perf_counter() - started, 2), "note": selection["reason"]}]
    if with_peers and cases:
        rows += peer_rows(train, cases)
    return {"orders": int(baskets.shape[0]), "items": int(baskets.shape[1]), "holdout_cases": len(cases),
            "model_selection": selection, "table": rows}


def evaluate_orders_file(path, config: dict | None = None) -> dict:
    """Everything `segrec evaluate` prints, for one orders CSV."""
    data = read_orders_file(path)
    if data.baskets.shape[0] < 50:
        raise ValueError(f"{path}: {data.baskets.shape[0]} paid orders; at least 50 are needed")
    return evaluate_baskets(data.baskets, data.times, config)


def format_report(result: dict) -> str:
    """The candidate table and the method table as text."""
    selection = result["model_selection"]
    lines = [f"{result['orders']:,} orders, {result['items']:,} skus; selection on {selection['cases']:,} "
             f"validation cases; holdout {result['holdout_cases']:,} cases", "",
             f"{'candidate':<26}{'params':<38}{'HR@10':>8}{'NDCG@10':>9}"]
    for row in selection["candidates"]:
        lines.append(f"{row['name']:<26}{params_label(row):<38}{row['hr_at_10']:>8.4f}{row['ndcg_at_10']:>9.4f}")
    lines += [f"chosen: {selection['chosen']['name']} {params_label(selection['chosen'])} ({selection['reason']})", "",
              f"{'method (held-out orders)':<60}{'HR@10':>8}{'NDCG@10':>9}"]
    for row in result["table"]:
        figures = (f"{row['hr_at_10']:>8.4f}{row['ndcg_at_10']:>9.4f}" if row["hr_at_10"] is not None
                   else f"{'-':>8}{'-':>9}")
        note = f"  ({row['note']})" if row.get("note") and not row["method"].startswith("segrec") else ""
        lines.append(f"{row['method'][:59]:<60}{figures}{note}")
    return "\n".join(lines)


def params_label(row: dict) -> str:
    """A row's params as text; a blend as its beta and weighted members ("0.5 ease(l2_ratio=0.3) + ...")."""
    params = row.get("params") or {}
    if row.get("name") != "blend":
        return str(params)
    members = []
    for weight, member in zip(params.get("weights", []), params.get("members", [])):
        own = {key: value for key, value in member.get("params", {}).items() if key in ("l2_ratio", "shrinkage")}
        detail = ",".join(f"{key}={value}" for key, value in own.items())
        members.append(f"{weight:g} {member['name']}" + (f"({detail})" if detail else ""))
    return f"beta {params.get('beta')}: " + " + ".join(members)
