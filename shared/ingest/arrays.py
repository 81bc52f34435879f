"""Small pyarrow/numpy helpers the column-wise import rules and writers share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def changes(values) -> np.ndarray:
    """For each row but the first: whether its value differs from the row before."""
    if len(values) < 2:
        return np.zeros(0, dtype=bool)
    different = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1))
    return to_numpy_bool(different)


def to_numpy_bool(values) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def string_column(table: pa.Table, position: int) -> pa.StringArray:
    return table.column(position).combine_chunks()


def matches(values: pa.Array, pattern: str) -> np.ndarray:
    return to_numpy_bool(pc.match_substring_regex(values, pattern))
