"""Loaders that turn MovieLens files, Parquet files or generated data into canonical rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from orchestrator.config import DataConfig, SyntheticRatingsConfig
from orchestrator.errors import DataValidationError
from shards.rows import FEATURES, ITEM_ID, LABEL, RATING, RECORD_ID, SUBJECT_ID, validate_rows

__all__ = [
    "load_movielens",
    "load_parquet",
    "load_rows",
    "split_rows",
    "synthetic_ratings",
    "synthetic_tabular",
    "validate_rows",
]

log = logging.getLogger(__name__)


def _canonical_ratings(users: pa.Array, items: pa.Array, ratings: pa.Array, record_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            RECORD_ID: pc.cast(record_ids, pa.string()),
            SUBJECT_ID: pc.cast(users, pa.string()),
            ITEM_ID: pc.cast(items, pa.int64()),
            RATING: pc.cast(ratings, pa.float32()),
        }
    )


def load_movielens(path: str | Path) -> pa.Table:
    """MovieLens ratings: GroupLens ``u.data`` (no header) or the RecBole ``.inter`` layout (header row)."""
    file = Path(path)
    if not file.is_file():
        raise DataValidationError(str(file), [f"file {str(file)!r} does not exist"])
    with file.open() as handle:
        first = handle.readline()
    has_header = "user_id" in first
    options = pacsv.ReadOptions(
        column_names=None if has_header else ["user_id", "item_id", "rating", "timestamp"],
        skip_rows=1 if has_header else 0,
        autogenerate_column_names=False,
    )
    if has_header:
        options = pacsv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"], skip_rows=1)
    try:
        raw = pacsv.read_csv(file, read_options=options, parse_options=pacsv.ParseOptions(delimiter="\t"))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataValidationError(str(file), [f"not a tab-separated MovieLens ratings file: {exc}"]) from exc
    users, items = raw.column("user_id"), raw.column("item_id")
    record_ids = pc.binary_join_element_wise(
        pc.cast(users, pa.string()),
        pc.cast(items, pa.string()),
        pc.cast(pc.cast(raw.column("timestamp"), pa.int64()), pa.string()),
        ":",
    )
    table = _canonical_ratings(users, items, raw.column("rating"), record_ids)
    return validate_rows(table, str(file))


def load_parquet(
    path: str | Path, columns: dict[str, str] | None = None, feature_columns: tuple[str, ...] = (), task: str = "rating"
) -> pa.Table:
    """Any Parquet file; ``columns`` maps canonical names (record_id, subject_id, ...) to file columns."""
    file = Path(path)
    if not file.is_file():
        raise DataValidationError(str(file), [f"file {str(file)!r} does not exist"])
    raw = pq.read_table(file)
    mapping = dict(columns or {})
    problems = [
        f"mapped column {src!r} (for {dst}) is not in the file; found {raw.column_names}"
        for dst, src in mapping.items()
        if src not in raw.column_names
    ]
    problems += [f"feature column {c!r} is not in the file" for c in feature_columns if c not in raw.column_names]
    if problems:
        raise DataValidationError(str(file), problems)
    renamed = {src: dst for dst, src in mapping.items()}
    table = raw.rename_columns([renamed.get(c, c) for c in raw.column_names])
    if feature_columns:
        matrix = np.column_stack([raw.column(c).to_numpy(zero_copy_only=False) for c in feature_columns]).astype(
            np.float32
        )
        table = table.append_column(
            FEATURES, pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), len(feature_columns))
        )
    for name, kind in ((RECORD_ID, pa.string()), (SUBJECT_ID, pa.string())):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, pc.cast(table.column(name), kind))
    return validate_rows(table, str(file), task)


def synthetic_ratings(config: SyntheticRatingsConfig = SyntheticRatingsConfig()) -> pa.Table:
    """Deterministic ratings in [1, 5] from latent user and item factors plus noise."""
    rng = np.random.default_rng(config.seed)
    user_factors = rng.normal(0.0, 1.0, (config.users, config.latent_dim))
    item_factors = rng.normal(0.0, 1.0, (config.items, config.latent_dim))
    item_bias = rng.normal(0.0, 0.5, config.items)
    users, items, ratings = [], [], []
    for user in range(config.users):
        chosen = rng.choice(config.items, size=config.ratings_per_user, replace=False)
        raw = 3.5 + item_bias[chosen] + user_factors[user] @ item_factors[chosen].T / np.sqrt(config.latent_dim)
        raw += rng.normal(0.0, config.noise, len(chosen))
        users.extend([user] * len(chosen))
        items.extend(chosen.tolist())
        ratings.extend(np.clip(np.round(raw), 1, 5).tolist())
    record_ids = [f"u{u}-i{i}" for u, i in zip(users, items, strict=True)]
    return _canonical_ratings(
        pa.array([f"user-{u}" for u in users]), pa.array(items), pa.array(ratings), pa.array(record_ids)
    )


def synthetic_tabular(
    subjects: int = 60, rows_per_subject: int = 5, features: int = 8, classes: int = 2, seed: int = 0
) -> pa.Table:
    """Deterministic tabular classification rows (labels from a random linear rule)."""
    rng = np.random.default_rng(seed)
    n = subjects * rows_per_subject
    x = rng.normal(0.0, 1.0, (n, features)).astype(np.float32)
    labels = np.argmax(x @ rng.normal(0.0, 1.0, (features, classes)), axis=1)
    return pa.table(
        {
            RECORD_ID: [f"rec-{i:06d}" for i in range(n)],
            SUBJECT_ID: [f"person-{i // rows_per_subject}" for i in range(n)],
            FEATURES: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), features),
            LABEL: pa.array(labels.astype(np.int64)),
        }
    )


def split_rows(table: pa.Table, test_fraction: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Seeded random row split into (train, test)."""
    if test_fraction <= 0:
        return table, table.slice(0, 0)
    mask = np.random.default_rng(seed).random(len(table)) < test_fraction
    return table.filter(pa.array(~mask)), table.filter(pa.array(mask))


def load_rows(config: DataConfig, task: str = "rating") -> tuple[pa.Table, pa.Table]:
    """The rows a job config names, split into (train, test)."""
    if config.source == "synthetic":
        rows = validate_rows(synthetic_ratings(config.synthetic), "synthetic data", task)
    elif config.source == "movielens":
        rows = load_movielens(config.path or "")
    else:
        rows = load_parquet(config.path or "", config.columns, config.feature_columns, task)
    return split_rows(rows, config.test_fraction, config.split_seed)
