"""Where published recommendation lists live, and how a web worker reads them cheaply.

Redis holds every list under `<prefix>:recs:<version>:<kind>:<key>`, and `<prefix>:recs:current`
names the served version; flipping that one key publishes a whole model at once. The shared lists
(catalogue, neighbours, bundles) are also copied to the database, which serves when Redis cannot.
A worker keeps the current version's catalogue in memory and re-reads the pointer at most once a second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import redis
from cachetools import LRUCache
from sqlalchemy import select

from shared.extensions import db, redis_store
from shared.models import RecommendationList
from shared.runs import get_pointer, set_pointer

log = logging.getLogger("segrec.recommend.store")
_MISSING = object()

VERSION_POINTER = ("recs", "current")
DATABASE_POINTER = "recs_model"
# Lists outlive two missed nights comfortably; a version nobody publishes expires by itself.
MODEL_TTL_SECONDS = 14 * 86_400
POINTER_RECHECK_SECONDS = 1.0
# Lists of a version never change, so hot ones are kept in the worker: a product page view of a
# best seller then costs no Redis round trip at all.
LIST_CACHE_ENTRIES = 20_000
VARIANT_CACHE_ENTRIES = 64
REDIS_RETRY_AFTER_SECONDS = 5.0


def list_key(version: str, kind: str, key: str | None = None) -> str:
    """Redis key of one list of a model version."""
    parts = ["recs", version, kind] if key is None else ["recs", version, kind, key]
    return redis_store.key(*parts)


# An experiment's candidate variant (a model family) is staged in the version next to the chosen model:
# its description under kind "variant" (key: the family) and, unless it is the chosen model itself, its
# neighbour lists under kind "variant_nb" with key "<family>/<sku>" ("/" is never in a sku; the database
# copy's kind column is 24 characters, too short to hold the family in the kind).
VARIANT_KIND = "variant"
VARIANT_LISTS_KIND = "variant_nb"
# A version's bundle lists (key: the anchor sku). train_bundles writes them beside train_models, and each
# rewrites only its own kinds of the version.
BUNDLES_KIND = "bundles"


def variant_key_prefix(family: str) -> str:
    """What a candidate variant's list keys (within VARIANT_LISTS_KIND) start with, before the sku."""
    return f"{family}/"


@dataclass(frozen=True)
class NeighbourSource:
    """Where a model's per-item lists live in a version, and what a cart merges them with.

    The chosen model's come with the catalogue; a candidate variant's from its staged description.
    """

    kind: str
    key_prefix: str
    informativeness: np.ndarray
    popular_items: np.ndarray
    popular_scores: np.ndarray
    popularity_weight: float
    max_cart_items: int

    def keys(self, skus: list[str]) -> list[str]:
        """The list keys of these items' neighbour lists."""
        return [self.key_prefix + sku for sku in skus] if self.key_prefix else skus

    @classmethod
    def from_merge_inputs(cls, kind: str, key_prefix: str, data: dict) -> NeighbourSource:
        """The source of a model's lists, from the merge inputs staged with them (training._merge_inputs)."""
        popular = data["popular"]
        return cls(
            kind=kind,
            key_prefix=key_prefix,
            informativeness=np.asarray(data["informativeness"], dtype=float),
            popular_items=np.asarray([item for item, _ in popular], dtype=np.int64),
            popular_scores=np.asarray([score for _, score in popular], dtype=float),
            popularity_weight=float(data["popularity_weight"]),
            max_cart_items=int(data["max_cart_items"]),
        )

    @classmethod
    def from_variant_payload(cls, payload: bytes | str) -> NeighbourSource:
        """Parse the JSON a candidate variant was staged with (training.variant_payload)."""
        data = json.loads(payload)
        return cls.from_merge_inputs(data["lists_kind"], data["key_prefix"], data)


# Per-customer lists are many (one per customer), so they are packed, not JSON: a header of
# (tier code, number of for-you slots) as two uint8, then the for-you items (int32) and their
# scores (float32), then the non-repeat items the customer already bought (int32), little-endian.
CUSTOMER_TIERS = ("regular", "silver", "gold", "black")
UNKNOWN_TIER = 255
CUSTOMER_HEADER = np.dtype([("tier", "u1"), ("slots", "u1")])


@dataclass(frozen=True)
class CustomerLists:
    """One customer's precomputed lists: for-you items with scores, items bought before, tier."""

    for_you: np.ndarray
    scores: np.ndarray
    bought: np.ndarray
    tier: str | None


# One Redis hash per bucket of customers, not one key per customer: staging a million customers is
# then a few thousand HSET commands instead of a million SETs, and each key carries the version's TTL.
CUSTOMER_BUCKETS = 4096


def customer_bucket_key(version: str, customer_id: str) -> str:
    """The hash that holds a customer's lists in a version (crc32 is the same in every process)."""
    return list_key(version, "cust", str(zlib.crc32(customer_id.encode("utf-8")) % CUSTOMER_BUCKETS))


def encode_customer_lists(tier_codes: np.ndarray, for_you: np.ndarray, scores: np.ndarray,
                          bought_indptr: np.ndarray, bought_indices: np.ndarray) -> list[bytes]:
    """Pack every customer's lists; for_you/scores are (customers, slots) with -1 padding at the end."""
    customers, slots = for_you.shape
    header = np.empty(customers, dtype=CUSTOMER_HEADER)
    header["tier"] = tier_codes
    header["slots"] = slots
    fixed = np.concatenate(
        [header.view(np.uint8).reshape(customers, 2),
         for_you.astype("<i4").view(np.uint8).reshape(customers, slots * 4),
         scores.astype("<f4").view(np.uint8).reshape(customers, slots * 4)],
        axis=1,
    ).tobytes()
    width = 2 + slots * 8
    bought = bought_indices.astype("<i4").tobytes()
    return [
        fixed[row * width:(row + 1) * width] + bought[bought_indptr[row] * 4:bought_indptr[row + 1] * 4]
        for row in range(customers)
    ]


def decode_customer_lists(payload: bytes) -> CustomerLists:
    """Unpack one customer's lists (the padding of the for-you slots is dropped)."""
    tier_code, slots = payload[0], payload[1]
    for_you = np.frombuffer(payload, dtype="<i4", count=slots, offset=2)
    scores = np.frombuffer(payload, dtype="<f4", count=slots, offset=2 + slots * 4)
    bought = np.frombuffer(payload, dtype="<i4", offset=2 + slots * 8)
    filled = for_you >= 0
    tier = CUSTOMER_TIERS[tier_code] if tier_code < len(CUSTOMER_TIERS) else None
    return CustomerLists(for_you[filled].astype(np.int64), scores[filled].astype(float), bought.astype(np.int64), tier)


def set_database_version(version: str) -> None:
    """Record the served version in the database too (read when Redis is down)."""
    with db.session() as session:
        set_pointer(session, DATABASE_POINTER, version)


def current_model_version() -> str | None:
    """The published model version readers use, or None before the first publish."""
    value = redis_store.client.get(redis_store.key(*VERSION_POINTER))
    return value.decode() if value is not None else None


@dataclass
class Catalogue:
    """One model version's catalogue and shared lists, as arrays indexed by item."""

    version: str
    skus: list[str]
    names: list[str]
    categories: list[str]
    prices: np.ndarray
    costs: np.ndarray
    active: np.ndarray
    in_stock: np.ndarray
    repeat_purchase: np.ndarray
    abc: list[str]
    orders: np.ndarray
    informativeness: np.ndarray
    popularity_weight: float
    max_cart_items: int
    popular_items: np.ndarray
    popular_scores: np.ndarray
    trending: np.ndarray
    tier_popular: dict
    index: dict[str, int] = field(default_factory=dict)
    sellable: np.ndarray | None = None
    margins: np.ndarray | None = None
    # Each item's category as a number (category_numbers[name]), so a request filters by category in numpy.
    category_codes: np.ndarray | None = None
    category_numbers: dict = field(default_factory=dict)
    # The chosen model's neighbour lists and cart merge inputs (what `current` serves).
    lists: NeighbourSource | None = None
    # Per item, what every answer shows of it: (sku, name, category or None, price as a float). Built once
    # per version, so an answer's items are not read from four arrays and converted each time.
    item_heads: list[tuple] = field(default_factory=list)

    @classmethod
    def from_payload(cls, version: str, payload: bytes | str) -> Catalogue:
        """Parse the JSON training wrote."""
        data = json.loads(payload)
        # The chosen model's lists and cart merge inputs, read the way a candidate variant's are.
        lists = NeighbourSource.from_merge_inputs("nb", "", data)
        catalogue = cls(
            version=version,
            skus=data["skus"],
            names=data["names"],
            categories=data["categories"],
            prices=np.asarray(data["prices"], dtype=float),
            costs=np.asarray([np.nan if cost is None else cost for cost in data["costs"]], dtype=float),
            active=np.asarray(data["active"], dtype=bool),
            in_stock=np.asarray(data["in_stock"], dtype=bool),
            repeat_purchase=np.asarray(data["repeat_purchase"], dtype=bool),
            abc=data["abc"],
            orders=np.asarray(data["orders"], dtype=np.int64),
            informativeness=lists.informativeness,
            popularity_weight=lists.popularity_weight,
            max_cart_items=lists.max_cart_items,
            popular_items=lists.popular_items,
            popular_scores=lists.popular_scores,
            trending=np.asarray(data["trending"], dtype=np.int64),
            tier_popular=data["tier_popular"],
            lists=lists,
        )
        catalogue.index = {sku: position for position, sku in enumerate(catalogue.skus)}
        catalogue.sellable = catalogue.active & catalogue.in_stock
        catalogue.category_numbers = {name: number for number, name in enumerate(dict.fromkeys(catalogue.categories))}
        catalogue.category_codes = np.asarray([catalogue.category_numbers[name] for name in catalogue.categories],
                                              dtype=np.int64)
        priced = catalogue.prices > 0
        # Gross margin per item; NaN where the cost is unknown (add-on ranking then uses the median).
        catalogue.margins = np.full(len(catalogue.skus), np.nan)
        catalogue.margins[priced] = 1.0 - catalogue.costs[priced] / catalogue.prices[priced]
        catalogue.item_heads = [(sku, name, category or None, price) for sku, name, category, price
                                in zip(catalogue.skus, catalogue.names, catalogue.categories,
                                       catalogue.prices.tolist())]
        return catalogue


class ListReader:
    """Reads a version's lists from Redis, or from the database when Redis is unreachable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: str | None = None
        self._version_checked = 0.0
        self._catalogues: dict[str, Catalogue] = {}
        self._redis_down_until = 0.0
        self._lists: LRUCache = LRUCache(maxsize=LIST_CACHE_ENTRIES)
        self._lists_lock = threading.Lock()
        # (version, family) -> NeighbourSource, or None when the version has no such variant staged.
        self._variants: LRUCache = LRUCache(maxsize=VARIANT_CACHE_ENTRIES)

    def reset(self) -> None:
        """Forget the cached version, catalogues and Redis health (tests, and after reconfiguring Redis)."""
        with self._lock:
            self._version = None
            self._version_checked = 0.0
            self._catalogues.clear()
            self._redis_down_until = 0.0
        with self._lists_lock:
            self._lists.clear()
            self._variants.clear()

    # ---- Redis health: after a failure, skip Redis for a few seconds instead of timing out per request.

    def redis_available(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, error: Exception) -> None:
        log.warning("redis unavailable, serving from the database: %s", error)
        self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_SECONDS

    # ---- version and catalogue

    def version(self) -> tuple[str | None, str | None]:
        """(current version, fallback used to learn it or None)."""
        now = time.monotonic()
        if self._version is not None and now - self._version_checked < POINTER_RECHECK_SECONDS:
            return self._version, None
        if self.redis_available():
            try:
                self._version = current_model_version()
                self._version_checked = now
                return self._version, None
            except redis.RedisError as error:
                self._redis_failed(error)
        version = self._database_version()
        if version is not None:
            self._version = version
            self._version_checked = now
        return self._version, "database"

    def _database_version(self) -> str | None:
        try:
            return get_pointer(DATABASE_POINTER)
        except Exception as error:  # the database may be down too: keep the last version we knew
            log.warning("database pointer unreadable: %s", error)
            return self._version

    def catalogue(self, version: str) -> Catalogue | None:
        """The in-memory catalogue of a version, loaded once per version per process."""
        cached = self._catalogues.get(version)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._catalogues.get(version)
            if cached is not None:
                return cached
            payload = self.get_lists(version, "catalogue", ["-"])[0][0]
            if payload is None:
                return None
            catalogue = Catalogue.from_payload(version, payload)
            # Keep the current and the previous version (rollback and the minute around a flip).
            if len(self._catalogues) >= 2:
                self._catalogues.pop(next(iter(self._catalogues)))
            self._catalogues[version] = catalogue
            return catalogue

    def variant_lists(self, version: str, family: str) -> tuple[NeighbourSource | None, str | None]:
        """A candidate variant's lists in a version (None when not staged there), and any fallback used.

        Read once per version and family per process (a version never changes), a missing one included.
        """
        key = (version, family)
        with self._lists_lock:
            cached = self._variants.get(key, _MISSING)
        if cached is not _MISSING:
            return cached, None
        (payload,), fallback = self.get_lists(version, VARIANT_KIND, [family])
        source = NeighbourSource.from_variant_payload(payload) if payload else None
        if fallback is None:
            with self._lists_lock:
                self._variants[key] = source
        return source, fallback

    # ---- lists

    def get_lists(self, version: str, kind: str, keys: list[str]) -> tuple[list, str | None]:
        """Payloads (bytes or None) of several lists of one kind, and the fallback used if any.

        Bundles come from the worker's cache when they can. Neighbour lists are cached parsed by the
        Recommender and the catalogue parsed by `catalogue()`, so caching their bytes here too would
        hold each twice; per-customer lists are read each time (too many to cache, each read rarely).
        """
        if not keys:
            return [], None
        cacheable = kind == BUNDLES_KIND
        found: dict[str, bytes | None] = {}
        if cacheable:
            with self._lists_lock:
                for key in keys:
                    cached = self._lists.get((version, kind, key), _MISSING)
                    if cached is not _MISSING:
                        found[key] = cached
        missing = [key for key in keys if key not in found]
        fallback = None
        if missing:
            payloads, fallback = self._fetch(version, kind, missing)
            for key, payload in zip(missing, payloads):
                found[key] = payload
            # Only answers from Redis are cached: a database answer during an outage is re-read later.
            if cacheable and fallback is None:
                with self._lists_lock:
                    for key, payload in zip(missing, payloads):
                        self._lists[(version, kind, key)] = payload
        return [found[key] for key in keys], fallback

    def _fetch(self, version: str, kind: str, keys: list[str]) -> tuple[list, str | None]:
        if self.redis_available():
            try:
                if kind == "cust":
                    return customer_payloads(version, keys), None
                redis_keys = [list_key(version, kind) if key == "-" else list_key(version, kind, key) for key in keys]
                return redis_store.client.mget(redis_keys), None
            except redis.RedisError as error:
                self._redis_failed(error)
        if kind == "cust":
            return [None] * len(keys), "database"
        return self._database_lists(version, kind, keys), "database"

    def _database_lists(self, version: str, kind: str, keys: list[str]) -> list:
        with db.session() as session:
            rows = dict(
                session.execute(
                    select(RecommendationList.list_key, RecommendationList.payload).where(
                        RecommendationList.model_version == version,
                        RecommendationList.kind == kind,
                        RecommendationList.list_key.in_(keys),
                    )
                ).all()
            )
        return [rows.get(key) for key in keys]


def customer_payloads(version: str, customer_ids: list[str]) -> list[bytes | None]:
    """Packed lists of several customers (None for a customer the version does not know), in one round trip."""
    if len(customer_ids) == 1:
        return [redis_store.command("HGET", customer_bucket_key(version, customer_ids[0]), customer_ids[0])]
    pipeline = redis_store.client.pipeline(transaction=False)
    for customer_id in customer_ids:
        pipeline.hget(customer_bucket_key(version, customer_id), customer_id)
    return pipeline.execute()


reader = ListReader()
