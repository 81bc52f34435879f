"""The map step of recommendation training: paid order lines read per customer-id shard into compact arrays.

A shard reads only its own customers' lines (like the scoring and for-you shards), drops the unusable
ones, and keeps what the models need as numbers: per line its basket and item, per basket its time, a
tie-break key and its customer's tier, per item its revenue and its number of distinct customers. An
order belongs to one customer, so shards of disjoint customer ranges hold disjoint orders: their
arrays concatenate and their per-item sums add up exactly (`TrainingData`). The shop's lines are
never one DataFrame, so memory grows with the shard and with the compact arrays, not with the text of
every line.

Baskets are ordered by time, then by a hash of the order id: the same order whatever the shards, the
database or the order it returns rows in, so the time-ordered splits (and what selection chooses)
do not depend on how the work was cut.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import pandas as pd
import scipy.sparse as sp

from services.recommend.store import CUSTOMER_TIERS
from shared.extensions import db
from shared.frames import id_range_condition, read_frame, text_hashes
from shared.quarantine import merge_reports, quarantine_order_lines

EPOCH = np.datetime64("1970-01-01")

ORDER_LINES_SQL = """
SELECT o.order_id, o.customer_id, o.placed_at, l.sku, l.quantity * l.unit_price AS revenue
FROM order_lines l JOIN orders o ON o.order_id = l.order_id
WHERE o.status = 'paid' AND o.placed_at <= :as_of
"""
# A shard's lines on PostgreSQL: each order's lines by the order_lines primary key. Given the join above, the
# planner hashes the shard's orders and scans every order line of the shop (at 1M customers, 2.4 s in three
# processes for a shard of 25,000 customers, 40 shards a night); this reads only the shard's lines (0.4-0.9 s
# in one process). OFFSET 0 keeps the subquery from being flattened back into that join.
SHARD_ORDER_LINES_SQL = """
SELECT o.order_id, o.customer_id, o.placed_at, l.sku, l.quantity * l.unit_price AS revenue
FROM orders o CROSS JOIN LATERAL (
    SELECT sku, quantity, unit_price FROM order_lines WHERE order_lines.order_id = o.order_id OFFSET 0
) l
WHERE o.status = 'paid' AND o.placed_at <= :as_of
"""
TIERS_SQL = "SELECT customer_id, tier FROM customer_scores WHERE run_id = :run_id"


def load_order_lines(engine, as_of: datetime, low: str | None = None, high: str | None = None) -> pd.DataFrame:
    """Paid order lines up to as_of (of the customers with ids in [low, high), when given)."""
    condition, params = id_range_condition("o.customer_id", low, high)
    # SQLite has no LATERAL, and its planner already walks the primary key per order.
    by_order = bool(params) and engine.dialect.name == "postgresql"
    query = (SHARD_ORDER_LINES_SQL if by_order else ORDER_LINES_SQL) + condition
    return read_frame(engine, query, {"as_of": as_of, **params}, date_columns=("placed_at",),
                      dtypes={"order_id": str, "customer_id": str, "sku": str}, date_errors="coerce")


def customer_tiers(run_id: str, customer_ids: pd.Index, low: str | None = None,
                   high: str | None = None) -> np.ndarray:
    """Each customer's tier in scoring run `run_id` (regular when unscored); ids in [low, high) when given."""
    condition, params = id_range_condition("customer_id", low, high)
    tiers = read_frame(db.engine, TIERS_SQL + condition, {"run_id": run_id, **params},
                       dtypes={"customer_id": str, "tier": str})
    tier_of_customer = pd.Series(tiers["tier"].to_numpy(), index=tiers["customer_id"])
    return tier_of_customer.reindex(customer_ids).fillna("regular").to_numpy()


def catalogue_key(skus: pd.Index) -> str:
    """A fingerprint of the catalogue's item order: a shard's item numbers hold only for the same one."""
    return hashlib.sha1("\n".join(skus.tolist()).encode()).hexdigest()


@dataclass(frozen=True)
class LineShard:
    """One customer-id range's usable paid lines as compact arrays (what `TrainingData` joins).

    line_baskets / line_items: per line, its basket (0..baskets-1 within the shard) and catalogue item;
    basket_times (days since 1970), basket_keys (hash of the order id, the tie-break), basket_tiers (index
    in CUSTOMER_TIERS of the customer's tier in `tier_run`; unscored customers count as regular),
    basket_customers (index in customer_ids, the shard's customers with a usable line, sorted);
    revenue and item_customers: per catalogue item, the lines' revenue and the distinct customers;
    catalogue_key: the fingerprint of the catalogue whose item numbers the shard uses; id_range: the
    customer-id range [low, high) it was read for (None, None: every customer).
    """

    line_baskets: np.ndarray
    line_items: np.ndarray
    basket_times: np.ndarray
    basket_keys: np.ndarray
    basket_tiers: np.ndarray
    basket_customers: np.ndarray
    revenue: np.ndarray
    item_customers: np.ndarray
    customer_ids: np.ndarray
    tier_run: str
    catalogue_key: str
    quarantine: dict
    id_range: tuple = (None, None)

    @property
    def order_lines(self) -> int:
        return len(self.line_items)

    @property
    def customers(self) -> int:
        return len(self.customer_ids)

    def line_customers(self) -> np.ndarray:
        """Per line, its customer (index in customer_ids): what the for-you shards build histories from."""
        return self.basket_customers[self.line_baskets]

    def to_bytes(self) -> bytes:
        """numpy's own format (no pickle), so the reader loads it with allow_pickle=False."""
        buffer = io.BytesIO()
        np.savez(buffer, line_baskets=self.line_baskets, line_items=self.line_items, basket_times=self.basket_times,
                 basket_keys=self.basket_keys, basket_tiers=self.basket_tiers,
                 basket_customers=self.basket_customers, revenue=self.revenue,
                 item_customers=self.item_customers, customer_ids=np.asarray(self.customer_ids, dtype=str),
                 tier_run=np.str_(self.tier_run), catalogue_key=np.str_(self.catalogue_key),
                 quarantine=np.str_(json.dumps(self.quarantine)), id_range=np.str_(json.dumps(list(self.id_range))))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> LineShard:
        """The shard written by to_bytes."""
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            return cls(arrays["line_baskets"], arrays["line_items"], arrays["basket_times"], arrays["basket_keys"],
                       arrays["basket_tiers"], arrays["basket_customers"], arrays["revenue"],
                       arrays["item_customers"], arrays["customer_ids"], str(arrays["tier_run"]),
                       str(arrays["catalogue_key"]), json.loads(str(arrays["quarantine"])),
                       tuple(json.loads(str(arrays["id_range"]))))


def line_shard_of(lines: pd.DataFrame, skus: pd.Index, tier_of_customers) -> LineShard:
    """The compact shard of already-quarantined lines; `tier_of_customers(ids)` gives their tier names.

    Lines of skus the catalogue does not hold are left out, as are their customers when that leaves
    them without a line.
    """
    items = skus.get_indexer(lines["sku"])
    known = items >= 0
    lines, items = lines[known], items[known].astype(np.int32)
    basket_codes, order_ids = pd.factorize(lines["order_id"], sort=False)
    customer_codes, customer_ids = pd.factorize(lines["customer_id"], sort=True)
    n_baskets, n_items = len(order_ids), len(skus)
    placed_days = (lines["placed_at"].to_numpy(dtype="datetime64[s]") - EPOCH) / np.timedelta64(1, "D")
    basket_times = np.zeros(n_baskets)
    basket_times[basket_codes] = placed_days
    basket_customers = np.zeros(n_baskets, dtype=np.int64)
    basket_customers[basket_codes] = customer_codes
    tier_index = {tier: code for code, tier in enumerate(CUSTOMER_TIERS)}
    customer_tier_codes = np.fromiter((tier_index.get(tier, 0) for tier in tier_of_customers(customer_ids)),
                                      dtype=np.uint8, count=len(customer_ids))
    # Distinct (customer, item) pairs: a customer who bought an item twice counts once. Sorted and compared
    # with their neighbours rather than np.unique, whose hash table took 10 s for 9M lines where a sort takes 1.
    customer_item_pairs = np.sort(customer_codes.astype(np.int64) * n_items + items)
    first_of_pair = np.ones(len(customer_item_pairs), dtype=bool)
    first_of_pair[1:] = customer_item_pairs[1:] != customer_item_pairs[:-1]
    customer_item_pairs = customer_item_pairs[first_of_pair]
    return LineShard(
        line_baskets=basket_codes.astype(np.int32),
        line_items=items,
        basket_times=basket_times,
        basket_keys=text_hashes(order_ids),
        basket_tiers=customer_tier_codes[basket_customers],
        basket_customers=basket_customers.astype(np.int32),
        revenue=np.bincount(items, weights=lines["revenue"].to_numpy(dtype=float), minlength=n_items),
        item_customers=np.bincount(customer_item_pairs % n_items, minlength=n_items).astype(np.int64),
        customer_ids=customer_ids.to_numpy(dtype=str),
        tier_run="",
        catalogue_key=catalogue_key(skus),
        quarantine={},
    )


def read_line_shard(as_of: datetime, min_date: datetime, skus: pd.Index, tier_run: str,
                    low: str | None = None, high: str | None = None) -> LineShard:
    """The usable paid lines up to as_of of the customers with ids in [low, high), as a compact shard."""
    lines, quarantined = quarantine_order_lines(load_order_lines(db.engine, as_of, low, high), as_of, min_date)

    def tier_of_customers(customer_ids: pd.Index) -> np.ndarray:
        if not tier_run:
            return np.full(len(customer_ids), CUSTOMER_TIERS[0], dtype=object)
        return customer_tiers(tier_run, customer_ids, low, high)

    return replace(line_shard_of(lines, skus, tier_of_customers), tier_run=tier_run, quarantine=quarantined,
                   id_range=(low, high))


class LineShardsDisagree(RuntimeError):
    """Line shards read next to different published runs (the pointer moved during the run): retrain."""


class TrainingData:
    """The basket matrix and shop-wide sums the models take, joined from the line shards."""

    def __init__(self, shards: list[LineShard], n_items: int) -> None:
        tier_runs = {shard.tier_run for shard in shards}
        if len(tier_runs) > 1:
            raise LineShardsDisagree(f"the line shards read tiers of different runs: {sorted(tier_runs)}")
        self.tier_run = tier_runs.pop() if tier_runs else ""
        self.n_items = n_items
        basket_offsets = np.cumsum([0] + [len(shard.basket_times) for shard in shards])
        times = np.concatenate([shard.basket_times for shard in shards] + [np.zeros(0)])
        keys = np.concatenate([shard.basket_keys for shard in shards] + [np.zeros(0, dtype=np.uint64)])
        # Time first, the order id's hash second: one order whatever the shards and the database.
        order = np.lexsort((keys, times))
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        rows = np.concatenate([position[shard.line_baskets.astype(np.int64) + offset]
                               for shard, offset in zip(shards, basket_offsets)] + [np.zeros(0, dtype=np.int64)])
        items = np.concatenate([shard.line_items for shard in shards] + [np.zeros(0, dtype=np.int32)])
        presence = np.ones(len(items), dtype=np.float32)
        self.baskets = sp.csr_matrix((presence, (rows, items)), shape=(len(order), n_items))
        self.baskets.sum_duplicates()
        self.baskets.data[:] = 1.0
        # Selection and evaluation read this matrix through views, not copies (binary_baskets,
        # rows_in_order): read-only, so a model that wrote into its input would fail here, not skew the others.
        for array in (self.baskets.data, self.baskets.indices, self.baskets.indptr):
            array.flags.writeable = False
        self.basket_times = times[order]
        tiers = np.concatenate([shard.basket_tiers for shard in shards] + [np.zeros(0, dtype=np.uint8)])
        self.basket_tiers = tiers[order]
        self.revenue = sum((shard.revenue for shard in shards), np.zeros(n_items))
        self.item_customers = sum((shard.item_customers for shard in shards), np.zeros(n_items, dtype=np.int64))
        self.n_customers = sum(shard.customers for shard in shards)
        self.order_lines = sum(shard.order_lines for shard in shards)
        self.quarantine = merge_reports(None, None)
        for shard in shards:
            self.quarantine = merge_reports(self.quarantine, shard.quarantine)
