"""Loaders that turn MovieLens files, Parquet files or generated data into canonical rows."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from expunge.orchestrator.config import DataConfig, StorageConfig, SyntheticRatingsConfig
from expunge.orchestrator.errors import DataValidationError, StorageUnavailableError
from expunge.orchestrator.training.streaming import RowBatches, parquet_batches
from expunge.shards.movielens import MOVIELENS_LAYOUTS, load_movielens
from expunge.shards.rows import FEATURES, ITEM_ID, LABEL, RATING, RECORD_ID, SUBJECT_ID, validate_rows
from expunge.shards.store import ObjectStore

__all__ = [
    "BATCH_FORMATS",
    "MOVIELENS_LAYOUTS",
    "load_batch",
    "load_movielens",
    "load_parquet",
    "load_rows",
    "parquet_stream",
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


def _feature_matrix(raw: pa.Table, feature_columns: tuple[str, ...]) -> tuple[pa.Array | None, list[str]]:
    problems: list[str] = []
    for name in feature_columns:
        column = raw.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            problems.append(f"feature column {name!r} is stored as text; store it as numbers")
        elif not (
            pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)
        ):
            problems.append(f"feature column {name!r} has type {column.type}; store it as numbers")
        elif column.null_count:
            problems.append(f"feature column {name!r} has {column.null_count} null value(s)")
    if problems:
        return None, problems
    matrix = np.column_stack([raw.column(c).to_numpy() for c in feature_columns]).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), len(feature_columns)), []


def load_parquet(
    path: str | Path, columns: dict[str, str] | None = None, feature_columns: tuple[str, ...] = (), task: str = "rating"
) -> pa.Table:
    """Any Parquet file; ``columns`` maps canonical names (record_id, subject_id, ...) to file columns."""
    file = Path(path)
    if file.is_dir():
        raise DataValidationError(
            str(file), [f"{str(file)!r} is a folder: give the ratings file inside it (e.g. u.data or ml-100k.inter)"]
        )
    if not file.is_file():
        raise DataValidationError(
            str(file),
            [
                f"file {str(file)!r} does not exist (looked for {str(file.resolve())!r}; a relative path (data.path, --data) is read from the current folder)"
            ],
        )
    return validate_rows(_mapped(pq.read_table(file), str(file), columns, feature_columns, task), str(file), task)


def _file_columns(columns: dict[str, str] | None, feature_columns: tuple[str, ...], task: str) -> dict[str, str]:
    """Canonical column -> the file column it is read from, for the rows of ``task``.

    The feature vector is built from ``feature_columns`` when they are given, so it is read from
    no single column then.
    """
    mapping = dict(columns or {})
    targets = (ITEM_ID, RATING) if task == "rating" else (FEATURES, LABEL)
    names = [name for name in (RECORD_ID, SUBJECT_ID, *targets) if not (name == FEATURES and feature_columns)]
    return {name: mapping.get(name, name) for name in names}


def _mapped(
    raw: pa.Table,
    source: str,
    columns: dict[str, str] | None,
    feature_columns: tuple[str, ...],
    task: str = "rating",
) -> pa.Table:
    """The canonical columns of ``task``, read from ``raw`` by name, and the feature vector (no validation).

    Column order in the file does not matter and any other column is left out. A column the
    rows of ``task`` need that the file lacks (under its canonical name or its ``data.columns``
    name) is refused here, naming the file's own columns and the ``data.columns`` mapping.
    """
    mapping = dict(columns or {})
    found = raw.column_names
    problems = [
        f"mapped column {src!r} (for {dst}) is not in the file; found {found}; fix data.columns in the config"
        for dst, src in mapping.items()
        if src not in found
    ]
    problems += [f"feature column {c!r} is not in the file; found {found}" for c in feature_columns if c not in found]
    unmapped = [
        name
        for name, src in _file_columns(columns, feature_columns, task).items()
        if name not in mapping and src not in found
    ]
    if unmapped:
        problems.append(_missing_columns(unmapped, found, columns, feature_columns, task))
    if problems:
        raise DataValidationError(source, problems)
    picked = {
        name: raw.column(src)
        for name, src in _file_columns(columns, feature_columns, task).items()
        if src in raw.column_names
    }
    if feature_columns:
        features, problems = _feature_matrix(raw, feature_columns)
        if problems:
            raise DataValidationError(source, problems)
        picked[FEATURES] = features
    return pa.table(picked) if picked else raw.select([])


def _missing_columns(
    missing: list[str], found: list[str], columns: dict[str, str] | None, feature_columns: tuple[str, ...], task: str
) -> str:
    """The problem of a file that lacks canonical columns: what the store reads, what the file has, and the fix."""
    needed = list(_file_columns(columns, feature_columns, task))
    if feature_columns:
        needed.append(f"features from {list(feature_columns)}")
    example = ", ".join(f"{name}: <file column>" for name in missing)
    return (
        f"missing column(s) {missing}; found {found} (a {task} store reads {', '.join(needed)}); name the file's "
        f"columns in the config's data.columns, e.g. data: {{columns: {{{example}}}}}"
    )


def _require_columns(path: Path, columns: dict[str, str] | None, feature_columns: tuple[str, ...], task: str) -> None:
    """Every Parquet file under ``path`` holds the columns ``task`` reads, in any order; one error lists each gap.

    Only each file's footer is read. Files may order their columns differently and hold others.
    """
    needed = [*_file_columns(columns, feature_columns, task).values(), *feature_columns]
    try:
        files = sorted(ds.dataset(str(path), format="parquet").files)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(str(path), [f"cannot be read as Parquet: {exc}"]) from exc
    problems = []
    for file in files:
        try:
            found = pq.read_schema(file).names
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{file} cannot be read as Parquet: {exc}")
            continue
        missing = [name for name in dict.fromkeys(needed) if name not in found]
        if missing:
            problems.append(f"{file} lacks column(s) {missing}; it has {found}; map the file's columns in data.columns")
    if problems:
        raise DataValidationError(str(path), problems)


def parquet_stream(
    config: DataConfig, batch_rows: int = 1 << 17, task: str | None = None
) -> tuple[RowBatches, pa.Table]:
    """A Parquet file or folder (``data.path``) as re-iterable training batches, and its held-out rows.

    Columns are read by name: a folder's files may order them differently and hold others
    (left out); the columns ``task`` needs that any file lacks are listed in one
    ``DataValidationError`` before anything is read. Each batch is mapped like ``load_parquet``
    and split like ``split_rows`` (the split depends on each row's record id alone, so batch by
    batch it is the same split); validation is left to ``Coordinator.train_stream``, which names
    the batch's rows in its errors. Only the held-out rows (``data.test_fraction`` of them) are
    read into memory, for evaluation. ``task``: the model's (``task_of``); None guesses it from
    ``data.feature_columns`` (classification when given).
    """
    task = task or ("classification" if config.feature_columns else "rating")
    path = Path(config.path or "")
    if not path.exists():
        raise DataValidationError(
            str(path),
            [
                f"{str(path)!r} does not exist (looked for {str(path.resolve())!r}; a relative path (data.path, --data) is read from the current folder)"
            ],
        )
    _require_columns(path, config.columns, config.feature_columns, task)
    read = parquet_batches(str(path), batch_rows)

    def mapped() -> Iterator[pa.Table]:
        for raw in read():
            yield _mapped(raw, str(path), config.columns, config.feature_columns, task)

    def batches() -> Iterator[pa.Table]:
        for rows in mapped():
            yield split_rows(rows, config.test_fraction, config.split_seed)[0]

    held_out = (
        [split_rows(rows, config.test_fraction, config.split_seed)[1] for rows in mapped()]
        if config.test_fraction > 0
        else []
    )
    try:
        # Files may store a column with different widths (int32 here, int64 there): widen to one type.
        return batches, pa.concat_tables(held_out, promote_options="permissive") if held_out else pa.table({})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataValidationError(str(path), [f"the files store a column with incompatible types: {exc}"]) from exc


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
    """Split rows into (train, test) by a keyed hash of each row's ``record_id``.

    A row is held out when ``blake2b(record_id, key="expunge/split/<seed>")``, read as a
    number in [0, 1), is below ``test_fraction``. The choice depends on the row's own record
    id and the seed only, never on its position or on the other rows, so training from
    scratch on the file without a person gives everyone else exactly the same split (and
    adding rows never moves existing ones between train and test). Erasure and its
    from-scratch reference therefore compare models on the same held-out rows.
    """
    if test_fraction <= 0:
        return table, table.slice(0, 0)
    key = f"expunge/split/{seed}".encode()
    record_ids = pc.cast(table.column(RECORD_ID), pa.string()).to_pylist()
    hashes = b"".join(hashlib.blake2b(r.encode(), digest_size=8, key=key).digest() for r in record_ids)
    held_out = np.frombuffer(hashes, dtype=">u8") < np.uint64(min(int(test_fraction * 2.0**64), 2**64 - 1))
    return table.filter(pa.array(~held_out)), table.filter(pa.array(held_out))


def load_rows(config: DataConfig, task: str = "rating") -> tuple[pa.Table, pa.Table]:
    """The rows a job config names, split into (train, test) by ``split_rows``."""
    if config.source == "synthetic":
        rows = validate_rows(synthetic_ratings(config.synthetic), "synthetic data", task)
    elif config.source == "movielens":
        rows = load_movielens(config.path or "")
    else:
        rows = load_parquet(config.path or "", config.columns, config.feature_columns, task)
    return split_rows(rows, config.test_fraction, config.split_seed)


#: What ``expunge ingest --format`` accepts: ``auto`` tells Parquet (its magic bytes) from a MovieLens file.
BATCH_FORMATS = ("auto", "parquet", "movielens")
#: Where ``load_batch`` reads a batch from, for its errors.
_BATCH_SOURCES = "a Parquet file, a folder of Parquet files, a MovieLens ratings file, or s3://bucket/prefix"


def load_batch(
    source: str,
    data: DataConfig | None = None,
    task: str = "rating",
    *,
    data_format: str = "auto",
    storage: StorageConfig | None = None,
) -> pa.Table:
    """The rows of an ingest batch in canonical columns; validation is left to the caller (``validate_rows``).

    ``source``: a Parquet file, a folder of Parquet files (read file by file, each with its own
    schema; names starting with ``.`` or ``_`` are skipped, as pyarrow does), a MovieLens ratings
    file in any layout of ``MOVIELENS_LAYOUTS`` (record ids ``user:item:timestamp``, so the same
    rating has the same id in every file and layout), or ``s3://bucket/prefix`` of Parquet files
    (``s3://bucket/key.parquet`` for one), reached with ``storage``'s endpoint, region, profile
    and timeouts and the AWS environment's credentials, as the store is. Parquet columns are read
    by name through ``data.columns`` and ``data.feature_columns`` (None: canonical names), as
    ``expunge train`` reads them.

    Raises:
        DataValidationError: a missing source (with where it looked), no rows, a file that is not
            Parquet, columns a file lacks (named with the file's own and the data.columns hint), or files
            that disagree on columns or their types;
            every problem in one error.
        StorageUnavailableError: the S3 endpoint cannot be reached or refuses the credentials.
    """
    if data_format not in BATCH_FORMATS:
        raise DataValidationError(source, [f"unknown format {data_format!r}; use one of {list(BATCH_FORMATS)}"])
    scheme = source.split("://", 1)[0] if "://" in source else ""
    if scheme in ("s3", "s3a"):
        if data_format == "movielens":
            raise DataValidationError(
                source, ["MovieLens files are read from a local path: copy the file here, or convert it to Parquet"]
            )
        files = _s3_parquet_files(source, storage or StorageConfig())
    elif scheme not in ("", "file"):
        raise DataValidationError(source, [f"{scheme}:// is not a source ingest reads; give {_BATCH_SOURCES}"])
    else:
        path = Path(source.removeprefix("file://"))
        if not path.exists():
            raise DataValidationError(
                source,
                [
                    f"{source!r} does not exist (looked for {str(path.resolve())!r}; a relative path is read from "
                    f"the current folder); give {_BATCH_SOURCES}"
                ],
            )
        # auto: Parquet by its magic bytes, or by its name (a damaged .parquet file is not a ratings file)
        looks_parquet = path.is_file() and (path.suffix.lower() in (".parquet", ".parq") or _is_parquet(path))
        if path.is_file() and (data_format == "movielens" or (data_format == "auto" and not looks_parquet)):
            return load_movielens(path)  # record ids made from the file's own fields: the same each time
        if path.is_dir() and data_format == "movielens":
            raise DataValidationError(source, ["is a folder; --format movielens reads one ratings file"])
        files = _local_parquet_files(path)
    return _batch_rows(files, source, data or DataConfig(), task)


def _is_parquet(file: Path) -> bool:
    with file.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def _read_parquet(name: str, data: bytes | Path) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data) if isinstance(data, bytes) else data)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(name, [f"cannot be read as Parquet: {exc}"]) from exc


def _local_parquet_files(path: Path) -> list[tuple[str, pa.Table]]:
    try:
        files = sorted(ds.dataset(str(path), format="parquet").files)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(str(path), [f"cannot be read as Parquet: {exc}"]) from exc
    return [(file, _read_parquet(file, Path(file))) for file in files]


def _s3_parquet_files(source: str, storage: StorageConfig) -> list[tuple[str, pa.Table]]:
    """Every Parquet object under an ``s3://`` prefix (or the one object a ``.parquet`` key names), in key order.

    Raises:
        StorageUnavailableError: the endpoint does not answer; the message names the batch, not a store.
    """
    try:
        return _s3_objects(source, storage)
    except StorageUnavailableError as exc:
        raise StorageUnavailableError(
            f"cannot read the ingest batch at {source} (the data source, not the store): {exc}"
        ) from exc


def _s3_objects(source: str, storage: StorageConfig) -> list[tuple[str, pa.Table]]:
    uri = source.rstrip("/")
    parent, _, name = uri.rpartition("/")
    if name.endswith(".parquet") and "/" in uri.split("://", 1)[1]:
        store = ObjectStore(storage.model_copy(update={"uri": parent}))
        if not store.exists(name):
            raise DataValidationError(source, [f"no object {uri} (check the bucket and key); give {_BATCH_SOURCES}"])
        keys = [name]
    else:
        store = ObjectStore(storage.model_copy(update={"uri": uri}))
        # Spark's _SUCCESS, hidden .crc files: skipped as pyarrow skips them in a local folder.
        keys = [k for k in store.list_keys("") if not any(part[:1] in "._" for part in k.split("/"))]
        if not keys:
            raise DataValidationError(source, [f"no Parquet files under {uri} (check the bucket and prefix)"])
    return [(store.url(key), _read_parquet(store.url(key), store.get(key))) for key in keys]


def _ids_as_text(rows: pa.Table) -> pa.Table:
    """Integer and dictionary-encoded id columns as text, so files that store ids differently concatenate.

    An integer id is its decimal text under the identity rule, so this changes no id; floats
    and other types are left for ``validate_rows`` to refuse.
    """
    for name in (RECORD_ID, SUBJECT_ID):
        if name not in rows.column_names:
            continue
        column = rows.column(name)
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if pa.types.is_integer(column.type) or pa.types.is_large_string(column.type):
            column = pc.cast(column, pa.string())
        rows = rows.set_column(rows.column_names.index(name), name, column)
    return rows


def _batch_rows(files: list[tuple[str, pa.Table]], source: str, data: DataConfig, task: str) -> pa.Table:
    """The files' rows, mapped to canonical columns and concatenated; one error lists every file's problems."""
    if not files:
        raise DataValidationError(source, [f"holds no Parquet files; give {_BATCH_SOURCES}"])
    problems: list[str] = []
    mapped: list[tuple[str, pa.Table]] = []
    for name, raw in files:
        try:
            mapped.append((name, _ids_as_text(_mapped(raw, name, data.columns, data.feature_columns, task))))
        except DataValidationError as exc:
            problems += [f"{name}: {p}" if len(files) > 1 else p for p in exc.problems]
    held = set().union(*(t.column_names for _, t in mapped))
    for name, table in mapped:
        lacking = sorted(held - set(table.column_names))
        if lacking:
            problems.append(f"{name} lacks column(s) {lacking} that other files of the batch hold")
    if problems:
        raise DataValidationError(source, problems)
    try:
        # Files may store a column with different widths (int32 here, int64 there): widen to one type.
        rows = pa.concat_tables([t for _, t in mapped], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        differing = [c for c in sorted(held) if len({str(t.schema.field(c).type) for _, t in mapped}) > 1]
        raise DataValidationError(
            source,
            [
                f"the files store column {c!r} with different types ("
                + ", ".join(f"{n}: {t.schema.field(c).type}" for n, t in mapped)
                + "); store it with one type in every file"
                for c in differing
            ]
            or [f"the files cannot be read as one table: {exc}"],
        ) from exc
    if len(rows) == 0:
        raise DataValidationError(source, [f"holds no rows; give {_BATCH_SOURCES} with new rows"])
    return rows
