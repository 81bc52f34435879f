"""Nightly training of the recommendation models and staging of their lists under a model version.

Train offline, serve precomputed: this module turns paid order lines into per-item neighbour lists,
bundles, popularity lists and per-customer for-you lists, evaluates cart cross-sell on a time-ordered
holdout next to popularity, and writes everything under versioned Redis keys (plus a database copy
of the shared lists for Redis outages). `publish_version` flips the one pointer readers follow.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone
from sqlalchemy import delete

from services.recommend.abc import abc_classes
from services.recommend.bundles import BundleCatalogue, BundleOptions, BundlePricing, build_bundles
from services.recommend.cooccurrence import CartScoring, CoPurchaseModel
from services.recommend.crosssell import recommend_for_cart
from services.recommend.candidates import binary_baskets, pair_counts
from services.recommend.evaluation import evaluate_against_popularity, split_and_cases
from services.recommend.foryou import ForYouModel, Neighbourhood
from services.recommend.popularity import popularity_by_group, trending_scores
from services.recommend.selection import SelectionSettings, candidate_from_row, evaluate_fitted, select_model
from services.recommend.store import (
    CUSTOMER_TIERS,
    MODEL_TTL_SECONDS,
    UNKNOWN_TIER,
    VERSION_POINTER,
    customer_bucket_key,
    encode_customer_lists,
    list_key,
    set_database_version,
)
from shared.extensions import db, redis_store
from shared.frames import read_frame, write_frame
from shared.limits import TimeRules
from shared.models import RecommendationList
from shared.quarantine import quarantine_order_lines
from shared.runs import PREVIOUS_RUN, current_run_id, get_pointer

log = logging.getLogger("segrec.recommend.training")

NEIGHBOURS_STORED = 50
POPULAR_STORED = 200
FOR_YOU_STORED = 20
MAX_EVALUATION_CASES = 5000
EPOCH = np.datetime64("1970-01-01")

ORDER_LINES_SQL = """
SELECT o.order_id, o.customer_id, o.placed_at, l.sku, l.quantity * l.unit_price AS revenue
FROM order_lines l JOIN orders o ON o.order_id = l.order_id
WHERE o.status = 'paid' AND o.placed_at <= :as_of
"""
CATALOGUE_SQL = """
SELECT sku, name, category, price, cost, stock, active, repeat_purchase, placeholder FROM products ORDER BY sku
"""
TIERS_SQL = "SELECT customer_id, tier FROM customer_scores WHERE run_id = :run_id"


def _truthy(series: pd.Series) -> np.ndarray:
    """Booleans from SQLite integers or PostgreSQL COPY text alike."""
    return series.astype(str).str.lower().isin(["true", "t", "1"]).to_numpy()


def load_catalogue(engine) -> pd.DataFrame:
    """Every product, indexed 0..n-1 in sku order (the item index the models use)."""
    catalogue = read_frame(engine, CATALOGUE_SQL, dtypes={"sku": str, "name": str, "category": str})
    catalogue["active"] = _truthy(catalogue["active"])
    catalogue["repeat_purchase"] = _truthy(catalogue["repeat_purchase"])
    catalogue["placeholder"] = _truthy(catalogue["placeholder"])
    catalogue["category"] = catalogue["category"].fillna("")
    catalogue["price"] = catalogue["price"].astype(float)
    catalogue["cost"] = pd.to_numeric(catalogue["cost"], errors="coerce")
    catalogue["stock"] = pd.to_numeric(catalogue["stock"], errors="coerce")
    return catalogue.reset_index(drop=True)


def load_order_lines(engine, as_of: datetime) -> pd.DataFrame:
    """Paid order lines up to as_of."""
    return read_frame(engine, ORDER_LINES_SQL, {"as_of": as_of}, date_columns=("placed_at",),
                      dtypes={"order_id": str, "customer_id": str, "sku": str}, date_errors="coerce")


class TrainingData:
    """Order lines turned into the matrices the models take."""

    def __init__(self, lines: pd.DataFrame, catalogue: pd.DataFrame) -> None:
        item_index = pd.Index(catalogue["sku"])
        items = item_index.get_indexer(lines["sku"])
        known = items >= 0
        lines = lines[known]
        items = items[known]
        order_codes, self.order_ids = pd.factorize(lines["order_id"], sort=False)
        customer_codes, self.customer_ids = pd.factorize(lines["customer_id"], sort=True)
        self.n_items = len(catalogue)
        presence = np.ones(len(lines), dtype=np.float32)
        self.baskets = sp.csr_matrix((presence, (order_codes, items)), shape=(len(self.order_ids), self.n_items))
        self.baskets.sum_duplicates()
        self.baskets.data[:] = 1.0
        placed_days = (lines["placed_at"].to_numpy(dtype="datetime64[s]") - EPOCH) / np.timedelta64(1, "D")
        self.basket_times = np.zeros(len(self.order_ids))
        self.basket_times[order_codes] = placed_days
        self.basket_customers = np.zeros(len(self.order_ids), dtype=np.int64)
        self.basket_customers[order_codes] = customer_codes
        self.customer_items = sp.csr_matrix(
            (presence, (customer_codes, items)), shape=(len(self.customer_ids), self.n_items)
        )
        self.customer_items.sum_duplicates()
        self.revenue = np.bincount(items, weights=lines["revenue"].to_numpy(dtype=float), minlength=self.n_items)
        self.order_lines = len(lines)


def select_and_evaluate(data: TrainingData, config: dict, current_choice: dict | None = None):
    """(unfitted chosen model, model_selection report, evaluation) on the time-ordered holdout.

    Selection sees the training part only (it carves its own validation split from it); the chosen
    model is refitted on that part and measured on the held-out orders, next to popularity and,
    when the current run names its model, next to that model on the same cases (the publish gate).
    """
    settings = SelectionSettings.from_config(config)
    if data.baskets.shape[0] < 50:
        model, report = select_model(data.baskets[:0], np.zeros(0), settings)
        return model, report, {"skipped": "fewer than 50 orders"}
    train, train_times, cases = split_and_cases(data.baskets, data.basket_times)
    model, report = select_model(train, train_times, settings)
    if len(cases) < 10 or train.nnz == 0:
        return model, report, {"skipped": "fewer than 10 held-out orders with two or more items"}
    if len(cases) > MAX_EVALUATION_CASES:
        # A fixed, seeded sample keeps the nightly evaluation bounded and comparable night to night.
        picks = np.random.default_rng(42).choice(len(cases), MAX_EVALUATION_CASES, replace=False)
        cases = [cases[index] for index in sorted(picks)]
    fitted = clone(model).fit(train, train_times)
    result = evaluate_against_popularity(lambda cart, k: recommend_for_cart(fitted, cart, k)[0], train, cases)
    evaluation = {
        "cases": len(cases),
        "model": fitted.describe(),
        "hr_at_10": round(result["model"]["hit_rate"], 4),
        "ndcg_at_10": round(result["model"]["ndcg"], 4),
        "coverage_at_10": round(result["model"].get("coverage", 0.0), 4),
        "popularity_hr_at_10": round(result["popularity"]["hit_rate"], 4),
        "popularity_ndcg_at_10": round(result["popularity"]["ndcg"], 4),
        "hr_lift_over_popularity": round(result["hit_rate_lift"], 4),
    }
    if current_choice:
        current = candidate_from_row(current_choice)
        if current.describe() == fitted.describe():
            current_hit_rate = evaluation["hr_at_10"]
        else:
            current_hit_rate = round(evaluate_fitted(clone(current).fit(train, train_times), cases)[0][1], 4)
        evaluation["current_model"] = current.describe()
        evaluation["current_model_hr_at_10"] = current_hit_rate
    return model, report, evaluation


def _current_choice() -> dict | None:
    """The model the current published run chose ({"name", "params"}), if it recorded one."""
    from shared.runs import get_run

    run_id = current_run_id()
    if run_id is None:
        return None
    chosen = ((get_run(run_id).metrics or {}).get("model_selection") or {}).get("chosen")
    return {"name": chosen["name"], "params": chosen["params"]} if chosen else None


def _neighbour_payloads(model, baskets: sp.csr_matrix, skus: np.ndarray) -> dict[str, str]:
    """sku -> JSON [[item, score, orders together], ...] of its stored top-N neighbours.

    Scores are the chosen model's; "orders together" are plain co-purchase counts of the same pairs,
    so reasons name real evidence whatever model ranks the list.
    """
    payloads = {}
    scores = model.top_neighbours(NEIGHBOURS_STORED)
    counts = pair_counts(binary_baskets(baskets), scores)
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(scores.indptr))
    together_all = np.asarray(counts[rows, scores.indices]).ravel() if scores.nnz else np.zeros(0, np.int64)
    for item in np.flatnonzero(np.diff(scores.indptr)):
        start, stop = scores.indptr[item], scores.indptr[item + 1]
        neighbours = scores.indices[start:stop]
        values = scores.data[start:stop]
        together = together_all[start:stop]
        order = np.lexsort((neighbours, -values))
        payloads[skus[item]] = json.dumps(
            [[int(neighbours[i]), round(float(values[i]), 6), int(together[i])] for i in order],
            separators=(",", ":"),
        )
    return payloads


def _catalogue_payload(catalogue: pd.DataFrame, model: CoPurchaseModel, abc: np.ndarray,
                       trending: np.ndarray, tier_popular: dict, item_counts: np.ndarray) -> str:
    """Everything a web worker keeps in memory for one model version."""
    in_stock = catalogue["stock"].isna() | (catalogue["stock"] > 0)
    popular_items = model.popular_items_[:POPULAR_STORED]
    return json.dumps(
        {
            "skus": catalogue["sku"].tolist(),
            "names": catalogue["name"].tolist(),
            "categories": catalogue["category"].tolist(),
            "prices": catalogue["price"].round(2).tolist(),
            "costs": [None if pd.isna(cost) else round(float(cost), 2) for cost in catalogue["cost"]],
            "active": (catalogue["active"] & ~catalogue["placeholder"]).tolist(),
            "in_stock": in_stock.tolist(),
            "repeat_purchase": catalogue["repeat_purchase"].tolist(),
            "abc": abc.tolist(),
            "orders": item_counts.astype(int).tolist(),
            "informativeness": np.round(model.informativeness_, 6).tolist(),
            "popularity_weight": float(model.cart.popularity_weight),
            "max_cart_items": int(model.cart.max_cart_items),
            "popular": [[int(item), round(float(score), 6)]
                        for item, score in zip(popular_items, model.popular_scores_[:POPULAR_STORED])],
            "trending": [int(item) for item in np.lexsort((np.arange(trending.size), -trending))[:POPULAR_STORED]],
            "tier_popular": tier_popular,
        },
        separators=(",", ":"),
    )


def _tier_popularity(data: TrainingData) -> tuple[dict, dict]:
    """Popular items per tier (from the current scoring run), and each customer's tier."""
    run_id = current_run_id()
    if run_id is None or data.baskets.shape[0] == 0:
        return {}, {}
    tiers = read_frame(db.engine, TIERS_SQL, {"run_id": run_id}, dtypes={"customer_id": str, "tier": str})
    tier_of_customer = pd.Series(tiers["tier"].to_numpy(), index=tiers["customer_id"])
    customer_tiers = tier_of_customer.reindex(data.customer_ids).fillna("regular").to_numpy()
    tier_codes, tier_names = pd.factorize(customer_tiers)
    by_tier = popularity_by_group(data.baskets, tier_codes[data.basket_customers], n_groups=len(tier_names))
    popular = {}
    for code, name in enumerate(tier_names):
        ranked = np.lexsort((np.arange(by_tier.shape[1]), -by_tier[code]))[:POPULAR_STORED]
        popular[str(name)] = [int(item) for item in ranked if by_tier[code, item] > 0]
    return popular, dict(zip(data.customer_ids, customer_tiers))


def train_and_stage(run_id: str, as_of: datetime, config: dict) -> dict:
    """Train on paid orders up to as_of and stage every list under version `run_id` (not yet served)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    catalogue = load_catalogue(db.engine)
    lines, quarantined = quarantine_order_lines(load_order_lines(db.engine, as_of), as_of,
                                                TimeRules.from_config(config).min_date)
    timings["load"] = time.perf_counter() - started
    if catalogue.empty:
        stage_empty_version(run_id)
        return {"order_lines": 0, "items": 0, "evaluation": {"skipped": "no products"}}

    step = time.perf_counter()
    data = TrainingData(lines, catalogue)
    del lines
    if data.order_lines == 0:
        stage_empty_version(run_id)
        return {"order_lines": 0, "items": int(data.n_items), "evaluation": {"skipped": "no paid orders"},
                "quarantine": quarantined}
    # Bundles keep their count-based co-purchase evidence, whatever model ranks the lists.
    co_purchase = CoPurchaseModel(cart=CartScoring(n_popular=POPULAR_STORED)).fit(data.baskets, data.basket_times)
    item_counts = np.asarray(data.baskets.sum(axis=0)).ravel()
    timings["co_purchase"] = time.perf_counter() - step

    step = time.perf_counter()
    skus = catalogue["sku"].to_numpy()
    abc = abc_classes(data.revenue)
    in_stock = (catalogue["stock"].isna() | (catalogue["stock"] > 0)).to_numpy()
    category_codes = pd.factorize(catalogue["category"])[0]
    bundle_catalogue = BundleCatalogue(
        price=catalogue["price"].to_numpy(), cost=catalogue["cost"].to_numpy(dtype=float), category=category_codes,
        active=(catalogue["active"] & ~catalogue["placeholder"]).to_numpy(), in_stock=in_stock, abc=abc,
        names=catalogue["name"].to_numpy(),
    )
    bundle_options = BundleOptions(pricing=BundlePricing(margin_floor=config["BUNDLE_MARGIN_FLOOR"]))
    bundles = build_bundles(co_purchase, bundle_catalogue, bundle_options)
    timings["bundles"] = time.perf_counter() - step

    step = time.perf_counter()
    chosen, selection, evaluation = select_and_evaluate(data, config, _current_choice())
    timings["select_and_evaluate"] = time.perf_counter() - step
    step = time.perf_counter()
    model = clone(chosen).fit(data.baskets, data.basket_times)
    timings["chosen_model"] = time.perf_counter() - step

    step = time.perf_counter()
    trending = (trending_scores(data.baskets, data.basket_times) if data.baskets.shape[0]
                else np.zeros(data.n_items))
    tier_popular, customer_tiers = _tier_popularity(data)
    customer_payloads = _customer_payloads(data, catalogue, customer_tiers, model)
    timings["for_you"] = time.perf_counter() - step

    step = time.perf_counter()
    catalogue_payload = _catalogue_payload(catalogue, model, abc, trending, tier_popular, item_counts)
    neighbour_payloads = _neighbour_payloads(model, data.baskets, skus)
    bundle_payloads = _bundle_payloads(bundles, skus)
    write_version(run_id, catalogue_payload, neighbour_payloads, bundle_payloads,
                  zip(data.customer_ids, customer_payloads))
    timings["stage"] = time.perf_counter() - step
    return {
        "model_version": run_id,
        "order_lines": int(data.order_lines),
        "orders": int(data.baskets.shape[0]),
        "items": int(data.n_items),
        "customers": int(len(data.customer_ids)),
        "items_with_neighbours": len(neighbour_payloads),
        "bundles": len(bundles),
        "abc": {label: int((abc == label).sum()) for label in ("A", "B", "C")},
        "evaluation": evaluation,
        "model_selection": selection,
        "seconds": {name: round(value, 3) for name, value in timings.items()},
        "quarantine": quarantined,
    }


def _bundle_payloads(bundles: list, skus: np.ndarray) -> dict[str, str]:
    """anchor sku -> JSON list of its bundles."""
    by_anchor: dict[str, list] = {}
    for bundle in bundles:
        entry = {
            "items": [int(item) for item in bundle["items"]],
            "list_price": round(float(bundle["list_price"]), 2),
            "bundle_price": round(float(bundle["bundle_price"]), 2),
            "discount": round(float(bundle["discount"]), 4),
            "margin": round(float(bundle["margin_after_discount"]), 4),
            "reason": bundle["reason"],
        }
        by_anchor.setdefault(str(skus[int(bundle["anchor"])]), []).append(entry)
    return {sku: json.dumps(entries, separators=(",", ":")) for sku, entries in by_anchor.items()}


def _customer_payloads(data: TrainingData, catalogue: pd.DataFrame, customer_tiers: dict,
                       chosen_model) -> list[bytes]:
    """Packed per-customer lists (store.encode_customer_lists), in data.customer_ids order.

    The neighbourhood part is the chosen cart model's item lists, blended with popularity at the
    chosen weight (popularity on the same unit-maximum scale).
    """
    if len(data.customer_ids) == 0:
        return []
    # 20 neighbours and 20 backfill candidates per customer keep 1M customers within the nightly budget;
    # on the groceries next-basket holdout the default 50/50 was no better (tests/perf/groceries_eval.py).
    customer_share = np.asarray((data.customer_items > 0).sum(axis=0)).ravel() / len(data.customer_ids)
    weight = chosen_model.popularity_weight_ / max(float(customer_share.max()), 1e-12)
    model = ForYouModel(neighbourhood=Neighbourhood(n_neighbors=20), n_backfill=20, popularity_weight=weight).fit(
        data.customer_items, neighbour_scores=chosen_model.top_neighbours(20))
    repeat = catalogue["repeat_purchase"].to_numpy()
    # Items bought before are only suggested again when they are bought again by nature (consumables).
    bought_once_only = data.customer_items.multiply(sp.csr_matrix(~repeat, dtype=np.float32)).tocsr()
    bought_once_only.eliminate_zeros()
    bought_once_only.sort_indices()
    items, scores = model.recommend_all(FOR_YOU_STORED, exclude=bought_once_only)
    # Inactive items and placeholders are dropped here; stock is checked again when serving.
    unavailable = ~(catalogue["active"] & ~catalogue["placeholder"]).to_numpy()
    dropped = (items < 0) | unavailable[np.maximum(items, 0)]
    items = np.where(dropped, -1, items)
    # Move the kept items to the front of each row, keeping their order.
    order = np.argsort(dropped, axis=1, kind="stable")
    items = np.take_along_axis(items, order, axis=1)
    scores = np.where(items >= 0, np.take_along_axis(scores, order, axis=1), 0.0)
    tier_index = {tier: code for code, tier in enumerate(CUSTOMER_TIERS)}
    tier_codes = np.fromiter((tier_index.get(customer_tiers.get(customer_id), UNKNOWN_TIER)
                              for customer_id in data.customer_ids), dtype=np.uint8, count=len(data.customer_ids))
    return encode_customer_lists(tier_codes, items, scores, bought_once_only.indptr, bought_once_only.indices)


def write_version(version: str, catalogue_payload: str, neighbours: dict[str, str], bundles: dict[str, str],
                  customers) -> None:
    """Write a version's lists to Redis (with a TTL) and its shared lists to the database.

    `customers` yields (customer id, packed lists) pairs; they are only in Redis (a Redis outage
    serves customers the tier and popular lists from the database copy instead).
    """
    client = redis_store.client
    pipeline = client.pipeline(transaction=False)
    pipeline.set(list_key(version, "catalogue"), catalogue_payload, ex=MODEL_TTL_SECONDS)
    pending = 1
    for kind, payloads in (("nb", neighbours), ("bundles", bundles)):
        for key, payload in payloads.items():
            pipeline.set(list_key(version, kind, key), payload, ex=MODEL_TTL_SECONDS)
            pending += 1
            if pending >= 10_000:
                pipeline.execute()
                pending = 0
    pipeline.execute()
    buckets: dict[str, dict[str, bytes]] = {}
    for customer_id, payload in customers:
        buckets.setdefault(customer_bucket_key(version, customer_id), {})[customer_id] = payload
    bucket_keys = list(buckets)
    for start in range(0, len(bucket_keys), 256):
        for key in bucket_keys[start:start + 256]:
            pipeline.hset(key, mapping=buckets[key])
            pipeline.expire(key, MODEL_TTL_SECONDS)
        pipeline.execute()

    rows = [("catalogue", "-", catalogue_payload)]
    rows += [("nb", key, payload) for key, payload in neighbours.items()]
    rows += [("bundles", key, payload) for key, payload in bundles.items()]
    frame = pd.DataFrame(rows, columns=["kind", "list_key", "payload"])
    frame.insert(0, "model_version", version)
    with db.session() as session:
        session.execute(delete(RecommendationList).where(RecommendationList.model_version == version))
    write_frame(db.engine, "recommendation_lists", frame)


def stage_empty_version(version: str) -> None:
    """An empty shop still gets a (trivially empty) version, so serving answers with fallbacks."""
    empty_catalogue = json.dumps({"skus": [], "names": [], "categories": [], "prices": [], "costs": [],
                                  "active": [], "in_stock": [], "repeat_purchase": [], "abc": [], "orders": [],
                                  "informativeness": [], "popularity_weight": 1.0, "max_cart_items": 20,
                                  "popular": [], "trending": [], "tier_popular": {}})
    write_version(version, empty_catalogue, {}, {}, [])


def warm_cache(version: str) -> None:
    """Touch the storefront's hottest keys (top sellers' neighbour and bundle lists) before the flip."""
    client = redis_store.client
    payload = client.get(list_key(version, "catalogue"))
    if payload is None:
        raise RuntimeError(f"model version {version} has no catalogue in Redis: not publishing it")
    catalogue = json.loads(payload)
    hot = [catalogue["skus"][item] for item, _score in catalogue["popular"][:100]]
    if hot:
        client.mget([list_key(version, "nb", sku) for sku in hot] + [list_key(version, "bundles", sku) for sku in hot])


def publish_version(version: str) -> None:
    """Flip the pointer readers follow (Redis and the database copy) to `version`."""
    redis_store.client.set(redis_store.key(*VERSION_POINTER), version)
    set_database_version(version)
    prune_database_versions(keep=(version,))


def prune_database_versions(keep: tuple[str, ...]) -> None:
    """Drop database copies of versions that are neither current nor previous."""
    keep_versions = set(keep) | {value for value in (get_pointer(PREVIOUS_RUN),) if value}
    with db.session() as session:
        session.execute(delete(RecommendationList).where(RecommendationList.model_version.notin_(keep_versions)))
