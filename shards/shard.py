"""One shard: its slices in Parquet, its checkpoint history, training and ``retrain_from``."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from expunge.shards.config import AnyModelConfig, StorageConfig, TrainingConfig
from expunge.shards.errors import ConfigError, DataValidationError, StorageCorruptError
from expunge.shards.models import SufficientStatisticsModel, model_for
from expunge.shards.rows import LABEL, RATING, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import TrainedState, accumulate_steps, configure_determinism, load_checkpoint, train_steps

__all__ = [
    "STAGED_SLICE",
    "CheckpointEntry",
    "Shard",
    "ShardManifest",
    "ShardUpdate",
    "SliceEntry",
    "shard_prefix",
]

log = logging.getLogger(__name__)

#: Column of staged training input (``Shard.train_staged``) that names each row's slice (int32).
STAGED_SLICE = "__expunge_slice"


def shard_prefix(shard_id: int) -> str:
    return f"shards/{shard_id:04d}"


class SliceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    key: str
    rows: int
    records_sha256: str
    #: sha256 of the stored Parquet bytes (None in manifests written before it was recorded).
    sha256: str | None = None


class CheckpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    step: int  # 0-based slice index this checkpoint closes
    key: str
    #: sha256 of the stored checkpoint bytes (None in manifests written before it was recorded).
    sha256: str | None = None


class ShardManifest(BaseModel):
    """Versioned bookkeeping of one shard; published with an exclusive create."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int = 1
    shard_id: int
    version: int
    parent_version: int | None
    training_fingerprint: str
    slices: tuple[SliceEntry, ...]
    checkpoints: tuple[CheckpointEntry, ...]
    request_id: str | None = None

    def object_keys(self) -> set[str]:
        return {s.key for s in self.slices} | {c.key for c in self.checkpoints}


class ShardUpdate(BaseModel):
    """What a train or erase produced: a new (not yet ensemble-published) manifest and stats."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shard_id: int
    manifest_version: int
    previous_version: int | None
    rows_removed: int = 0
    slices_retrained: tuple[int, ...] = ()
    restarted_from: str | None = None  # checkpoint key, None = from scratch
    seconds: float = 0.0
    #: CPU time (user + system) of this process during the operation, in seconds.
    cpu_seconds: float = 0.0
    superseded_keys: tuple[str, ...] = ()
    new_keys: tuple[str, ...] = ()


def _records_sha256(table: pa.Table) -> str:
    ids = table.column(RECORD_ID).to_pylist()
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


#: Columns with few distinct values per slice (a subject has many rows): dictionary-encoded.
#: Unique or near-unique columns (record ids, item ids) are not: a dictionary as large as the
#: column only adds bytes. No column statistics: nothing reads them, and min/max of
#: ``subject_id`` would copy ids into the file footer.
_DICTIONARY_COLUMNS = (SUBJECT_ID, SUBJECT_DIGEST, RATING, LABEL)
_SLICE_ZSTD_LEVEL = 9  # ~6% smaller than the default 3 on MovieLens slices; writes stay fast


def _table_bytes(table: pa.Table) -> bytes:
    """Parquet bytes of a slice: lossless (reads back ``equals`` the table), about 25% under plain zstd."""
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=_SLICE_ZSTD_LEVEL,
        use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in table.column_names],
        write_statistics=False,
    )
    return sink.getvalue()


class Shard:
    """Plain class driven in-process by tests and wrapped by ``ShardActor`` under Ray."""

    def __init__(
        self,
        shard_id: int,
        storage: StorageConfig | str,
        training: TrainingConfig,
        model_config: AnyModelConfig,
        manifest_version: int | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.store = ObjectStore(storage)
        self.training = training
        self.model_config = model_config
        self.model = model_for(model_config)
        self.fingerprint = hashlib.sha256(
            (training.fingerprint() + model_config.model_dump_json()).encode()
        ).hexdigest()
        self.manifest: ShardManifest | None = None
        self._final: TrainedState | None = None
        self.calls: list[str] = []
        configure_determinism(training.threads_per_shard)
        if manifest_version is not None:
            self.manifest = self._read_manifest(manifest_version)

    # ----- bookkeeping -------------------------------------------------------------------
    def _manifest_key(self, version: int) -> str:
        return f"{shard_prefix(self.shard_id)}/manifests/{version:08d}.json"

    def _read_manifest(self, version: int) -> ShardManifest:
        manifest = ShardManifest.model_validate_json(self.store.get(self._manifest_key(version)))
        missing = [k for k in sorted(manifest.object_keys()) if not self.store.exists(k)]
        if missing:
            raise StorageCorruptError(
                f"shard {self.shard_id} manifest v{version} references {len(missing)} missing "
                f"object(s), e.g. {self.store.url(missing[0])}. Restore them or retrain into a "
                "fresh storage URI."
            )
        return manifest

    def _next_version(self) -> int:
        existing = self.store.list_keys(f"{shard_prefix(self.shard_id)}/manifests")
        numbers = [int(k.rsplit("/", 1)[1].split(".")[0]) for k in existing]
        return max(numbers, default=0) + 1

    def _checkpoint_key(self, step: int, slices: Sequence[SliceEntry]) -> str:
        text = json.dumps([self.fingerprint, self.shard_id, [s.records_sha256 for s in slices[: step + 1]]])
        digest = hashlib.sha256(text.encode()).hexdigest()[:40]
        return f"{shard_prefix(self.shard_id)}/checkpoints/{step:04d}-{digest}.pt"

    def _write_slice(self, index: int, table: pa.Table) -> SliceEntry:
        records = _records_sha256(table)
        key = f"{shard_prefix(self.shard_id)}/slices/{index:04d}-{records[:40]}.parquet"
        data = _table_bytes(table)
        self.store.put(key, data)
        return SliceEntry(
            index=index, key=key, rows=len(table), records_sha256=records, sha256=hashlib.sha256(data).hexdigest()
        )

    def _read_slice(self, entry: SliceEntry) -> pa.Table:
        return pq.read_table(io.BytesIO(self.store.get(entry.key)))

    def _publish(
        self, slices: list[SliceEntry], checkpoints: list[CheckpointEntry], request_id: str | None
    ) -> ShardManifest:
        manifest = ShardManifest(
            shard_id=self.shard_id,
            version=self._next_version(),
            parent_version=self.manifest.version if self.manifest else None,
            training_fingerprint=self.fingerprint,
            slices=tuple(slices),
            checkpoints=tuple(checkpoints),
            request_id=request_id,
        )
        self.store.create_exclusive(self._manifest_key(manifest.version), manifest.model_dump_json(indent=1).encode())
        return manifest

    def _run(
        self, tables: list[pa.Table], entries: list[SliceEntry], start: TrainedState | None, keep: list[CheckpointEntry]
    ) -> tuple[TrainedState, list[CheckpointEntry]]:
        checkpoints = list(keep)

        def save(step: int, data: bytes) -> None:
            key = self._checkpoint_key(step, entries)
            self.store.put(key, data)
            checkpoints.append(CheckpointEntry(step=step, key=key, sha256=hashlib.sha256(data).hexdigest()))

        lineage = [e.records_sha256 for e in entries]
        if isinstance(self.model, SufficientStatisticsModel):
            state = accumulate_steps(self.model, tables, start, save, lineage=lineage)
        else:
            state = train_steps(self.model, self.training, self.shard_id, tables, start, save, lineage=lineage)
        return state, checkpoints

    # ----- public operations --------------------------------------------------------------
    def ready(self) -> int:
        return self.shard_id

    def train(self, slices: Sequence[pa.Table], request_id: str | None = None) -> ShardUpdate:
        """Train from scratch on ``slices`` (each sorted by record id) and write a new manifest."""
        self.calls.append("train")
        began, cpu = time.perf_counter(), time.process_time()
        tables = [t.sort_by(RECORD_ID) for t in slices]
        entries = [self._write_slice(i, t) for i, t in enumerate(tables)]
        state, checkpoints = self._run(tables, entries, None, [])
        previous = self.manifest
        self.manifest = self._publish(entries, checkpoints, request_id)
        self._final = state
        return ShardUpdate(
            shard_id=self.shard_id,
            manifest_version=self.manifest.version,
            previous_version=previous.version if previous else None,
            slices_retrained=tuple(range(len(tables))),
            seconds=time.perf_counter() - began,
            cpu_seconds=time.process_time() - cpu,
            new_keys=tuple(sorted(self.manifest.object_keys())),
        )

    def train_staged(self, key: str, slices: int, request_id: str | None = None) -> ShardUpdate:
        """``train`` on rows staged in the store under ``key`` (``expunge.orchestrator.training.streaming``).

        The staged Parquet object holds this shard's rows with their ``subject_digest`` and
        slice index (``STAGED_SLICE``) in any order; slice ``k`` is its rows sorted by record
        id, so the result equals ``train`` on the same cells, bit for bit. The staged object
        is left to the caller to delete (it owns the run).

        Raises:
            DataValidationError: two staged rows share a record id (ids must be unique).
            StorageCorruptError: the staged object is missing.
        """
        staged = pq.read_table(io.BytesIO(self.store.get(key)))
        ids = staged.column(RECORD_ID)
        duplicates = len(ids) - len(pc.unique(ids))
        if duplicates:
            counts = pc.value_counts(ids)
            example = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
            raise DataValidationError(
                f"the training rows of shard {self.shard_id}",
                [f"{duplicates} duplicate record_id value(s), e.g. {example!r}; record ids must be unique"],
            )
        cells = staged.column(STAGED_SLICE)
        rows = staged.drop_columns([STAGED_SLICE])
        tables = [rows.filter(pc.equal(cells, k)).sort_by(RECORD_ID).combine_chunks() for k in range(slices)]
        del staged, rows
        return self.train(tables, request_id)

    def erase(self, subject_digests: Sequence[str], first_affected_slice: int, request_id: str) -> ShardUpdate:
        """Delete the subjects' rows and retrain from the checkpoint before the first affected slice."""
        self.calls.append("erase")
        if self.manifest is None:
            raise StorageCorruptError(f"shard {self.shard_id} has no trained state to erase from")
        began, cpu = time.perf_counter(), time.process_time()
        wanted = pa.array(sorted(set(subject_digests)), type=pa.string())
        old = self.manifest
        tables = [self._read_slice(e) for e in old.slices]
        kept = [t.filter(pc.invert(pc.is_in(t.column(SUBJECT_DIGEST), value_set=wanted))) for t in tables]
        changed = [i for i, (t, k) in enumerate(zip(tables, kept, strict=True)) if len(t) != len(k)]
        removed = sum(len(t) - len(k) for t, k in zip(tables, kept, strict=True))
        if not changed:
            return ShardUpdate(shard_id=self.shard_id, manifest_version=old.version, previous_version=old.version)
        # Routing comes from the persisted index; the rows themselves have the last word.
        first = min(first_affected_slice, changed[0])
        entries = [self._write_slice(i, kept[i]) if i in changed else old.slices[i] for i in range(len(kept))]
        keep = [c for c in old.checkpoints if c.step < first]
        start = None
        if first > 0:
            restart = keep[-1]
            start = load_checkpoint(self.model, self.store.get(restart.key))
        state, checkpoints = self._run(kept, entries, start, keep)
        self.manifest = self._publish(entries, checkpoints, request_id)
        self._final = state
        new_keys = self.manifest.object_keys()
        return ShardUpdate(
            shard_id=self.shard_id,
            manifest_version=self.manifest.version,
            previous_version=old.version,
            rows_removed=removed,
            slices_retrained=tuple(range(first, len(kept))),
            restarted_from=keep[-1].key if first > 0 else None,
            seconds=time.perf_counter() - began,
            cpu_seconds=time.process_time() - cpu,
            superseded_keys=tuple(sorted(old.object_keys() - new_keys)),
            new_keys=tuple(sorted(new_keys - old.object_keys())),
        )

    def adopt(self, manifest_version: int) -> None:
        """Switch to a published manifest version (e.g. after a failed commit elsewhere)."""
        self.manifest = self._read_manifest(manifest_version)
        self._final = None

    def final_state(self) -> TrainedState:
        if self._final is None:
            if self.manifest is None or not self.manifest.checkpoints:
                raise StorageCorruptError(f"shard {self.shard_id} has no checkpoint to load")
            self._final = load_checkpoint(self.model, self.store.get(self.manifest.checkpoints[-1].key))
        return self._final

    def tensors(self) -> dict[str, Any]:
        """Every tensor of the final constituent: module weights and optimizer state."""
        state = self.final_state()
        return {"model": state.module.state_dict(), "optimizer": state.optimizer_state}

    def predict(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Scores (or class probabilities) for canonical rows, and whether the row's subject is known."""
        self.calls.append("predict")
        import torch

        if isinstance(self.model, SufficientStatisticsModel):
            raise ConfigError(
                f"shard {self.shard_id} holds sufficient statistics, which predict only once every shard's are "
                "added up: use Coordinator.predict (or the served model version)"
            )
        state = self.final_state()
        state.module.eval()
        with torch.no_grad():
            batch = self.model.encode(state.module, rows)
            scores = self.model.predict(state.module, batch).numpy()
            known = self.model.knows(state.module, batch).numpy()
        return scores, known

    def call_log(self) -> list[str]:
        return list(self.calls)
