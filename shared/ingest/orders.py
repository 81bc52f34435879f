"""The one way orders are written: whole orders column-wise (`OrderChunk`), compared with what is
stored by content hash (shared.ingest.order_identity), new ones inserted with their placeholders, status
moves applied. PostgreSQL (shared.ingest.postgres) and SQLite (shared.ingest.sqlite) write the rows;
REST batches, the CSV import and the demo shop all go through `shared.ingest.bulk.write_orders`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.ingest.common import STATUS_TRANSITIONS, utcnow
from shared.ingest.order_identity import iso_seconds, order_hashes, order_totals


@dataclass
class OrderChunk:
    """Whole orders to write, column-wise: each order a span [start, end) of adjacent line rows.

    Row columns cover every line row; order columns cover the orders to store (for a CSV chunk: the
    first run of each valid order id), in order. `source` is the caller's own record of where the rows
    came from (the importer's RowBatch, for its rejects file); the writer never reads it.
    """

    source: object = None
    row_count: int = 0
    # Per row.
    order_ids: pa.Array | None = None
    customer_ids: pa.Array | None = None
    skus: pa.Array | None = None
    quantities: np.ndarray | None = None
    prices: np.ndarray | None = None
    price_copy_texts: pa.Array | None = None
    line_numbers: np.ndarray | None = None
    # Per order to store.
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order_order_ids: pa.Array | None = None
    order_customer_ids: pa.Array | None = None
    order_placed_texts: pa.Array | None = None
    order_statuses: pa.Array | None = None
    order_totals: list[float] = field(default_factory=list)
    order_hashes: list[str] = field(default_factory=list)
    # Later runs of an order id already seen in this chunk: applied after the first run is written.
    repeats: list[tuple[int, int, str, str]] = field(default_factory=list)  # (start, end, hash, status)
    rejects: list[tuple[int, str, list]] = field(default_factory=list)
    accepted_rows: int = 0

    @property
    def order_count(self) -> int:
        return len(self.starts)

    def order_lists(self) -> tuple[list, list, list]:
        """(order ids, content hashes, statuses) of the orders to store, as Python lists."""
        return self.order_order_ids.to_pylist(), self.order_hashes, self.order_statuses.to_pylist()


@dataclass
class LineColumns:
    """Order lines column-wise, grouped by order (the lines of order k are rows starts[k]:ends[k])."""

    skus: list[str]
    quantities: np.ndarray
    prices: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def chunk_of_orders(order_ids: list[str], customer_ids: list[str], placed_micros: np.ndarray, statuses: list[str],
                    lines: LineColumns, source: object = None) -> OrderChunk:
    """An OrderChunk of distinct, valid orders given as Python/numpy columns (REST batches, the demo shop).

    placed_micros are naive UTC microseconds since 1970; the hashes and totals are order_identity's.
    """
    counts = lines.ends - lines.starts
    prices = np.asarray(lines.prices, dtype=np.float64)
    price_texts = pa.array([repr(price) for price in prices.tolist()], pa.string())
    skus = pa.array(lines.skus, pa.string())
    customers = pa.array(customer_ids, pa.string())
    quantities = np.asarray(lines.quantities, dtype=np.int64)
    return OrderChunk(
        source=source,
        row_count=len(lines.skus),
        order_ids=pa.array(np.repeat(np.array(order_ids, dtype=object), counts).tolist(), pa.string()),
        customer_ids=pa.array(np.repeat(np.array(customer_ids, dtype=object), counts).tolist(), pa.string()),
        skus=skus,
        quantities=quantities,
        prices=prices,
        price_copy_texts=price_texts,
        line_numbers=np.arange(len(lines.skus), dtype=np.int64) - np.repeat(lines.starts, counts) + 1,
        starts=np.asarray(lines.starts, dtype=np.int64),
        ends=np.asarray(lines.ends, dtype=np.int64),
        order_order_ids=pa.array(order_ids, pa.string()),
        order_customer_ids=customers,
        order_placed_texts=storage_texts(placed_micros),
        order_statuses=pa.array(statuses, pa.string()),
        order_totals=order_totals(quantities, prices, lines.starts, lines.ends),
        order_hashes=order_hashes(customers, placed_micros, skus, quantities, prices, price_texts,
                                  lines.starts, lines.ends),
    )


def storage_texts(micros: np.ndarray) -> pa.Array:
    """Each time as 'YYYY-MM-DD HH:MM:SS.ffffff': how SQLAlchemy stores DateTime on SQLite, and
    plain timestamp input for PostgreSQL."""
    date_and_time = pc.utf8_replace_slice(iso_seconds(micros), 10, 11, " ")
    fraction = pc.utf8_lpad(pc.cast(pa.array(np.mod(micros, 1_000_000)), pa.string()), 6, "0")
    return pc.binary_join_element_wise(date_and_time, fraction, ".")


@dataclass(frozen=True)
class OrderRejection:
    """An order the writer would not store: rows [start, end) of the chunk, and why."""

    start: int
    end: int
    order_id: str
    # "conflict" (stored with other content), "status" (no such status move), "rejected_earlier".
    kind: str
    stored_status: str | None = None
    status: str | None = None

    def file_reason(self) -> str:
        """The reason as the import's rejects file words it."""
        if self.kind == "conflict":
            return (f"conflict: order {self.order_id} is already stored with a different customer, time or lines "
                    "(if it was listed earlier in this file: the lines of one order must be on adjacent rows)")
        if self.kind == "status":
            return f"cannot move order {self.order_id} from {self.stored_status} to {self.status}"
        return f"order {self.order_id} was rejected earlier in this file"

    def record_errors(self) -> dict:
        """The errors as a REST batch answer gives them for the record."""
        if self.kind == "status":
            return {"status": [f"cannot move an order from {self.stored_status} to {self.status}"]}
        return {"order_id": ["an order with this id and different customer, time or lines already exists"]}


@dataclass
class OrderWriteOutcome:
    """What writing a chunk did: counts, rejected orders, and the customers whose aggregates changed."""

    chunk: OrderChunk
    rejects: list[OrderRejection]
    created: int
    updated: int
    unchanged: int
    touched: set[str]
    # PostgreSQL: whether the chunk went straight into the tables (every order new).
    copied_directly: bool = False
    created_lines: int = 0


class OrderWriterBase:
    """Classifies a chunk's orders against what is stored, then writes new orders and status moves."""

    copied_directly = False

    def __init__(self, connection, chunk: OrderChunk) -> None:
        self.connection = connection
        self.chunk = chunk
        self.cursor = connection.cursor()
        self.now = utcnow()
        self.rejects: list[OrderRejection] = []
        self.created = 0
        self.created_lines = 0
        self.updated = 0
        self.unchanged = 0
        self.touched: set[str] = set()
        self.status_moves: dict[str, list[str]] = {}

    def write(self) -> OrderWriteOutcome:
        """Classify, insert and update the chunk's orders (in the caller's transaction)."""
        chunk = self.chunk
        self.begin()
        current: dict[str, tuple[str, str]] = {}
        if chunk.order_count and self.insert_all_new():
            # Every order was new: stored as is, nothing to compare.
            self.count_created(np.arange(chunk.order_count))
            self.touched.update(pc.unique(chunk.order_customer_ids).to_pylist())
            if chunk.repeats:
                order_ids, hashes, statuses = chunk.order_lists()
                current = {order_id: (content_hash, status)
                           for order_id, content_hash, status in zip(order_ids, hashes, statuses)}
        elif chunk.order_count:
            current = self._classify_and_insert()
        for start, end, content_hash, status in chunk.repeats:
            order_id = chunk.order_ids[start].as_py()
            previous = current.get(order_id)
            if previous is None:
                self.rejects.append(OrderRejection(start, end, order_id, "rejected_earlier"))
                continue
            if self._classify(order_id, chunk.customer_ids[start].as_py(), content_hash, status, previous,
                              start, end):
                current[order_id] = (content_hash, status)
        for status, order_ids in self.status_moves.items():
            self.update_status(status, order_ids)
        self.cursor.close()
        return OrderWriteOutcome(chunk, self.rejects, self.created, self.updated, self.unchanged, self.touched,
                                 self.copied_directly, self.created_lines)

    def count_created(self, positions: np.ndarray) -> None:
        """Count the given orders (positions in the chunk's order columns) and their lines as created."""
        self.created += len(positions)
        self.created_lines += int((self.chunk.ends[positions] - self.chunk.starts[positions]).sum())

    def insert_all_new(self) -> bool:
        """Store every order of the chunk if none is stored yet; False (nothing written) otherwise."""
        return False

    def _classify_and_insert(self) -> dict[str, tuple[str, str]]:
        """Compare each order with its stored version, insert the new ones; returns what each id is stored as."""
        chunk = self.chunk
        stored = self.stored_orders()
        order_ids, hashes, statuses = chunk.order_lists()
        customer_ids = chunk.order_customer_ids.to_pylist()
        new_positions: list[int] = []
        # What each order id is stored as once this chunk is written: later runs compare with it.
        current: dict[str, tuple[str, str]] = dict(stored)
        for position, order_id in enumerate(order_ids):
            content_hash, status = hashes[position], statuses[position]
            previous = stored.get(order_id)
            if previous is None:
                new_positions.append(position)
                current[order_id] = (content_hash, status)
                self.touched.add(customer_ids[position])
                continue
            start, end = int(chunk.starts[position]), int(chunk.ends[position])
            if self._classify(order_id, customer_ids[position], content_hash, status, previous, start, end):
                current[order_id] = (content_hash, status)
        if new_positions:
            self.insert_new(np.array(new_positions, dtype=np.int64))
        return current

    def _classify(self, order_id, customer_id, content_hash, status, previous, start, end) -> bool:
        """Compare an order with its stored version; True on a status move."""
        stored_hash, stored_status = previous
        if stored_hash != content_hash:
            self.rejects.append(OrderRejection(start, end, order_id, "conflict"))
            return False
        if stored_status == status:
            self.unchanged += 1
            return False
        if (stored_status, status) in STATUS_TRANSITIONS:
            self.status_moves.setdefault(status, []).append(order_id)
            self.touched.add(customer_id)
            self.updated += 1
            return True
        self.rejects.append(OrderRejection(start, end, order_id, "status", stored_status, status))
        return False

    def _row_positions(self, positions: np.ndarray) -> np.ndarray:
        """Row indexes of the lines of the given orders (positions in the chunk's order columns)."""
        chunk = self.chunk
        starts, ends = chunk.starts[positions], chunk.ends[positions]
        lengths = ends - starts
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + offsets
