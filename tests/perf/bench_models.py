"""Cart model quality, side by side: segrec's per-shop choice vs five public methods, many shop shapes.

    PYTHONPATH=$PWD .venv/bin/python -m tests.perf.bench_models [--quick] [--only groceries,cafe]

For every shape the same protocol and the same cases for every method: baskets sorted by time, the
first 80 % train, one item of each later basket of two or more items hidden (seeded), HR@10 and
NDCG@10 (cases sampled to at most MAX_CASES, seeded, the same sample for every method).

* segrec: the product's own selection (services/recommend/selection.py) on a time-ordered validation
  split of the training part, then the winner refitted on the whole training part, exactly as the
  nightly training does, scored as served (stored neighbour lists merged with the popularity list).
* peers: popularity (training counts), implicit CosineRecommender and BM25Recommender (item kNN, 50
  neighbours), mlxtend association rules (fpgrowth pairs) by confidence with popularity backfill, and plain
  EASE (Steck 2019: full weights, every cart item, no popularity blend), its l2 the best of a small
  grid on the same validation split segrec selects on (the best l2 on the test cases, an upper bound
  for that peer, is printed next to it).

Ratios: segrec / best of the five peers, and segrec / best of popularity, cosine, BM25 and rules.
Shapes: groceries.csv and online_retail_2010-12.csv from tests/data/ (their sources and licences are in
tests/data/README.md) and the synthetic generators of services/recommend/evaluation.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.base import clone  # noqa: E402

from services.recommend import evaluation  # noqa: E402
from services.recommend.candidates import binary_baskets, ease_weights  # noqa: E402
from services.recommend.offline import peer_rows  # noqa: E402
from services.recommend.selection import (  # noqa: E402
    SelectionSettings,
    cases_as_matrix,
    evaluate_fitted,
    sampled_cases,
    select_model,
    validation_split,
)

TEST_DATA = REPO_ROOT / "tests" / "data"
GROCERIES = TEST_DATA / "groceries.csv"
ONLINE_RETAIL = TEST_DATA / "online_retail_2010-12.csv"
MAX_CASES = 5000
QUICK_MAX_CASES = 1000
EASE_L2_RATIOS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# Plain EASE inverts an items x items matrix: beyond this many items it covers the most sold only.
EASE_PEER_MAX_ITEMS = 5000
CLASSIC_PEERS = ("popularity", "implicit cosine", "implicit BM25", "mlxtend rules")


def load_groceries() -> dict:
    """Groceries baskets (member and day), as the README protocol builds them."""
    from tests.perf.groceries_eval import load_groceries as load

    return load(GROCERIES)


def load_online_retail() -> dict:
    """Online retail invoices as baskets: cancellations and non-positive quantities dropped."""
    lines = pd.read_csv(ONLINE_RETAIL, encoding="latin-1", dtype={"InvoiceNo": str, "StockCode": str})
    lines = lines[~lines["InvoiceNo"].str.startswith("C") & (lines["Quantity"] > 0)]
    placed = pd.to_datetime(lines["InvoiceDate"], format="%m/%d/%y %H:%M")
    order_codes, _orders = pd.factorize(lines["InvoiceNo"])
    item_codes, _skus = pd.factorize(lines["StockCode"], sort=True)
    baskets = binary_baskets(sp.csr_matrix((np.ones(len(lines)), (order_codes, item_codes))))
    times = np.zeros(baskets.shape[0])
    times[order_codes] = ((placed - pd.Timestamp("1970-01-01")).dt.total_seconds() / 86_400.0).to_numpy()
    return {"name": "online_retail", "baskets": baskets, "times": times}


def shapes(quick: bool) -> dict:
    """name -> loader of {baskets, times}; quick runs use smaller synthetic shops."""
    scale = 0.4 if quick else 1.0
    loaders = {}
    if GROCERIES.exists():
        loaders["groceries"] = load_groceries
    if ONLINE_RETAIL.exists():
        loaders["online_retail"] = load_online_retail
    loaders["dense_accessories"] = lambda: evaluation.synthetic_dense_accessories(n_baskets=int(6000 * scale))
    loaders["cafe"] = lambda: evaluation.synthetic_cafe(n_baskets=int(20_000 * scale))
    loaders["large_sparse"] = lambda: evaluation.synthetic_large_sparse(
        n_baskets=int(20_000 * scale), n_items=4000 if not quick else 2000)
    loaders["repeat_purchases"] = lambda: evaluation.synthetic_repeat_purchases(n_customers=int(1500 * scale))
    return loaders


def ease_peer_row(train, train_times, cases) -> dict:
    """Plain EASE (no popularity blend, full weights): l2 = ratio x mean item count, the ratio of
    EASE_L2_RATIOS chosen on the same validation split segrec uses (the best ratio on the test cases,
    an upper bound, is shown next to it)."""
    started = time.perf_counter()
    train = binary_baskets(train)
    fit_idx, validation_idx = validation_split(train_times)
    validation_cases = sampled_cases(train, validation_idx, MAX_CASES)
    on_validation = [_plain_ease_metrics(train[fit_idx], validation_cases, ratio) for ratio in EASE_L2_RATIOS]
    chosen = EASE_L2_RATIOS[max(range(len(EASE_L2_RATIOS)), key=lambda index: on_validation[index])]
    on_test = {ratio: _plain_ease_metrics(train, cases, ratio) for ratio in EASE_L2_RATIOS}
    oracle = max(on_test, key=lambda ratio: on_test[ratio])
    hit_rate, ndcg = on_test[chosen]
    return {"method": "plain EASE", "hr_at_10": round(hit_rate, 4), "ndcg_at_10": round(ndcg, 4),
            "seconds": round(time.perf_counter() - started, 2),
            "note": f"l2 ratio {chosen} chosen on validation; best on test: {oracle} ({on_test[oracle][0]:.4f})"}


def _plain_ease_metrics(train, cases, ratio) -> tuple[float, float]:
    """HR@10, NDCG@10 of plain EASE fitted on train (the EASE_PEER_MAX_ITEMS most sold items)."""
    counts = np.asarray(train.sum(axis=0)).ravel()
    sold = np.flatnonzero(counts > 0)
    covered = np.sort(sold[np.lexsort((sold, -counts[sold]))[:EASE_PEER_MAX_ITEMS]])
    weights = np.zeros((train.shape[1], covered.size), dtype=np.float32)
    weights[covered] = ease_weights(train[:, covered], float(ratio * counts[covered].mean()))
    carts, hidden = cases_as_matrix(cases, train.shape[1])
    return _rank_metrics(carts, hidden, weights, covered)


def _rank_metrics(carts, hidden, weights, covered, k=10, batch=1000) -> tuple[float, float]:
    """HR@k, NDCG@k of carts @ weights (columns = covered items), cart items excluded, ties: lower index."""
    hits, gains = 0, 0.0
    position_of = np.full(carts.shape[1], -1)
    position_of[covered] = np.arange(covered.size)
    for start in range(0, carts.shape[0], batch):
        block = carts[start:start + batch]
        scores = np.asarray(block @ weights, dtype=np.float64)
        cart = block.tocoo()
        in_covered = position_of[cart.col] >= 0
        scores[cart.row[in_covered], position_of[cart.col[in_covered]]] = -np.inf
        for row, item in enumerate(hidden[start:start + batch]):
            column = position_of[item]
            if column < 0:
                continue
            target = scores[row, column]
            rank = int(np.count_nonzero(scores[row] > target) + np.count_nonzero(scores[row, :column] == target))
            if rank < k:
                hits += 1
                gains += 1.0 / np.log2(rank + 2.0)
    return hits / max(len(hidden), 1), gains / max(len(hidden), 1)


def segrec_row(train, train_times, cases, settings) -> tuple[dict, dict]:
    """The product's selection on the training part, the winner refitted, scored as served."""
    started = time.perf_counter()
    model, selection = select_model(train, train_times, settings)
    fitted = clone(model).fit(train, train_times)
    (_weight, hit_rate, ndcg), = evaluate_fitted(fitted, cases)
    chosen = selection["chosen"]
    return ({"method": "segrec", "hr_at_10": round(hit_rate, 4), "ndcg_at_10": round(ndcg, 4),
             "seconds": round(time.perf_counter() - started, 2), "note": f"{chosen['name']} {chosen['params']}"},
            selection)


def run_shape(name, data, max_cases, settings) -> dict:
    """Every method on one shape's cases; the rows and the two ratios."""
    train, train_times, cases = evaluation.split_and_cases(data["baskets"], data["times"])
    if len(cases) > max_cases:
        picks = np.random.default_rng(42).choice(len(cases), max_cases, replace=False)
        cases = [cases[index] for index in sorted(picks)]
    segrec, selection = segrec_row(train, train_times, cases, settings)
    rows = [segrec] + peer_rows(train, cases) + [ease_peer_row(train, train_times, cases)]
    peers = [row for row in rows[1:] if row["hr_at_10"] is not None]
    best_peer = max(row["hr_at_10"] for row in peers)
    best_classic = max(row["hr_at_10"] for row in peers if row["method"] in CLASSIC_PEERS)
    return {"name": name, "orders": data["baskets"].shape[0], "items": data["baskets"].shape[1],
            "cases": len(cases), "selection_cases": selection["cases"], "rows": rows,
            "blend": selection.get("blend"),
            "vs_best_peer": segrec["hr_at_10"] / best_peer if best_peer else float("inf"),
            "vs_best_classic": segrec["hr_at_10"] / best_classic if best_classic else float("inf")}


def print_shape(result: dict) -> None:
    """One shape's table."""
    print(f"\n== {result['name']}: {result['orders']:,} orders, {result['items']:,} skus, {result['cases']:,} test "
          f"cases (selection on {result['selection_cases']:,} validation cases)")
    print(f"{'method':<18}{'HR@10':>8}{'NDCG@10':>9}{'seconds':>9}  note")
    for row in result["rows"]:
        figures = (f"{row['hr_at_10']:>8.4f}{row['ndcg_at_10']:>9.4f}" if row["hr_at_10"] is not None
                   else f"{'-':>8}{'-':>9}")
        print(f"{row['method']:<18}{figures}{row.get('seconds', 0):>9.2f}  {row.get('note', '')}")
    blend = result.get("blend") or {}
    if blend.get("searched"):
        best = max(blend["searched"], key=lambda row: row["hr_at_10"])
        print(f"blend of {', '.join(blend['members'])}: best weights {best['weights']} "
              f"(HR@10 {best['hr_at_10']:.4f} on the search cases); kept: {blend.get('kept', False)} "
              f"{blend.get('why', '')}")
    print(f"segrec / best of the five peers: {result['vs_best_peer']:.3f}x; "
          f"segrec / best of popularity, cosine, BM25, rules: {result['vs_best_classic']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller synthetic shops, fewer cases (smoke run)")
    parser.add_argument("--only", default="", help="comma-separated shape names")
    args = parser.parse_args()
    max_cases = QUICK_MAX_CASES if args.quick else MAX_CASES
    settings = SelectionSettings(max_cases=5000) if args.quick else SelectionSettings()
    wanted = {name for name in args.only.split(",") if name}
    results = []
    for name, load in shapes(args.quick).items():
        if wanted and name not in wanted:
            continue
        started = time.perf_counter()
        result = run_shape(name, load(), max_cases, settings)
        print_shape(result)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        results.append(result)
    print(f"\n{'shape':<20}{'segrec HR@10':>13}{'vs best of 5':>14}{'vs best classic':>17}")
    for result in results:
        print(f"{result['name']:<20}{result['rows'][0]['hr_at_10']:>13.4f}{result['vs_best_peer']:>13.3f}x"
              f"{result['vs_best_classic']:>16.3f}x")


if __name__ == "__main__":
    main()
