"""Canonical row columns shared by loaders, placement and shards, and the check every row passes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from expunge.shards.config import AnyModelConfig, ItemStatsConfig, MFConfig, MLPConfig
from expunge.shards.errors import DataValidationError
from expunge.shards.identity import canonical_subject_column

__all__ = [
    "FEATURES",
    "ITEM_ID",
    "LABEL",
    "RATING",
    "RATING_RANGE",
    "RECORD_ID",
    "SUBJECT_DIGEST",
    "SUBJECT_ID",
    "numeric_values",
    "string_array",
    "validate_rows",
]

RECORD_ID = "record_id"  # unique per row, string
SUBJECT_ID = "subject_id"  # the person a GDPR request names, string; shard data only
SUBJECT_DIGEST = "subject_digest"  # HMAC of subject_id, written at placement time
ITEM_ID = "item_id"  # ratings: catalogue item index, int64
RATING = "rating"  # ratings: target, float32
FEATURES = "features"  # tabular: list<float32> of fixed width
LABEL = "label"  # tabular: class index, int64

# Ratings outside this closed range are refused. It spans the MovieLens scales: 1..5 stars
# (100K, 1M) and half stars 0.5..5 (10M, "latest"); the train/demo RMSE clips to [1, 5].
RATING_RANGE = (0.5, 5.0)

_TARGETS = {"rating": (ITEM_ID, RATING), "classification": (FEATURES, LABEL)}
# A decimal number as text (what a CSV column holds when one cell is not a number).
_NUMBER_TEXT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"

Column: TypeAlias = "pa.Array | pa.ChunkedArray"


def numeric_values(column: Column, dtype: npt.DTypeLike) -> np.ndarray:
    """A numeric column's values as a new, writable 1-D numpy array of ``dtype`` (length ``len(column)``).

    The values ``column.to_numpy().astype(dtype)`` gives, read from the column's data buffers.
    pyarrow's ``to_numpy`` asks pandas whether the values are a pandas object, and its first
    such question in a process imports pandas (about 0.23 s of CPU): a shard process that only
    trains on ratings has no other use for pandas.

    Raises:
        ValueError: the column holds nulls, or its type is not an integer or floating-point type.
    """
    parts: list[np.ndarray] = []
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        kind = chunk.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise ValueError(f"numeric_values needs an integer or floating-point column, not {kind}")
        if chunk.null_count:
            raise ValueError(f"numeric_values needs a column without nulls; this one has {chunk.null_count}")
        if len(chunk) == 0:
            continue
        code = "f" if pa.types.is_floating(kind) else "i" if pa.types.is_signed_integer(kind) else "u"
        width = kind.bit_width // 8
        stored = np.dtype(f"{code}{width}")  # Arrow buffers are in native byte order
        parts.append(np.frombuffer(chunk.buffers()[1], dtype=stored, count=len(chunk), offset=chunk.offset * width))
    if not parts:
        return np.empty(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)  # concatenate copies: the result is writable


def string_array(values: Sequence[str]) -> pa.Array:
    """An Arrow ``string`` array of ``values``, in order: what ``pa.array(values, type=pa.string())`` gives.

    Built from its offsets and bytes: ``pa.array`` asks pandas whether ``values`` is a pandas
    object, and its first such question in a process imports pandas (about 0.23 s of CPU).

    Raises:
        ValueError: the values' UTF-8 bytes exceed 2 GiB (the ``string`` type's offsets are 32-bit).
    """
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(data) for data in encoded], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} bytes of strings exceed what one Arrow string array holds")
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def first_repeat(values: Column) -> tuple[int, int]:
    """Row positions (0-based) of the first value seen twice, and of its first occurrence; (-1, -1) if none.

    Errors name duplicates by position, never by value: a record id may embed a subject id
    (MovieLens record ids are ``user:item:timestamp``).
    """
    seen: dict[object, int] = {}
    for position, value in enumerate(values.to_pylist()):
        if value in seen:
            return seen[value], position
        seen[value] = position
    return -1, -1


def _first(mask: Column) -> int:
    """Index of the first true value of a boolean mask (nulls count as false)."""
    return int(pc.index(pc.fill_null(mask, False), True).as_py())


def _numeric_problems(name: str, column: Column, integers: bool) -> list[str]:
    """Type problems of a column that must hold numbers (whole numbers when ``integers``)."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        not_numbers = pc.invert(pc.match_substring_regex(column, _NUMBER_TEXT))
        if pc.any(pc.fill_null(not_numbers, False)).as_py():
            row = _first(not_numbers)
            example = f"e.g. {str(column[row].as_py())[:20]!r} at row {row}"
        else:
            example = "every value is a number written as text"
        return [f"{name} is stored as text ({example}); store it as numbers"]
    if pa.types.is_boolean(kind) or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return [f"{name} has type {kind}; store it as {'integers' if integers else 'numbers'}"]
    if integers and pa.types.is_floating(kind):
        return [f"{name} holds floating-point numbers ({kind}); store it as integers"]
    return []


def _finite_problems(name: str, values: Column, rows: Column | None = None) -> list[str]:
    """NaN and +/-Inf counts of a floating-point column (``rows`` maps values to row numbers)."""
    if not pa.types.is_floating(values.type):
        return []
    values = pc.cast(values, pa.float64())  # float16 has no NaN kernels; the cast keeps NaN and Inf
    problems = []
    for what, mask in (("NaN", pc.is_nan(values)), ("infinite (+/-Inf)", pc.is_inf(values))):
        count = pc.sum(pc.fill_null(mask, False)).as_py() or 0
        if count:
            first = _first(mask)
            row = rows[first].as_py() if rows is not None else first
            problems.append(f"{count} {name} value(s) are {what}, first at row {row}")
    return problems


def _range_problems(name: str, values: Column, low: float | None, high: float | None, expected: str) -> list[str]:
    """Count of finite values outside [low, high] (``None``: unbounded on that side)."""
    checks = []
    # Compared as float64: every integer width (uint64 too) and float16 have kernels there.
    compared = pc.cast(values, pa.float64(), safe=False)
    if low is not None:
        checks.append(pc.less(compared, low))
    if high is not None:
        checks.append(pc.greater(compared, high))
    if not checks or len(values) == 0:
        return []
    mask = checks[0] if len(checks) == 1 else pc.or_(checks[0], checks[1])
    if pa.types.is_floating(values.type):
        mask = pc.and_(mask, pc.is_finite(compared))
    count = pc.sum(pc.fill_null(mask, False)).as_py() or 0
    if not count:
        return []
    first = _first(mask)
    return [f"{count} {name} value(s) are outside {expected}, e.g. {values[first].as_py()!r} at row {first}"]


def _feature_problems(features: Column, num_features: int | None) -> list[str]:
    kind = features.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return [f"{FEATURES} has type {kind}; it must be a list of numbers per row"]
    problems = _numeric_problems(f"{FEATURES} (its elements)", pc.list_flatten(features), integers=False)
    if problems:
        return problems
    values, parents = pc.list_flatten(features), pc.list_parent_indices(features)
    if values.null_count:
        problems.append(
            f"{values.null_count} {FEATURES} element(s) are null, first at row {parents[_first(pc.is_null(values))].as_py()}"
        )
    problems += _finite_problems(FEATURES, values, parents)
    widths = pc.unique(pc.list_value_length(features).drop_null()).to_pylist()
    if len(widths) > 1:
        problems.append(f"{FEATURES} rows have different widths {sorted(widths)[:5]}; every row needs the same number")
    elif num_features is not None and widths and widths[0] != num_features:
        problems.append(
            f"{FEATURES} rows have {widths[0]} value(s) but the model expects training.model.num_features="
            f"{num_features}; map the right feature columns or change the model"
        )
    return problems


def _target_problems(
    table: pa.Table, task: str, model: AnyModelConfig | None, rating_range: tuple[float, float]
) -> list[str]:
    problems: list[str] = []
    names = table.column_names
    if task == "rating":
        if ITEM_ID in names:
            items = table.column(ITEM_ID)
            num_items = model.num_items if isinstance(model, MFConfig | ItemStatsConfig) and model.num_items else None
            top_item = None if num_items is None else num_items - 1
            expected = f"[0, training.model.num_items={num_items})" if num_items else ">= 0"
            problems += _numeric_problems(ITEM_ID, items, integers=True) or _range_problems(
                ITEM_ID, items, 0, top_item, expected
            )
        if RATING in names:
            ratings = table.column(RATING)
            low, high = rating_range
            problems += _numeric_problems(RATING, ratings, integers=False) or [
                *_finite_problems(RATING, ratings),
                *_range_problems(RATING, ratings, low, high, f"the rating range [{low:g}, {high:g}]"),
            ]
    else:
        if LABEL in names:
            labels = table.column(LABEL)
            num_classes = model.num_classes if isinstance(model, MLPConfig) else None
            top_label = None if num_classes is None else num_classes - 1
            expected = f"[0, training.model.num_classes={num_classes})" if num_classes else ">= 0"
            problems += _numeric_problems(LABEL, labels, integers=True) or _range_problems(
                LABEL, labels, 0, top_label, f"{expected} (labels are class indexes)"
            )
        if FEATURES in names:
            num_features = model.num_features if isinstance(model, MLPConfig) else None
            problems += _feature_problems(table.column(FEATURES), num_features)
    return problems


def validate_rows(
    table: pa.Table,
    source: str,
    task: str = "rating",
    *,
    model: AnyModelConfig | None = None,
    rating_range: tuple[float, float] = RATING_RANGE,
) -> pa.Table:
    """Check canonical columns and their values; raise one ``DataValidationError`` listing every problem.

    Checked: required columns; unique, non-null record ids; subject ids under the identity
    rule (``expunge.shards.identity``: no floats, no empty ids); numeric targets stored as numbers,
    with no NaN or +/-Inf; ratings within ``rating_range``; item ids and labels >= 0 and,
    when ``model`` is given, below ``num_items`` / ``num_classes``; features of one width
    (``num_features``). Every check is vectorised (pyarrow.compute).

    Returns the rows with subject ids in canonical form and integer record ids as text;
    nothing else changes.
    """
    problems: list[str] = []
    required = (RECORD_ID, SUBJECT_ID, *_TARGETS[task])
    missing = [c for c in required if c not in table.column_names]
    if missing:
        problems.append(f"missing column(s) {missing}; found {table.column_names}")
    if RECORD_ID in table.column_names:
        ids = table.column(RECORD_ID)
        if pa.types.is_dictionary(ids.type):
            ids = pc.cast(ids, ids.type.value_type)
        if pa.types.is_integer(ids.type) or pa.types.is_large_string(ids.type):
            ids = pc.cast(ids, pa.string())
        if pa.types.is_string(ids.type):
            table = table.set_column(table.column_names.index(RECORD_ID), RECORD_ID, ids)
        else:
            problems.append(f"{RECORD_ID} has type {ids.type}; store record ids as text or integers")
        if ids.null_count:
            problems.append(f"{ids.null_count} row(s) have a null record_id")
        duplicates = len(ids) - len(pc.unique(ids)) if pa.types.is_string(ids.type) else 0
        if duplicates:
            first, again = first_repeat(ids)
            problems.append(
                f"{duplicates} duplicate record_id value(s), e.g. rows {first} and {again} (0-based) share one; "
                "record ids must be unique"
            )
    if SUBJECT_ID in table.column_names:
        subjects = table.column(SUBJECT_ID)
        if subjects.null_count:
            problems.append(f"{subjects.null_count} row(s) have a null subject_id; every row needs its data subject")
        canonical, subject_problems = canonical_subject_column(subjects, SUBJECT_ID)
        problems += subject_problems
        table = table.set_column(table.column_names.index(SUBJECT_ID), SUBJECT_ID, canonical)
    for column in _TARGETS[task]:
        if column in table.column_names and table.column(column).null_count:
            problems.append(f"{table.column(column).null_count} row(s) have a null {column}")
    problems += _target_problems(table, task, model, rating_range)
    if problems:
        raise DataValidationError(source, problems)
    return table
