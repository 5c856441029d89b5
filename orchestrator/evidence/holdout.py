"""The audit's held-out rows (``evidence.audit_holdout``): a Parquet file or folder, or a MovieLens file, read once.

Two shapes, as the setting names them:

- **Parquet** (a file starting with ``PAR1``, or a folder of ``*.parquet``): canonical column
  names (``record_id``, ``subject_id``, and ``item_id``/``rating`` or ``features``/``label``);
  other columns are left out. Without a ``record_id`` column each row gets ``holdout-<n>``
  (the audit never uses it beyond telling rows apart).
- **MovieLens ratings**: any layout ``expunge train`` reads (``expunge.shards.movielens``, the
  one reader: ``u.data``, ``ratings.dat``, RecBole ``.inter``, ``ratings.csv``), with record ids
  ``user:item:timestamp`` as training makes them.

Subject ids are put in canonical form by the identity rule (``validate_rows``). The rows are
cached by path and by every file's size and modification time, so an erasure reads them once
and a changed file is read again.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from expunge.orchestrator.errors import ConfigError
from expunge.shards.errors import DataValidationError
from expunge.shards.movielens import load_movielens
from expunge.shards.rows import FEATURES, ITEM_ID, LABEL, RATING, RECORD_ID, SUBJECT_ID, validate_rows

__all__ = ["SETTING", "holdout_rows"]

log = logging.getLogger(__name__)

#: The setting's name, as every error about it says.
SETTING = "evidence.audit_holdout"
_CANONICAL = (RECORD_ID, SUBJECT_ID, ITEM_ID, RATING, FEATURES, LABEL)


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
    try:
        return load_movielens(path)
    except DataValidationError as exc:
        unread = any(
            p.startswith(("unknown ratings layout", "cannot be read", "holds no ratings")) for p in exc.problems
        )
        why = "is neither Parquet nor a MovieLens ratings file" if unread else "holds rows the audit cannot use"
        raise _unusable(path, why + ":\n" + "\n".join(f"  - {p}" for p in exc.problems)) from exc
