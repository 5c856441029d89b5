"""Re-deriving shards from scratch on the rows a store holds, and comparing them bit for bit with the live ones.

"From scratch" follows Expunge's definition of exactness (docs/architecture.md): the remaining
rows of the shard, each put in the slice the persisted placement gives its subject (its
record in ``row`` placement), trained by a fresh ``Shard`` with the published version's
training settings and resolved model, in a scratch store. Every checkpoint it writes (model,
optimizer state, layout, lineage) is compared with the live checkpoint of the same step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, PlacementIndex
from expunge.orchestrator.config import StorageConfig
from expunge.orchestrator.evidence.exactness import same_bits
from expunge.orchestrator.training.placement import Cell, cell_of_key
from expunge.shards.errors import StorageCorruptError
from expunge.shards.models import model_for
from expunge.shards.rows import RECORD_ID, SUBJECT_DIGEST
from expunge.shards.shard import Shard, ShardManifest
from expunge.shards.training import TrainedState, decode_checkpoint, load_checkpoint, set_deterministic

__all__ = ["Rederived", "ShardExactness", "final_states", "first_difference", "rederive_shard", "rederive_shards"]

log = logging.getLogger(__name__)


class ShardExactness(BaseModel):
    """How one re-derived shard compares with the live one (numbers and keys only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shard: int
    shard_version: int
    exact: bool
    rows: int
    checkpoints_compared: int
    tensors_compared: int
    #: Slices whose stored rows no longer match the record digest their manifest lists (data edited).
    slice_mismatches: tuple[int, ...] = ()
    #: Rows in this shard's slices that the persisted placement puts elsewhere, or whose subject it does not know.
    misplaced_rows: int = 0
    #: Where the first difference is, e.g. ``checkpoint 3 (step 3): model.item_bias``; None when exact.
    first_difference: str | None = None
    seconds: float = 0.0


class Rederived:
    """A re-derived shard: the comparison, and its final state (for scoring; never stored)."""

    def __init__(self, result: ShardExactness, state: TrainedState | None) -> None:
        self.result = result
        self.state = state


def _load(data: bytes) -> dict[str, Any]:
    return decode_checkpoint(data)


def final_states(catalog: Catalog, manifest: EnsembleManifest) -> list[TrainedState]:
    """The live constituents of a published version: each shard's final checkpoint, loaded in this process.

    Raises:
        StorageCorruptError: a shard manifest lists no checkpoint, or a checkpoint is missing.
    """
    model = model_for(manifest.model)
    states = []
    for shard, version in enumerate(manifest.shard_versions):
        checkpoints = catalog.shard_manifest(shard, version).checkpoints
        if not checkpoints:
            raise StorageCorruptError(
                f"shard {shard} manifest v{version} in {catalog.store.uri} lists no checkpoint; retrain into a fresh "
                "storage URI"
            )
        states.append(load_checkpoint(model, catalog.store.get(checkpoints[-1].key)))
    return states


def first_difference(left: Any, right: Any, path: str = "") -> str | None:
    """The path of the first value that differs, or None when equal (tensors: same dtype, shape and bits)."""
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        same = isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor) and same_bits(left, right)
        return None if same else path or "(tensor)"
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        if left.keys() != right.keys():
            return f"{path or '(root)'} (keys differ)"
        for key in left:
            found = first_difference(left[key], right[key], f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        if len(left) != len(right):
            return f"{path or '(root)'} (lengths differ)"
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if left == right else path or "(value)"


def _count_tensors(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_count_tensors(v) for v in value)
    return 0


@contextmanager
def _torch_settings() -> Iterator[None]:
    """A ``Shard`` fixes torch's threads and deterministic mode for the process; give the caller's back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_deterministic(deterministic)


def _records_sha256(table: pa.Table) -> str:
    return hashlib.sha256("\n".join(table.column(RECORD_ID).to_pylist()).encode()).hexdigest()


def _repartition(
    tables: Sequence[pa.Table], manifest: EnsembleManifest, shard: int, placement: PlacementIndex
) -> tuple[list[pa.Table], int]:
    """The shard's rows put in the slices the persisted placement gives them; returns (slices, misplaced rows).

    In subject placement a subject may hold several cells of a shard (its first slice, then
    slices that ingests appended), so a row stays in its slice when the placement lists that
    cell for its subject; any other row is misplaced.
    """
    if manifest.sharding.placement == "row":
        slices = manifest.sharding.slices
        rows = pa.concat_tables(list(tables))
        cells = [cell_of_key(r, manifest.sharding.shards, slices) for r in rows.column(RECORD_ID).to_pylist()]
        target = np.asarray([c.slice if c.shard == shard else -1 for c in cells], dtype=np.int64)
        parts = [rows.filter(pa.array(target == k)).sort_by(RECORD_ID) for k in range(slices)]
        return parts, int((target < 0).sum())
    entries = placement.entries
    parts, misplaced = [], 0
    for k, table in enumerate(tables):
        here = Cell(shard, k)
        placed = np.asarray([here in entries.get(d, {}) for d in table.column(SUBJECT_DIGEST).to_pylist()], bool)
        misplaced += int((~placed).sum())
        parts.append(table.filter(pa.array(placed)).sort_by(RECORD_ID))
    return parts, misplaced


def rederive_shard(catalog: Catalog, manifest: EnsembleManifest, shard: int, scratch: Path) -> Rederived:
    """Train ``shard`` from scratch in ``scratch`` on the rows it holds in ``manifest`` and compare every checkpoint.

    Returns the comparison and the re-derived final state. A live object that is missing, or
    slice rows that no longer match their manifest, make the shard inexact rather than raise.
    Takes about as long as training the one shard; writes only under ``scratch``.
    """
    began = time.perf_counter()
    version = manifest.shard_versions[shard]
    live: ShardManifest = catalog.shard_manifest(shard, version)
    store = catalog.store

    def inexact(reason: str, rows: int = 0, mismatches: tuple[int, ...] = (), misplaced: int = 0) -> Rederived:
        return Rederived(
            ShardExactness(
                shard=shard,
                shard_version=version,
                exact=False,
                rows=rows,
                checkpoints_compared=0,
                tensors_compared=0,
                slice_mismatches=mismatches,
                misplaced_rows=misplaced,
                first_difference=reason,
                seconds=time.perf_counter() - began,
            ),
            None,
        )

    try:
        tables = [pq.read_table(io.BytesIO(store.get(entry.key))) for entry in live.slices]
    except StorageCorruptError as exc:
        return inexact(f"a slice of the live shard is missing ({exc})")
    mismatches = tuple(
        e.index for e, t in zip(live.slices, tables, strict=True) if _records_sha256(t) != e.records_sha256
    )
    parts, misplaced = _repartition(tables, manifest, shard, catalog.read_placement(manifest.placement_key))
    rows = sum(len(t) for t in tables)
    with _torch_settings():
        fresh = Shard(shard, StorageConfig(uri=str(scratch)), manifest.training, manifest.model)
        recorded = [(e.epochs, e.scope) for e in live.slices] if len(parts) == len(live.slices) else None
        fresh.train(parts, recipes=recorded)  # ingested tail slices train as their manifest records
        state = fresh.final_state()
    assert fresh.manifest is not None
    compared = tensors = 0
    difference: str | None = None
    if len(fresh.manifest.checkpoints) != len(live.checkpoints):
        difference = f"{len(live.checkpoints)} live checkpoints, {len(fresh.manifest.checkpoints)} re-derived"
    for mine, theirs in zip(live.checkpoints, fresh.manifest.checkpoints, strict=False):
        if difference:
            break
        try:
            left = _load(store.get(mine.key))
        except StorageCorruptError:
            difference = f"checkpoint {mine.step} ({mine.key}) is missing"
            break
        right = _load(fresh.store.get(theirs.key))
        compared += 1
        tensors += _count_tensors(left)
        found = first_difference(left, right)
        if found:
            difference = f"checkpoint of step {mine.step} ({mine.key}): {found}"
        elif mine.key != theirs.key:
            difference = f"checkpoint of step {mine.step}: key {mine.key} but the re-derived one is {theirs.key}"
    if mismatches and difference is None:
        difference = f"slice(s) {list(mismatches)} no longer hold the rows their manifest lists"
    if misplaced and difference is None:
        difference = f"{misplaced} row(s) sit where the persisted placement does not put them"
    result = ShardExactness(
        shard=shard,
        shard_version=version,
        exact=difference is None,
        rows=rows,
        checkpoints_compared=compared,
        tensors_compared=tensors,
        slice_mismatches=mismatches,
        misplaced_rows=misplaced,
        first_difference=difference,
        seconds=time.perf_counter() - began,
    )
    log.info("shard %d re-derived in %.2fs: %s", shard, result.seconds, "exact" if result.exact else difference)
    return Rederived(result, state)


def rederive_shards(catalog: Catalog, manifest: EnsembleManifest, shards: Sequence[int]) -> dict[int, Rederived]:
    """``rederive_shard`` for each shard, one after another, each in its own temporary folder (removed after)."""
    results = {}
    for shard in sorted(set(shards)):
        with tempfile.TemporaryDirectory(prefix=f"expunge-rederive-{shard:04d}-") as scratch:
            results[shard] = rederive_shard(catalog, manifest, shard, Path(scratch) / "store")
    return results
