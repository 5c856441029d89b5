"""The audit's held-out rows (``evidence.audit_holdout``): a Parquet file or folder, or a MovieLens file, read once.

The orchestrator may not import the job recipes (``expunge.pipelines.datasets``), so this is a
small reader of its own, for the two shapes the setting names:

- **Parquet** (a file starting with ``PAR1``, or a folder of ``*.parquet``): canonical column
  names (``record_id``, ``subject_id``, and ``item_id``/``rating`` or ``features``/``label``);
  other columns are left out. Without a ``record_id`` column each row gets ``holdout-<n>``
  (the audit never uses it beyond telling rows apart).
- **MovieLens ratings**: GroupLens ``u.data`` (tab-separated user, item, rating, timestamp; no
  header), MovieLens 1M/10M ``ratings.dat`` (``::``), or a header file (tab- or
  comma-separated: RecBole ``.inter``, ``ratings.csv``) naming user, item and rating columns.
  Record ids are ``user:item:timestamp`` as ``expunge train`` makes them.

Subject ids are put in canonical form by the identity rule (``validate_rows``). The rows are
cached by path and by every file's size and modification time, so an erasure reads them once
and a changed file is read again.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from expunge.orchestrator.errors import ConfigError
from expunge.shards.errors import DataValidationError
from expunge.shards.rows import FEATURES, ITEM_ID, LABEL, RATING, RECORD_ID, SUBJECT_ID, validate_rows

__all__ = ["SETTING", "holdout_rows"]

log = logging.getLogger(__name__)

#: The setting's name, as every error about it says.
SETTING = "evidence.audit_holdout"
_CANONICAL = (RECORD_ID, SUBJECT_ID, ITEM_ID, RATING, FEATURES, LABEL)
# Header names (lower case, ":type" suffix removed) -> role, as the training loader reads them.
_HEADER_ROLES = {
    "user_id": "user",
    "userid": "user",
    "item_id": "item",
    "itemid": "item",
    "movie_id": "item",
    "movieid": "item",
    "rating": "rating",
    "timestamp": "timestamp",
}


def _unusable(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{SETTING} = {str(path)!r} {why}; name held-out rows no version was trained on (a Parquet file or "
        "folder with canonical columns, or a MovieLens ratings file), or leave the setting out to skip the audit"
    )


def _stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def holdout_rows(path: str) -> pa.Table:
    """The held-out rows at ``path``: canonical columns, subject ids canonical, validated for their task.

    Returns a table with ``record_id``, ``subject_id`` and the target columns of the task its
    columns show (ratings: ``item_id``, ``rating``; classification: ``features``, ``label``).
    Read once per content: a second call for unchanged files returns the cached table.

    Raises:
        ConfigError: naming ``evidence.audit_holdout``: the path does not exist, cannot be read,
            holds no rows, or its rows fail validation (each problem listed).
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise _unusable(file, f"does not exist (looked for {str(file.resolve())!r})")
    return _read_cached(str(file.resolve()), _stamp(file.resolve()))


@lru_cache(maxsize=4)
def _read_cached(path: str, stamp: tuple[tuple[str, int, int], ...]) -> pa.Table:
    del stamp  # part of the cache key only: changed files are read again
    file = Path(path)
    try:
        rows = _parquet(file) if file.is_dir() or _magic(file) == b"PAR1" else _movielens(file)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise _unusable(file, f"cannot be read ({type(exc).__name__}: {str(exc)[:300]})") from exc
    if len(rows) == 0:
        raise _unusable(file, "holds no rows")
    task = "rating" if RATING in rows.column_names or ITEM_ID in rows.column_names else "classification"
    try:
        rows = validate_rows(rows, f"{SETTING} {path!r}", task)
    except DataValidationError as exc:
        raise _unusable(
            file, "holds rows the audit cannot use:\n" + "\n".join(f"  - {p}" for p in exc.problems)
        ) from exc
    log.info("audit hold-out: %d row(s) read from %s", len(rows), path)
    return rows


def _magic(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(4)


def _parquet(path: Path) -> pa.Table:
    dataset = ds.dataset(str(path), format="parquet")
    names = set(dataset.schema.names)
    table = dataset.to_table(columns=[c for c in _CANONICAL if c in names])
    if RECORD_ID not in table.column_names:
        table = table.add_column(0, RECORD_ID, pa.array([f"holdout-{n}" for n in range(len(table))], pa.string()))
    return table


def _movielens(path: Path) -> pa.Table:
    with path.open("rb") as handle:
        first = handle.readline().removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n").decode("utf-8")
    if "::" in first:  # pyarrow splits on one character: "a::b" is the fields "a", "", "b"
        delimiter, skip, width, roles = ":", 0, 7, {"user": 0, "item": 2, "rating": 4, "timestamp": 6}
    else:
        delimiter = "\t" if "\t" in first else ","
        names = [f.strip().strip('"').split(":")[0].strip().lower() for f in first.split(delimiter)]
        roles = {_HEADER_ROLES[n]: i for i, n in reversed(list(enumerate(names))) if n in _HEADER_ROLES}
        skip, width = (1, len(names)) if roles else (0, len(names))
        if not roles and delimiter == "\t" and len(names) == 4:  # GroupLens u.data
            roles = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
        if any(r not in roles for r in ("user", "item", "rating")):
            raise _unusable(path, "is neither Parquet nor a MovieLens ratings file with user, item and rating columns")
    columns = [f"field_{i}" for i in range(width)]
    wanted = {role: columns[index] for role, index in roles.items()}
    text = [wanted[r] for r in ("user", "timestamp") if r in wanted]
    raw = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=columns, skip_rows=skip),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(wanted.values()), column_types=dict.fromkeys(text, pa.string()), null_values=[""]
        ),
    )
    users = raw.column(wanted["user"])
    parts = [users, pc.cast(raw.column(wanted["item"]), pa.string())]
    if "timestamp" in wanted:
        parts.append(raw.column(wanted["timestamp"]))
    return pa.table(
        {
            RECORD_ID: pc.binary_join_element_wise(*parts, ":"),
            SUBJECT_ID: users,
            ITEM_ID: pc.cast(raw.column(wanted["item"]), pa.int64()),
            RATING: pc.cast(raw.column(wanted["rating"]), pa.float32()),
        }
    )
