"""Canonical row columns shared by loaders, placement and shards."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import DataValidationError

__all__ = [
    "FEATURES",
    "ITEM_ID",
    "LABEL",
    "RATING",
    "RECORD_ID",
    "SUBJECT_DIGEST",
    "SUBJECT_ID",
    "validate_rows",
]

RECORD_ID = "record_id"  # unique per row, string
SUBJECT_ID = "subject_id"  # the person a GDPR request names, string; shard data only
SUBJECT_DIGEST = "subject_digest"  # HMAC of subject_id, written at placement time
ITEM_ID = "item_id"  # ratings: catalogue item index, int64
RATING = "rating"  # ratings: target, float32
FEATURES = "features"  # tabular: list<float32> of fixed width
LABEL = "label"  # tabular: class index, int64


_TARGETS = {"rating": (ITEM_ID, RATING), "classification": (FEATURES, LABEL)}


def validate_rows(table: pa.Table, source: str, task: str = "rating") -> pa.Table:
    """Check canonical columns; raise one ``DataValidationError`` listing every problem."""
    problems: list[str] = []
    required = (RECORD_ID, SUBJECT_ID, *_TARGETS[task])
    missing = [c for c in required if c not in table.column_names]
    if missing:
        problems.append(f"missing column(s) {missing}; found {table.column_names}")
    if RECORD_ID in table.column_names:
        ids = table.column(RECORD_ID)
        if ids.null_count:
            problems.append(f"{ids.null_count} row(s) have a null record_id")
        duplicates = len(ids) - len(pc.unique(ids))
        if duplicates:
            counts = pc.value_counts(ids)
            example = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
            problems.append(f"{duplicates} duplicate record_id value(s), e.g. {example!r}; record ids must be unique")
    if SUBJECT_ID in table.column_names and table.column(SUBJECT_ID).null_count:
        problems.append(
            f"{table.column(SUBJECT_ID).null_count} row(s) have a null subject_id; every row needs its data subject"
        )
    for column in _TARGETS[task]:
        if column in table.column_names and table.column(column).null_count:
            problems.append(f"{table.column(column).null_count} row(s) have a null {column}")
    if task == "rating" and ITEM_ID in table.column_names and len(table) and pc.min(table.column(ITEM_ID)).as_py() < 0:
        problems.append("item_id values must be >= 0")
    if problems:
        raise DataValidationError(source, problems)
    return table
