"""The identity of an order: its content hash and its total, written once for every writer of orders.

An order is keyed by order_id and compared by content: the sha256 of what may never change about it
(its customer, its time to the second, its lines with prices to the cent). REST upserts, the CSV import
and the demo shop all store and compare this hash, so a re-sent order is recognised whichever way it
came. `order_content_hash` is the definition; `order_hashes` builds the identical bytes column-wise
(one sha256 per order) for bulk writers, and the tests compare both on awkward input.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from json.encoder import encode_basestring_ascii

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.ingest.arrays import matches
from shared.ingest.common import to_naive_utc

# Strings whose JSON form is the string in double quotes (printable ASCII but '"' and '\').
JSON_PLAIN_STRING = r'^[\x20\x21\x23-\x5b\x5d-\x7e]*$'
# Prices whose "%.2f" form is the text itself, padded to two decimals.
TWO_DECIMAL_PRICE = r"^(0|[1-9][0-9]{0,7})(\.[0-9]{1,2})?$"


def order_content_hash(customer_id: str, placed_at: datetime, lines: list[dict]) -> str:
    """sha256 of what may never change about an order: its customer, its time and its lines."""
    canonical = {
        "customer_id": customer_id,
        "placed_at": to_naive_utc(placed_at).isoformat(timespec="seconds"),
        "lines": [[line["sku"], int(line["quantity"]), f"{float(line['unit_price']):.2f}"] for line in lines],
    }
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def order_total(lines: list[dict]) -> float:
    """Sum of quantity times unit price, rounded to cents."""
    return round(sum(int(line["quantity"]) * float(line["unit_price"]) for line in lines), 2)


def canonical_order_hash(customer_id: str, placed_at_iso: str, skus, quantities, price_texts) -> str:
    """The same sha256 as order_content_hash, built without intermediate dicts.

    order_content_hash hashes json.dumps({"customer_id", "placed_at", "lines": [[sku, quantity,
    "price.2f"]]}, separators=(",", ":")); this writes the identical bytes directly (the tests
    compare both on awkward input). The import builds the same bytes column-wise (order_hashes).
    """
    lines = ",".join(
        [
            f'[{encode_basestring_ascii(sku)},{quantity},"{price}"]'
            for sku, quantity, price in zip(skus, quantities, price_texts)
        ]
    )
    canonical = (
        f'{{"customer_id":{encode_basestring_ascii(customer_id)},'
        f'"placed_at":"{placed_at_iso}","lines":[{lines}]}}'
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def json_strings(values: pa.Array) -> pa.Array:
    """Each string as json.dumps writes it (ASCII, escaped), like encode_basestring_ascii."""
    plain = matches(values, JSON_PLAIN_STRING)
    if plain.all():
        return pc.binary_join_element_wise('"', values, '"', "")
    return pa.array([encode_basestring_ascii(value) for value in values.to_pylist()], pa.string())


def order_hashes(customer_ids: pa.Array, placed_micros: np.ndarray, skus: pa.Array, quantities: np.ndarray,
                  prices: np.ndarray, price_texts: pa.StringArray, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """The content hash of each run (canonical_order_hash's bytes, built column-wise; one sha256 per order)."""
    price_2f = two_decimal_texts(price_texts, prices)
    line_json = pc.binary_join_element_wise(
        "[", json_strings(skus), ",", pc.cast(pa.array(quantities), pa.string()), ',"', price_2f, '"]', "")
    offsets = pa.array(np.append(starts, ends[-1] if len(ends) else 0), pa.int32())
    lines_json = pc.binary_join(pa.ListArray.from_arrays(offsets, line_json), ",")
    placed_iso = iso_seconds(placed_micros)
    canonical = pc.binary_join_element_wise(
        '{"customer_id":', json_strings(customer_ids), ',"placed_at":"', placed_iso, '","lines":[', lines_json,
        "]}", "")
    data = memoryview(canonical.buffers()[2]) if len(canonical) else memoryview(b"")
    bounds = np.frombuffer(canonical.buffers()[1], dtype=np.int32, count=len(canonical) + 1,
                           offset=canonical.offset * 4).tolist()
    sha256 = hashlib.sha256
    return [sha256(data[bounds[index]:bounds[index + 1]]).hexdigest() for index in range(len(canonical))]


def iso_seconds(micros: np.ndarray) -> pa.Array:
    """datetime.isoformat(timespec="seconds") of each naive UTC time: whole seconds, rounded down."""
    seconds = np.floor_divide(micros, 1_000_000).astype("datetime64[s]")
    return pa.array(np.datetime_as_string(seconds, unit="s"), pa.string())


def two_decimal_texts(texts: pa.StringArray, prices: np.ndarray) -> pa.Array:
    """f"{price:.2f}" of each price: a plain text with at most two decimals is that text, padded."""
    simple = matches(texts, TWO_DECIMAL_PRICE)
    if simple.all():
        dot = pc.find_substring(texts, ".").to_numpy()
        decimals = np.where(dot < 0, 0, pc.utf8_length(texts).to_numpy() - dot - 1)
        padding = np.array(["", "", ""], dtype=object)[decimals]
        padding[dot < 0] = ".00"
        padding[decimals == 1] = "0"
        return pc.binary_join_element_wise(texts, pa.array(padding, pa.string()), "")
    return pa.array([f"{price:.2f}" for price in prices.tolist()], pa.string())


def order_totals(quantities: np.ndarray, prices: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[float]:
    """round(sum(quantity * price), 2) per run: the products are the same floats as in Python, and the
    builtin sum adds them in order, exactly as shared.ingest.order_total does."""
    products = (quantities.astype(np.float64) * prices).tolist()
    return [round(sum(products[start:end]), 2) for start, end in zip(starts.tolist(), ends.tolist())]
