"""Nightly training of the recommendation models and staging of their lists under a model version.

Train offline, serve precomputed: this module turns paid order lines into per-item neighbour lists,
bundles, popularity lists and per-customer for-you lists, evaluates cart cross-sell on a time-ordered
holdout next to popularity, and writes everything under versioned Redis keys (plus a database copy
of the shared lists for Redis outages). `publish_version` flips the one pointer readers follow.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import orjson
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone
from sqlalchemy import delete, select

from services.recommend.abc import abc_classes
from services.recommend.bundles import BundleCatalogue, BundleOptions, BundlePricing, build_bundles
from services.recommend.cooccurrence import CartScoring, CoPurchaseModel
from services.recommend.crosssell import recommend_for_cart
from services.recommend.candidates import binary_baskets, pair_counts
from services.recommend.evaluation import evaluate_against_popularity, split_and_cases
from services.recommend.experiments import candidate_families_in_use
from services.recommend.foryou import ForYouModel, Neighbourhood
from services.recommend.lines import (
    LineShard,
    TrainingData,
    catalogue_key,
    customer_tiers,
    read_line_shard,
)
from services.recommend.model_families import best_rows_by_family
from services.recommend.popularity import popularity_by_group, trending_scores
from services.recommend.selection import SelectionSettings, candidate_from_row, evaluate_fitted, select_model
from services.recommend.store import (
    BUNDLES_KIND,
    CUSTOMER_TIERS,
    MODEL_TTL_SECONDS,
    UNKNOWN_TIER,
    VARIANT_KIND,
    VARIANT_LISTS_KIND,
    VERSION_POINTER,
    customer_bucket_key,
    encode_customer_lists,
    list_key,
    set_database_version,
    variant_key_prefix,
)
from shared.extensions import db, redis_store, reply_text
from shared.frames import read_frame, write_frame
from shared.limits import TimeRules
from shared.models import RecommendationList, Run
from shared.runs import ACTIVE_STATUSES, PREVIOUS_RUN, current_run_id, get_pointer

log = logging.getLogger("segrec.recommend.training")

NEIGHBOURS_STORED = 50
POPULAR_STORED = 200
FOR_YOU_STORED = 20
MAX_EVALUATION_CASES = 5000
CATALOGUE_SQL = """
SELECT sku, name, category, price, cost, stock, active, repeat_purchase, placeholder FROM products ORDER BY sku
"""
# What the for-you shards read back (the run's chosen neighbour lists and shop-wide priors) outlives
# the run's retries by far; a day, like the fitted customer scorer.
FOR_YOU_INPUTS_TTL_SECONDS = 86_400
# Staged line shards wait for train_models (and its retries) the same day; train_models drops them after use.
LINE_SHARD_TTL_SECONDS = FOR_YOU_INPUTS_TTL_SECONDS


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


def customer_item_matrix(customer_codes: np.ndarray, items: np.ndarray, n_customers: int,
                         n_items: int) -> sp.csr_matrix:
    """Customers x items line counts (one built the same way for the whole shop and for each shard)."""
    presence = np.ones(len(items), dtype=np.float32)
    matrix = sp.csr_matrix((presence, (customer_codes, items)), shape=(n_customers, n_items))
    matrix.sum_duplicates()
    return matrix


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
    # A fixed, seeded sample keeps the nightly evaluation bounded and comparable night to night.
    train, train_times, cases = split_and_cases(data.baskets, data.basket_times, max_cases=MAX_EVALUATION_CASES)
    model, report = select_model(train, train_times, settings)
    if len(cases) < 10 or train.nnz == 0:
        return model, report, {"skipped": "fewer than 10 held-out orders with two or more items"}
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
    scores = model.stored_lists(NEIGHBOURS_STORED)
    counts = pair_counts(binary_baskets(baskets), scores)
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(scores.indptr))
    together_all = np.asarray(counts[rows, scores.indices]).ravel() if scores.nnz else np.zeros(0, np.int64)
    # One sort of every stored entry (by item, best score first, ties by the lower neighbour) and one conversion
    # to Python numbers; each item then encodes a slice. Sorting, rounding and encoding item by item made this
    # function take 11.6-13.2 s at 1M customers (2.5M entries), against 8.4-8.8 s this way, pair counts included.
    order = np.lexsort((scores.indices, -scores.data, rows))
    neighbours = scores.indices[order].tolist()
    values = np.round(scores.data[order].astype(np.float64), 6).tolist()
    together = together_all[order].tolist()
    indptr = scores.indptr.tolist()
    payloads = {}
    for item in np.flatnonzero(np.diff(scores.indptr)).tolist():
        start, stop = indptr[item], indptr[item + 1]
        entries = list(zip(neighbours[start:stop], values[start:stop], together[start:stop]))
        payloads[skus[item]] = orjson.dumps(entries).decode()
    return payloads


def _catalogue_payload(catalogue: pd.DataFrame, model: CoPurchaseModel, abc: np.ndarray,
                       trending: np.ndarray, tier_popular: dict, item_counts: np.ndarray) -> str:
    """Everything a web worker keeps in memory for one model version."""
    in_stock = catalogue["stock"].isna() | (catalogue["stock"] > 0)
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
            **_merge_inputs(model),
            "trending": [int(item) for item in np.lexsort((np.arange(trending.size), -trending))[:POPULAR_STORED]],
            "tier_popular": tier_popular,
        },
        separators=(",", ":"),
    )


def _merge_inputs(model) -> dict:
    """What serving merges a model's neighbour lists with: informativeness, the popular list and its weight."""
    popular_items = model.popular_items_[:POPULAR_STORED]
    return {
        "informativeness": np.round(model.informativeness_, 6).tolist(),
        "popularity_weight": float(model.cart.popularity_weight),
        "max_cart_items": int(model.cart.max_cart_items),
        "popular": [[int(item), round(float(score), 6)]
                    for item, score in zip(popular_items, model.popular_scores_[:POPULAR_STORED])],
    }


def variant_payload(model, lists_kind: str, key_prefix: str) -> str:
    """A candidate variant's description in a version (store.NeighbourSource.from_variant_payload reads it)."""
    return json.dumps({"model": model.describe(), "lists_kind": lists_kind, "key_prefix": key_prefix,
                       **_merge_inputs(model)}, separators=(",", ":"))


def stage_variants(version: str, data: TrainingData, skus: np.ndarray, selection: dict, chosen,
                   config: dict) -> tuple[dict, dict]:
    """Fit and stage the candidate families experiments name (running or scheduled), from tonight's rows.

    Each is tonight's best row of its family in `selection`, fitted on the same whole-window baskets as
    the chosen model (`chosen`, fitted) and staged under the version next to it, so it publishes with
    the rest. Returns ({family: {"params", "seconds", "lists"}} staged, {family: why} not staged).
    A variant that cannot be fitted is skipped, never the night's model: serving answers it with the
    chosen model's lists (fallback `variant_not_staged`).
    """
    families = candidate_families_in_use()
    rows = best_rows_by_family(selection)
    settings = SelectionSettings.from_config(config)
    staged, skipped = {}, {}
    for family in sorted(families):
        if family not in rows:
            skipped[family] = "no row of this family in tonight's model selection"
            continue
        started = time.perf_counter()
        try:
            lists = _stage_variant(version, family, _variant_candidate(rows[family], settings), chosen, data, skus)
        except ValueError as error:  # a fit that fails on tonight's data (e.g. EASE not positive definite)
            log.warning("experiment variant not staged", extra={"version": version, "family": family,
                                                                 "error": str(error)})
            skipped[family] = f"{type(error).__name__}: {error}"
            continue
        staged[family] = {"params": rows[family]["params"], "lists": lists,
                          "seconds": round(time.perf_counter() - started, 3)}
    return staged, skipped


def _variant_candidate(row: dict, settings: SelectionSettings):
    """The unfitted candidate of a selection row, with the list sizes selection fitted it with."""
    candidate = candidate_from_row(row)
    common = {"n_neighbours": settings.n_neighbours, "n_popular": settings.n_popular}
    if "max_items" in candidate.get_params():
        common["max_items"] = settings.ease_max_items
    return candidate.set_params(**common)


def _stage_variant(version: str, family: str, candidate, chosen, data: TrainingData, skus: np.ndarray) -> str:
    """Stage one candidate variant; returns whose lists it serves: "chosen" (the same model) or "own"."""
    if type(candidate) is type(chosen) and candidate.get_params() == chosen.get_params():
        # Tonight's chosen model itself: no refit, the variant points at the main lists.
        write_lists(version, {VARIANT_KIND: {family: variant_payload(chosen, "nb", "")}})
        return "chosen"
    fitted = clone(candidate).fit(data.baskets, data.basket_times)
    prefix = variant_key_prefix(family)
    neighbours = {prefix + sku: payload for sku, payload in _neighbour_payloads(fitted, data.baskets, skus).items()}
    write_lists(version, {VARIANT_LISTS_KIND: neighbours,
                          VARIANT_KIND: {family: variant_payload(fitted, VARIANT_LISTS_KIND, prefix)}})
    return "own"


def _tier_popularity(data: TrainingData) -> dict:
    """Popular items per tier (tiers from the scoring run the line shards read next to)."""
    if not data.tier_run or data.baskets.shape[0] == 0:
        return {}
    by_tier = popularity_by_group(data.baskets, data.basket_tiers, n_groups=len(CUSTOMER_TIERS))
    popular = {}
    for code, name in enumerate(CUSTOMER_TIERS):
        if not by_tier[code].any():
            continue  # no orders from customers of this tier
        ranked = np.lexsort((np.arange(by_tier.shape[1]), -by_tier[code]))[:POPULAR_STORED]
        popular[name] = [int(item) for item in ranked if by_tier[code, item] > 0]
    return popular


@dataclass(frozen=True)
class ForYouInputs:
    """What every for-you shard reads back from Redis: the chosen model's neighbour lists and shop-wide priors.

    Shards rank their customers with the same neighbours, popularity (each item's share of all the
    shop's customers) and weight, so a customer's list does not depend on which shard holds them.
    """

    skus: np.ndarray
    neighbours: sp.csr_matrix
    popularity: np.ndarray
    popularity_weight: float
    repeat: np.ndarray
    available: np.ndarray
    tier_run: str

    @classmethod
    def empty(cls, skus: np.ndarray) -> ForYouInputs:
        """Inputs of a shop with nothing to learn from: no customer gets a list."""
        n_items = len(skus)
        return cls(np.asarray(skus, dtype=str), sp.csr_matrix((n_items, n_items)), np.zeros(n_items), 1.0,
                   np.zeros(n_items, dtype=bool), np.zeros(n_items, dtype=bool), "")

    def to_bytes(self) -> bytes:
        """numpy's own format (no pickle), so a shard loads it with allow_pickle=False."""
        buffer = io.BytesIO()
        neighbours = sp.csr_matrix(self.neighbours)
        np.savez(buffer, skus=np.asarray(self.skus, dtype=str), indptr=neighbours.indptr,
                 indices=neighbours.indices, data=neighbours.data, popularity=self.popularity,
                 popularity_weight=np.float64(self.popularity_weight), repeat=self.repeat,
                 available=self.available, tier_run=np.str_(self.tier_run))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> ForYouInputs:
        """The inputs written by to_bytes."""
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            n_items = len(arrays["skus"])
            neighbours = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n_items, n_items))
            return cls(arrays["skus"], neighbours, arrays["popularity"], float(arrays["popularity_weight"]),
                       arrays["repeat"], arrays["available"], str(arrays["tier_run"]))


def for_you_inputs_key(version: str) -> str:
    """Redis key of a version's for-you inputs (by reference: shard tasks carry only the run id)."""
    return redis_store.key("run", version, "foryou_inputs")


def stage_for_you_inputs(version: str, inputs: ForYouInputs) -> None:
    """Write the inputs every for-you shard of `version` reads."""
    redis_store.client.set(for_you_inputs_key(version), inputs.to_bytes(), ex=FOR_YOU_INPUTS_TTL_SECONDS)


def load_for_you_inputs(version: str) -> ForYouInputs:
    """The staged for-you inputs of `version`, or RuntimeError when they are gone (train_models must rerun)."""
    payload = redis_store.client.get(for_you_inputs_key(version))
    if payload is None:
        raise RuntimeError(f"the for-you inputs of version {version} are missing from Redis; retrain the models")
    return ForYouInputs.from_bytes(payload)


def _for_you_inputs(data: TrainingData, catalogue: pd.DataFrame, chosen_model) -> ForYouInputs:
    """The neighbour lists and priors for-you is ranked with, learned on the whole shop."""
    skus = catalogue["sku"].to_numpy(dtype=str)
    if data.n_customers == 0:
        return ForYouInputs.empty(skus)
    # 20 neighbours and 20 backfill candidates per customer keep 1M customers within the nightly budget;
    # on the groceries next-basket holdout the default 50/50 was no better (tests/perf/groceries_eval.py).
    customer_share = data.item_customers / data.n_customers
    weight = chosen_model.popularity_weight_ / max(float(customer_share.max()), 1e-12)
    return ForYouInputs(
        skus=skus,
        neighbours=sp.csr_matrix(chosen_model.top_neighbours(20)),
        popularity=customer_share.astype(np.float64),
        popularity_weight=float(weight),
        repeat=catalogue["repeat_purchase"].to_numpy(dtype=bool),
        available=(catalogue["active"] & ~catalogue["placeholder"]).to_numpy(dtype=bool),
        tier_run=data.tier_run,
    )


def line_shard_key(version: str, index: int | str) -> str:
    """Redis key of one staged line shard of a version (by reference: tasks carry only ids and ranges)."""
    return redis_store.key("run", version, "lines", str(index))


def stage_line_shard(version: str, index: int, as_of: datetime, config: dict, low: str | None,
                     high: str | None) -> LineShard:
    """Read the lines of the customers with ids in [low, high) and keep them in Redis for train_models.

    Idempotent: a retry rewrites the same key. Tiers come from the published run, as train_models' do.
    """
    skus = pd.Index(load_catalogue(db.engine)["sku"])
    shard = read_line_shard(as_of, TimeRules.from_config(config).min_date, skus, current_run_id() or "", low, high)
    redis_store.client.set(line_shard_key(version, index), shard.to_bytes(), ex=LINE_SHARD_TTL_SECONDS)
    return shard


def staged_line_shard(version: str, index: int, catalogue: str, low: str | None,
                      high: str | None) -> LineShard | None:
    """Line shard `index` as staged for this catalogue (its catalogue_key) and customer-id range, else None."""
    payload = redis_store.client.get(line_shard_key(version, index))
    if payload is None:
        return None
    shard = LineShard.from_bytes(payload)
    if shard.catalogue_key != catalogue or shard.id_range != (low, high):
        return None
    return shard


def collect_line_shards(version: str, as_of: datetime, config: dict, skus: pd.Index,
                        boundaries: list | None) -> list[LineShard]:
    """The line shards of `boundaries` as staged; one missing, or staged against another catalogue, range or
    published run, is read again here (so a lost shard costs its own read, not the run).

    boundaries None: every customer's lines in one shard read here, nothing staged.
    """
    min_date = TimeRules.from_config(config).min_date
    tier_run = current_run_id() or ""
    if boundaries is None:
        return [read_line_shard(as_of, min_date, skus, tier_run)]
    expected = catalogue_key(skus)
    shards = []
    for index, (low, high) in enumerate(boundaries):
        shard = staged_line_shard(version, index, expected, low, high)
        if shard is None or shard.tier_run != tier_run:
            log.info("line shard read again", extra={"version": version, "index": index,
                                                     "staged_next_to": shard.tier_run if shard else None})
            shard = read_line_shard(as_of, min_date, skus, tier_run, low, high)
        shards.append(shard)
    return shards


def drop_line_shards(version: str, count: int | None = None) -> None:
    """Forget a version's staged line shards once train_models and the for-you shards have used them.

    count None (a failed run, which may have staged only some): whichever of its shards are there.
    """
    if count is None:
        keys = list(redis_store.client.scan_iter(match=line_shard_key(version, "*"), count=1000))
    else:
        keys = [line_shard_key(version, index) for index in range(count)]
    if keys:
        redis_store.client.delete(*keys)


def load_training_inputs(run_id: str, as_of: datetime, config: dict,
                         boundaries: list | None = None) -> tuple[pd.DataFrame, TrainingData | None]:
    """The catalogue and the joined line shards of the ranges `boundaries` (None: read here in one shard).

    The data is None when the catalogue is empty.
    """
    catalogue = load_catalogue(db.engine)
    if catalogue.empty:
        return catalogue, None
    return catalogue, TrainingData(collect_line_shards(run_id, as_of, config, pd.Index(catalogue["sku"]),
                                                       boundaries), len(catalogue))


def train_models(run_id: str, as_of: datetime, config: dict, boundaries: list | None = None,
                 inputs: tuple | None = None) -> dict:
    """Train on paid orders up to as_of and stage the shared lists under version `run_id` (not yet served).

    Joins the line shards of the customer-id ranges `boundaries` (staged by `stage_line_shard`; None:
    read here in one shard), unless `inputs` (`load_training_inputs`) are given. Stages the catalogue
    and neighbour lists, the candidate variants that experiments name (`stage_variants`), and the
    for-you inputs that the per-customer shards (`train_for_you_shard`) read; the per-customer lists
    are theirs to write, the bundles `train_bundles`'.
    """
    timings: dict[str, float] = {}
    step = time.perf_counter()
    catalogue, data = inputs or load_training_inputs(run_id, as_of, config, boundaries)
    if data is None:
        stage_empty_version(run_id)
        return {"order_lines": 0, "items": 0, "evaluation": {"skipped": "no products"}}
    quarantined = data.quarantine
    timings["load"] = time.perf_counter() - step

    if data.order_lines == 0:
        stage_empty_version(run_id, catalogue["sku"].to_numpy(dtype=str))
        return {"order_lines": 0, "items": int(data.n_items), "evaluation": {"skipped": "no paid orders"},
                "quarantine": quarantined}
    item_counts = np.asarray(data.baskets.sum(axis=0)).ravel()
    skus = catalogue["sku"].to_numpy()
    abc = abc_classes(data.revenue)

    step = time.perf_counter()
    chosen, selection, evaluation = select_and_evaluate(data, config, _current_choice())
    timings["select_and_evaluate"] = time.perf_counter() - step
    step = time.perf_counter()
    model = clone(chosen).fit(data.baskets, data.basket_times)
    timings["chosen_model"] = time.perf_counter() - step

    step = time.perf_counter()
    trending = (trending_scores(data.baskets, data.basket_times) if data.baskets.shape[0]
                else np.zeros(data.n_items))
    tier_popular = _tier_popularity(data)
    catalogue_payload = _catalogue_payload(catalogue, model, abc, trending, tier_popular, item_counts)
    neighbour_payloads = _neighbour_payloads(model, data.baskets, skus)
    write_shared_lists(run_id, catalogue_payload, neighbour_payloads)
    stage_for_you_inputs(run_id, _for_you_inputs(data, catalogue, model))
    timings["stage"] = time.perf_counter() - step
    step = time.perf_counter()
    selection["variants_staged"], skipped = stage_variants(run_id, data, skus, selection, model, config)
    if skipped:
        selection["variants_skipped"] = skipped
    timings["variants"] = time.perf_counter() - step
    return {
        "model_version": run_id,
        "order_lines": int(data.order_lines),
        "orders": int(data.baskets.shape[0]),
        "items": int(data.n_items),
        "customers": int(data.n_customers),
        "items_with_neighbours": len(neighbour_payloads),
        "abc": {label: int((abc == label).sum()) for label in ("A", "B", "C")},
        "evaluation": evaluation,
        "model_selection": selection,
        "seconds": {name: round(value, 3) for name, value in timings.items()},
        "quarantine": quarantined,
    }


def train_bundles(run_id: str, as_of: datetime, config: dict, boundaries: list | None = None,
                  inputs: tuple | None = None) -> dict:
    """Count co-purchases over the same line shards as train_models and stage the bundles under version `run_id`.

    Bundles are priced on count-based co-purchase evidence whatever model ranks the lists, so they need
    nothing of model selection: as a task of their own they are built while train_models selects (at 1M
    customers the counts alone were 8 s of train_models' serial minute). `inputs` as for train_models.
    """
    timings: dict[str, float] = {}
    step = time.perf_counter()
    catalogue, data = inputs or load_training_inputs(run_id, as_of, config, boundaries)
    timings["load"] = time.perf_counter() - step
    bundles = []
    if data is not None and data.order_lines:
        step = time.perf_counter()
        co_purchase = CoPurchaseModel(cart=CartScoring(n_popular=POPULAR_STORED)).fit(data.baskets,
                                                                                      data.basket_times)
        timings["co_purchase"] = time.perf_counter() - step
        step = time.perf_counter()
        bundles = build_bundles(co_purchase, _bundle_catalogue(catalogue, abc_classes(data.revenue)),
                                BundleOptions(pricing=BundlePricing(margin_floor=config["BUNDLE_MARGIN_FLOOR"])))
        timings["bundles"] = time.perf_counter() - step
    write_bundle_lists(run_id, _bundle_payloads(bundles, catalogue["sku"].to_numpy()))
    return {"bundles": len(bundles), "order_lines": int(data.order_lines) if data is not None else 0,
            "seconds": {name: round(value, 3) for name, value in timings.items()}}


def _bundle_catalogue(catalogue: pd.DataFrame, abc: np.ndarray) -> BundleCatalogue:
    """The catalogue columns bundles are priced and filtered with."""
    in_stock = (catalogue["stock"].isna() | (catalogue["stock"] > 0)).to_numpy()
    return BundleCatalogue(
        price=catalogue["price"].to_numpy(), cost=catalogue["cost"].to_numpy(dtype=float),
        category=pd.factorize(catalogue["category"])[0],
        active=(catalogue["active"] & ~catalogue["placeholder"]).to_numpy(), in_stock=in_stock, abc=abc,
        names=catalogue["name"].to_numpy(),
    )


def train_for_you_shard(version: str, as_of: datetime, config: dict, low: str | None, high: str | None,
                        index: int | None = None) -> int:
    """Rank the for-you lists of the customers with ids in [low, high) and write them under `version`.

    Reads the shard's own order lines, as line shard `index` staged them for train_models when it is
    there (so a night reads the shop's lines from the database once), else from the database; and the
    neighbour lists and priors train_models staged. Idempotent: a retry rewrites the same hash fields.
    Returns the number of customers written.
    """
    inputs = load_for_you_inputs(version)
    skus = pd.Index(inputs.skus.tolist())
    shard = staged_line_shard(version, index, catalogue_key(skus), low, high) if index is not None else None
    if shard is None:
        # No tier run: the lists take their tiers from the inputs' run (_shard_tier_codes), not the shard's.
        shard = read_line_shard(as_of, TimeRules.from_config(config).min_date, skus, "", low, high)
    customer_ids = pd.Index(shard.customer_ids)
    customer_items = customer_item_matrix(shard.line_customers(), shard.line_items, len(customer_ids), len(skus))
    del shard
    tier_codes = _shard_tier_codes(inputs.tier_run, customer_ids, low, high)
    payloads = _customer_payloads(customer_items, tier_codes, inputs)
    write_customer_lists(version, zip(customer_ids, payloads))
    return len(customer_ids)


def _shard_tier_codes(tier_run: str, customer_ids: pd.Index, low: str | None, high: str | None) -> np.ndarray:
    """Each customer's tier code in the run the models were trained next to (regular when unscored)."""
    if not tier_run:
        return np.full(len(customer_ids), UNKNOWN_TIER, dtype=np.uint8)
    tiers = customer_tiers(tier_run, customer_ids, low, high)
    tier_index = {tier: code for code, tier in enumerate(CUSTOMER_TIERS)}
    return np.fromiter((tier_index.get(tier, UNKNOWN_TIER) for tier in tiers), dtype=np.uint8,
                       count=len(customer_ids))


def train_and_stage(run_id: str, as_of: datetime, config: dict) -> dict:
    """Train the models and every customer's lists in this process (one shard of all customers)."""
    started = time.perf_counter()
    inputs = load_training_inputs(run_id, as_of, config)
    load_seconds = time.perf_counter() - started
    metrics = train_models(run_id, as_of, config, inputs=inputs)
    bundles = train_bundles(run_id, as_of, config, inputs=inputs)
    metrics["bundles"] = bundles["bundles"]
    seconds = metrics.setdefault("seconds", {})
    seconds["load"] = round(load_seconds, 3)
    seconds["co_purchase"] = bundles["seconds"].get("co_purchase", 0.0)
    seconds["bundles"] = bundles["seconds"].get("bundles", 0.0)
    started = time.perf_counter()
    metrics["customers"] = train_for_you_shard(run_id, as_of, config, None, None)
    seconds["for_you"] = round(time.perf_counter() - started, 3)
    return metrics


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


def _customer_payloads(customer_items: sp.csr_matrix, tier_codes: np.ndarray, inputs: ForYouInputs) -> list[bytes]:
    """Packed per-customer lists (store.encode_customer_lists), in customer_items' row order.

    The neighbourhood part is the chosen cart model's item lists, blended with popularity at the
    chosen weight (popularity on the same unit-maximum scale).
    """
    if customer_items.shape[0] == 0:
        return []
    model = ForYouModel(neighbourhood=Neighbourhood(n_neighbors=20), n_backfill=20,
                        popularity_weight=inputs.popularity_weight).fit(
        customer_items, neighbour_scores=inputs.neighbours, item_popularity=inputs.popularity)
    # Items bought before are only suggested again when they are bought again by nature (consumables).
    bought_once_only = customer_items.multiply(sp.csr_matrix(~inputs.repeat, dtype=np.float32)).tocsr()
    bought_once_only.eliminate_zeros()
    bought_once_only.sort_indices()
    items, scores = model.recommend_all(FOR_YOU_STORED, exclude=bought_once_only)
    # Inactive items and placeholders are dropped here; stock is checked again when serving.
    dropped = (items < 0) | ~inputs.available[np.maximum(items, 0)]
    items = np.where(dropped, -1, items)
    # Move the kept items to the front of each row, keeping their order.
    order = np.argsort(dropped, axis=1, kind="stable")
    items = np.take_along_axis(items, order, axis=1)
    scores = np.where(items >= 0, np.take_along_axis(scores, order, axis=1), 0.0)
    return encode_customer_lists(tier_codes, items, scores, bought_once_only.indptr, bought_once_only.indices)


def write_version(version: str, catalogue_payload: str, neighbours: dict[str, str], bundles: dict[str, str],
                  customers) -> None:
    """Write a version's shared lists and its customers' lists (see the two writers)."""
    write_shared_lists(version, catalogue_payload, neighbours)
    write_bundle_lists(version, bundles)
    write_customer_lists(version, customers)


def write_shared_lists(version: str, catalogue_payload: str, neighbours: dict[str, str]) -> None:
    """Write a version's catalogue and neighbour lists anew (Redis with a TTL, and the database).

    Every database row of the version but its bundles is dropped first, so a retried train_models never
    doubles a row (the variants it stages after are written again too); the bundles are train_bundles',
    which may have written them already.
    """
    with db.session() as session:
        session.execute(delete(RecommendationList).where(RecommendationList.model_version == version,
                                                         RecommendationList.kind != BUNDLES_KIND))
    write_lists(version, {"catalogue": {"-": catalogue_payload}, "nb": neighbours})


def write_bundle_lists(version: str, bundles: dict[str, str]) -> None:
    """Write a version's bundle lists anew (a retried train_bundles replaces its own rows, and only them)."""
    with db.session() as session:
        session.execute(delete(RecommendationList).where(RecommendationList.model_version == version,
                                                         RecommendationList.kind == BUNDLES_KIND))
    write_lists(version, {BUNDLES_KIND: bundles})


def write_lists(version: str, lists: dict[str, dict[str, str]]) -> None:
    """Add lists ({kind: {key: payload}}; key "-": the kind's one list) to a version in Redis and the database."""
    pipeline = redis_store.client.pipeline(transaction=False)
    pending = 0
    for kind, payloads in lists.items():
        for key, payload in payloads.items():
            pipeline.set(list_key(version, kind) if key == "-" else list_key(version, kind, key), payload,
                         ex=MODEL_TTL_SECONDS)
            pending += 1
            if pending >= 10_000:
                pipeline.execute()
                pending = 0
    pipeline.execute()

    rows = [(kind, key, payload) for kind, payloads in lists.items() for key, payload in payloads.items()]
    frame = pd.DataFrame(rows, columns=["kind", "list_key", "payload"])
    frame.insert(0, "model_version", version)
    write_frame(db.engine, "recommendation_lists", frame)


def write_customer_lists(version: str, customers) -> None:
    """Write (customer id, packed lists) pairs into the version's hash buckets (Redis only).

    A customer is one field of its bucket, so shards share buckets and a retried shard overwrites
    its own fields; a Redis outage serves customers the tier and popular lists from the database copy.
    """
    pipeline = redis_store.client.pipeline(transaction=False)
    buckets: dict[str, dict[str, bytes]] = {}
    for customer_id, payload in customers:
        buckets.setdefault(customer_bucket_key(version, customer_id), {})[customer_id] = payload
    bucket_keys = list(buckets)
    for start in range(0, len(bucket_keys), 256):
        for key in bucket_keys[start:start + 256]:
            pipeline.hset(key, mapping=buckets[key])
            pipeline.expire(key, MODEL_TTL_SECONDS)
        pipeline.execute()


def stage_empty_version(version: str, skus: np.ndarray | None = None) -> None:
    """An empty shop still gets a (trivially empty) version, so serving answers with fallbacks."""
    empty_catalogue = json.dumps({"skus": [], "names": [], "categories": [], "prices": [], "costs": [],
                                  "active": [], "in_stock": [], "repeat_purchase": [], "abc": [], "orders": [],
                                  "informativeness": [], "popularity_weight": 1.0, "max_cart_items": 20,
                                  "popular": [], "trending": [], "tier_popular": {}})
    write_shared_lists(version, empty_catalogue, {})
    stage_for_you_inputs(version, ForYouInputs.empty(np.zeros(0, dtype=str) if skus is None else skus))


def warm_cache(version: str) -> None:
    """Touch the storefront's hottest keys (top sellers' neighbour and bundle lists) before the flip."""
    client = redis_store.client
    payload = client.get(list_key(version, "catalogue"))
    if payload is None:
        raise RuntimeError(f"model version {version} has no catalogue in Redis: not publishing it")
    catalogue = json.loads(payload)
    hot = [catalogue["skus"][item] for item, _score in catalogue["popular"][:100]]
    if hot:
        client.mget([list_key(version, "nb", sku) for sku in hot] + [list_key(version, BUNDLES_KIND, sku) for sku in hot])


def publish_version(version: str) -> None:
    """Flip the pointer readers follow (Redis and the database copy) to `version`; drop versions no one needs."""
    redis_store.client.set(redis_store.key(*VERSION_POINTER), version)
    set_database_version(version)
    keep = versions_to_keep(version)
    prune_database_versions(keep)
    prune_redis_versions(keep)


def versions_to_keep(version: str) -> set[str]:
    """The current version, the previous one (what a rollback returns to) and those of runs being staged."""
    keep = {version}
    previous = get_pointer(PREVIOUS_RUN)
    if previous:
        keep.add(previous)
    with db.session() as session:
        keep.update(session.execute(select(Run.run_id).where(Run.status.in_(ACTIVE_STATUSES))).scalars())
    return keep


def prune_database_versions(keep: set[str]) -> None:
    """Drop database copies of versions not in `keep`."""
    with db.session() as session:
        session.execute(delete(RecommendationList).where(RecommendationList.model_version.notin_(keep)))


def redis_versions(batch: int = 1000) -> set[str]:
    """The versions with lists in Redis: each has one catalogue key, which names it."""
    catalogue_keys = redis_store.client.scan_iter(match=list_key("*", "catalogue"), count=batch)
    names = {reply_text(key)[len(redis_store.key("recs", "")):-len(":catalogue")] for key in catalogue_keys}
    # A version id never holds ":" (a sku named "catalogue" would otherwise look like a version "v:nb").
    return {name for name in names if name and ":" not in name}


def prune_redis_versions(keep: set[str], batch: int = 1000) -> int:
    """Unlink the Redis lists of versions not in `keep`; returns the keys removed.

    Without this every nightly version stays until its keys expire (MODEL_TTL_SECONDS, 14 days): fifteen
    versions of every customer's lists.
    """
    client = redis_store.client
    removed = 0
    for version in sorted(redis_versions(batch) - keep):
        names = []
        for key in client.scan_iter(match=list_key(version, "*"), count=batch):
            names.append(key)
            if len(names) >= batch:
                removed += client.unlink(*names)
                names = []
        if names:
            removed += client.unlink(*names)
    return removed
