"""Odd column types get the one typed error (or pass as numbers), never an Arrow error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from expunge.shards.config import MFConfig
from expunge.shards.errors import DataValidationError
from expunge.shards.rows import validate_rows


def _rows(record_id: pa.Array, item_id: pa.Array, rating: pa.Array) -> pa.Table:
    return pa.table({"record_id": record_id, "subject_id": ["u"], "item_id": item_id, "rating": rating})


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (_rows(pa.array([["h1"]]), pa.array([1]), pa.array([3.0])), "record_id has type list"),
        (_rows(pa.array(["a"]), pa.array([2**64 - 1], pa.uint64()), pa.array([3.0])), "item_id value(s) are outside"),
        (_rows(pa.array(["a"]), pa.array([1]), pa.array(np.array([np.nan], np.float16))), "NaN"),
        (_rows(pa.array(["a"]), pa.array([1]), pa.array(np.array([9.0], np.float16))), "rating range"),
    ],
)
def test_odd_types_are_one_typed_error(rows, problem):
    with pytest.raises(DataValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        validate_rows(rows, "the batch", "rating", model=MFConfig(num_items=10))


def test_half_precision_ratings_are_numbers():
    rows = _rows(pa.array(["a"]), pa.array([1]), pa.array(np.array([3.5], np.float16)))
    assert validate_rows(rows, "the batch", "rating", model=MFConfig(num_items=10)).num_rows == 1
