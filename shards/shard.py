"""One shard: its slices in Parquet, its checkpoint history, training and ``retrain_from``."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from expunge.shards.checkpoint_format import same_checkpoint
from expunge.shards.config import AnyModelConfig, StorageConfig, TrainingConfig, model_fingerprint_json
from expunge.shards.errors import ConfigError, DataValidationError, StorageCorruptError
from expunge.shards.manifest import (
    STAGED_SLICE,
    CheckpointEntry,
    ShardManifest,
    ShardUpdate,
    SliceEntry,
    shard_prefix,
)
from expunge.shards.models import DecrementalStatisticsModel, SufficientStatisticsModel, model_for
from expunge.shards.rows import LABEL, RATING, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID, numeric_values, string_array
from expunge.shards.schedule import SliceScope, step_recipes
from expunge.shards.store import ObjectStore
from expunge.shards.training import (
    StateSnapshot,
    TrainedState,
    accumulate_steps,
    configure_determinism,
    load_checkpoint,
    restore_snapshot,
    serialize_state,
    snapshot_state,
    train_steps,
)

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


class _Slices(Sequence[pa.Table]):
    """A shard's slice tables, each read from the store on first use (a retrain reads only what its steps see)."""

    def __init__(self, count: int, load: Callable[[int], pa.Table], given: Mapping[int, pa.Table]) -> None:
        self._count, self._load, self._tables = count, load, dict(given)

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> pa.Table: ...
    @overload
    def __getitem__(self, index: slice) -> list[pa.Table]: ...
    def __getitem__(self, index: int | slice) -> pa.Table | list[pa.Table]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not 0 <= index < self._count:
            raise IndexError(index)
        if index not in self._tables:
            self._tables[index] = self._load(index)
        return self._tables[index]

    def __iter__(self) -> Iterator[pa.Table]:
        return (self[i] for i in range(self._count))

    def loaded(self) -> dict[int, pa.Table]:
        """The tables read (or given) so far, by index."""
        return dict(self._tables)


def _records_sha256(table: pa.Table) -> str:
    ids = table.column(RECORD_ID).to_pylist()
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


#: Columns with few distinct values per slice (a subject has many rows): dictionary-encoded.
#: Unique or near-unique columns (record ids, item ids) are not: a dictionary as large as the
#: column only adds bytes. No column statistics: nothing reads them, and min/max of
#: ``subject_id`` would copy ids into the file footer.
_DICTIONARY_COLUMNS = (SUBJECT_ID, SUBJECT_DIGEST, RATING, LABEL)
#: zstd's default level. Level 9 made MovieLens slices ~7% smaller (8.1 -> ~8.7 bytes per training row,
#: against ~370 of checkpoints), but the slice an erasure rewrites then cost 4.2 ms of CPU in place of
#: 1.8 (16x8 MF: ~3.5% of the erasure; level 6: 2.9 ms).
_SLICE_ZSTD_LEVEL = 3
#: Rows up to which a shard keeps its slice tables in memory for a gradient model (``Shard._slice_cache``;
#: a decremental model keeps them whatever their size): about 0.2 GB of MovieLens rows.
_SLICE_CACHE_ROWS = 1_000_000
#: Tensor bytes of the checkpoint states a gradient model's shard keeps in memory (``Shard._states``):
#: 16x8 MF on MovieLens 100K keeps its 8 in about 6 MB.
_STATE_CACHE_BYTES = 64 * 2**20


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


def _kept_tables(tables: _Slices, new: Mapping[int, pa.Table], count: int) -> dict[int, pa.Table]:
    """The new slice sequence's tables at hand, by index: unchanged ones loaded, and rewritten ones with
    the schema of the slice they replace (what a read of their Parquet gives back); others are read later."""
    kept = {i: t for i, t in tables.loaded().items() if i not in new}
    for i, table in new.items():
        if i < count and i in tables.loaded() and table.schema.equals(tables.loaded()[i].schema):
            kept[i] = table
    return kept


def _takes_replacement(model: DecrementalStatisticsModel) -> bool:
    """Whether ``model.subtract`` takes the ``replacement`` added in issue 22 (custom models may not)."""
    try:
        return "replacement" in inspect.signature(model.subtract).parameters
    except (TypeError, ValueError):
        return False


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
            (training.fingerprint() + model_fingerprint_json(model_config)).encode()
        ).hexdigest()
        self.manifest: ShardManifest | None = None
        self._final: TrainedState | None = None
        #: The slice tables of the published manifest, by (key, sha256): an erasure filters every slice
        #: (and a gradient model's prefix steps read them all again), and reading them cost as much as
        #: the rest of a decremental model's update, and 8 reads of an MF erasure at 16x8 about 4 ms of
        #: its 0.16 s of CPU. Kept for a decremental model, and for another while the shard holds at most
        #: ``_SLICE_CACHE_ROWS`` rows. Memory only, dropped with the manifest they belong to; the store
        #: keeps the durable copy.
        self._slice_cache: dict[tuple[str, str | None], pa.Table] = {}
        #: A gradient model's checkpoint states of the published manifest, by (key, sha256), as it trained
        #: them (``snapshot_state``): an erasure restarts from one without reading and decoding its
        #: checkpoint (2-3 ms of a 16x8 MF erasure's ~120 ms, and 7-20 ms of system CPU on a worker
        #: process's first decode). At most ``_STATE_CACHE_BYTES``; memory only, like ``_slice_cache``.
        self._states: dict[tuple[str, str | None], StateSnapshot] = {}
        #: A model's ``encode`` of each slice (one that ``encodes_rows_independently``), by the lineage
        #: tokens of the slices up to it (what its user indexes depend on): a retrain encodes only the
        #: slices it changed (~1.3 ms of a 16x8 MF erasure). Kept while the slices are (``_keeps_slices``).
        self._encodings: dict[tuple[str, ...], dict[str, Any]] = {}
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
        text = json.dumps([self.fingerprint, self.shard_id, [s.lineage_token() for s in slices[: step + 1]]])
        digest = hashlib.sha256(text.encode()).hexdigest()[:40]
        return f"{shard_prefix(self.shard_id)}/checkpoints/{step:04d}-{digest}.pt"

    def _write_slice(
        self,
        index: int,
        table: pa.Table,
        epochs: int | None = None,
        scope: SliceScope = "prefix",
        read_back: dict[int, pa.Table] | None = None,
    ) -> SliceEntry:
        """Store ``table`` as slice ``index``; ``read_back`` given, it gets the table a read of the bytes gives.

        That is ``table`` in one chunk where the stored schema is its own (what keeps it in memory, and
        rewrites from it give the bytes rewrites from a read give); nothing otherwise.
        """
        records = _records_sha256(table)
        key = f"{shard_prefix(self.shard_id)}/slices/{index:04d}-{records[:40]}.parquet"
        data = _table_bytes(table)
        self.store.put(key, data)
        if read_back is not None and pq.read_schema(pa.BufferReader(data)).equals(table.schema):
            read_back[index] = table.combine_chunks()
        return SliceEntry(
            index=index,
            key=key,
            rows=len(table),
            records_sha256=records,
            sha256=hashlib.sha256(data).hexdigest(),
            epochs=epochs,
            scope=scope,
        )

    def _read_slice(self, entry: SliceEntry) -> pa.Table:
        # One thread: a slice is small, and waking pyarrow's pool cost more CPU than the read (0.7 vs 0.4 ms).
        return pq.ParquetFile(pa.BufferReader(self.store.get(entry.key))).read(use_threads=False)

    def _keeps_slices(self, entries: Sequence[SliceEntry]) -> bool:
        """Whether the slice tables of ``entries`` stay in memory (``_slice_cache``)."""
        return isinstance(self.model, DecrementalStatisticsModel) or sum(e.rows for e in entries) <= _SLICE_CACHE_ROWS

    def _slice_table(self, entry: SliceEntry) -> pa.Table:
        """The table of a published slice: kept in memory (``_keeps_slices``), read from the store otherwise."""
        table = self._slice_cache.get((entry.key, entry.sha256))
        if table is None:
            table = self._read_slice(entry)
            if self.manifest is not None and self._keeps_slices(self.manifest.slices):
                self._slice_cache[(entry.key, entry.sha256)] = table
        return table

    def _keep_slices(self, entries: Sequence[SliceEntry], tables: Mapping[int, pa.Table]) -> None:
        """Keep the new manifest's slice tables (those at hand) and drop every other: erased rows leave memory too."""
        if not self._keeps_slices(entries):
            self._slice_cache = {}
            return
        self._slice_cache = {(e.key, e.sha256): tables[e.index].combine_chunks() for e in entries if e.index in tables}

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
        self,
        tables: Sequence[pa.Table],
        entries: list[SliceEntry],
        start: TrainedState | None,
        keep: list[CheckpointEntry],
        states: dict[tuple[str, str | None], StateSnapshot] | None = None,
        encodings: dict[tuple[str, ...], dict[str, Any]] | None = None,
        reuse: bool = False,
    ) -> tuple[TrainedState, list[CheckpointEntry]]:
        """Train ``entries``' steps from ``start``; ``states`` given, it gets the new checkpoints' states (in budget),
        ``encodings`` every slice's encoding (``_encodings``: read where held, else made).

        ``reuse``: a checkpoint key already stored (a training from scratch over a lineage this store
        holds: ``expunge train`` again, a training retried after a failed commit) keeps its bytes when
        they hold the same state (``same_checkpoint``; e.g. format 3, written before format 5), so
        the sha256 a published version's manifest and receipt bound still holds.
        """
        checkpoints = list(keep)
        budget = _STATE_CACHE_BYTES - sum(s.nbytes for s in (states or {}).values())

        def save(step: int, data: bytes) -> None:
            key = self._checkpoint_key(step, entries)
            stored = self.store.get(key) if reuse and self.store.exists(key) else None
            if stored is not None and same_checkpoint(stored, data):
                data = stored  # the same state, stored before: its bytes stay as published versions bound them
            else:
                self.store.put(key, data)
            checkpoints.append(CheckpointEntry(step=step, key=key, sha256=hashlib.sha256(data).hexdigest()))

        def keep_state(step: int, state: TrainedState) -> None:
            nonlocal budget
            assert states is not None
            assert checkpoints[-1].step == step
            if step == len(entries) - 1:
                return  # the run's final state: nothing trains it further, ``_start`` reads it as it is
            snapshot = snapshot_state(self.model, state)  # type: ignore[arg-type]
            if snapshot.nbytes <= budget:
                states[(checkpoints[-1].key, checkpoints[-1].sha256)] = snapshot
                budget -= snapshot.nbytes

        lineage = [e.records_sha256 for e in entries]
        if isinstance(self.model, SufficientStatisticsModel):
            # A decremental model keeps its final sums only: it changes them instead of restarting.
            final_only = isinstance(self.model, DecrementalStatisticsModel)
            state = accumulate_steps(self.model, tables, start, save, lineage=lineage, final_only=final_only)
        else:
            recipes = step_recipes([(e.epochs, e.scope) for e in entries], self.training.epochs)
            tokens = [e.lineage_token() for e in entries]
            lineages = [tuple(tokens[: i + 1]) for i in range(len(tokens))]
            by_index = None
            if encodings is not None and getattr(self.model, "encodes_rows_independently", False):
                by_index = {i: self._encodings[k] for i, k in enumerate(lineages) if k in self._encodings}
            state = train_steps(
                self.model,
                self.training,
                self.shard_id,
                tables,
                start,
                save,
                lineage=lineage,
                recipes=recipes,
                on_state=keep_state if states is not None else None,
                encodings=by_index,
            )
            if by_index is not None and encodings is not None:
                encodings.update((lineages[i], encoded) for i, encoded in by_index.items())
        return state, checkpoints

    def _start(self, entry: CheckpointEntry) -> TrainedState:
        """The state of checkpoint ``entry``: from ``_states`` when kept, else read and decoded."""
        snapshot = self._states.get((entry.key, entry.sha256))
        final = self._final
        last = self.manifest.checkpoints[-1] if self.manifest is not None and self.manifest.checkpoints else None
        if snapshot is None and final is not None and last == entry and final.steps_done == entry.step + 1:
            # The published final state (an ingest restarts there), as its run left it: restored, not copied.
            layout = self.model.layout(final.module)
            snapshot = StateSnapshot(layout, final.module.state_dict(), final.optimizer_state, final.steps_done, 0)
        if snapshot is not None and not isinstance(self.model, SufficientStatisticsModel):
            return restore_snapshot(self.model, snapshot)
        return load_checkpoint(self.model, self.store.get(entry.key))

    # ----- public operations --------------------------------------------------------------
    def ready(self) -> int:
        return self.shard_id

    def train(
        self,
        slices: Sequence[pa.Table],
        request_id: str | None = None,
        recipes: Sequence[tuple[int | None, SliceScope]] | None = None,
    ) -> ShardUpdate:
        """Train from scratch on ``slices`` (each sorted by record id) and write a new manifest.

        ``recipes``: each slice's recorded (epochs, scope) (``SliceEntry``), to train from scratch on
        a slice sequence that ingests grew; None: every slice is a first-training slice.
        """
        self.calls.append("train")
        began, cpu = time.perf_counter(), time.process_time()
        tables = [t.sort_by(RECORD_ID) for t in slices]
        recorded: list[tuple[int | None, SliceScope]] = (
            list(recipes) if recipes is not None else [(None, "prefix")] * len(tables)
        )
        if len(recorded) != len(tables):
            raise ConfigError(f"{len(recorded)} slice recipes for {len(tables)} slices")
        read_back: dict[int, pa.Table] = {}
        entries = [
            self._write_slice(i, t, recorded[i][0], recorded[i][1], read_back=read_back) for i, t in enumerate(tables)
        ]
        states: dict[tuple[str, str | None], StateSnapshot] = {}
        encodings: dict[tuple[str, ...], dict[str, Any]] = {}
        state, checkpoints = self._run(
            tables,
            entries,
            None,
            [],
            self._states_to_keep(states),
            encodings if self._keeps_slices(entries) else None,
            reuse=True,
        )
        previous = self.manifest
        self.manifest = self._publish(entries, checkpoints, request_id)
        self._final = state
        self._keep_slices(entries, read_back)  # nothing of an earlier sequence stays in memory
        self._states, self._encodings = states, encodings
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
        staged = pq.ParquetFile(io.BytesIO(self.store.get(key))).read()
        ids = staged.column(RECORD_ID)
        duplicates = len(ids) - len(pc.unique(ids))
        if duplicates:
            raise DataValidationError(
                f"the training rows of shard {self.shard_id}",
                [f"{duplicates} duplicate record_id value(s) among them; record ids must be unique"],
            )
        # Ordered by (slice, record id), then cut at each slice's first row: the rows of filtering
        # on each slice index and sorting by record id (unique), without a Python value turned
        # into an Arrow one (pyarrow's first such conversion imports pandas: 0.2 s per process).
        ordered = staged.sort_by([(STAGED_SLICE, "ascending"), (RECORD_ID, "ascending")])
        bounds = np.searchsorted(numeric_values(ordered.column(STAGED_SLICE), np.int64), np.arange(slices + 1))
        rows = ordered.drop_columns([STAGED_SLICE])
        tables = [rows.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])).combine_chunks() for k in range(slices)]
        del staged, ordered, rows
        return self.train(tables, request_id)

    def erase(self, subject_digests: Sequence[str], first_affected_slice: int, request_id: str) -> ShardUpdate:
        """Delete the subjects' rows and retrain from the checkpoint before the first affected slice."""
        self.calls.append("erase")
        return self.update(subject_digests, {}, request_id, retrain_from=first_affected_slice)

    def ingest(
        self,
        appends: Mapping[int, pa.Table],
        request_id: str,
        tail_epochs: int,
        merge_from: int | None = None,
        remove: Sequence[str] = (),
    ) -> ShardUpdate:
        """Add rows and retrain from the first changed slice (``update``); an ingest may also erase (coalesced).

        Positional, as the shard pool calls it: ``(appends, request_id, tail_epochs, merge_from, remove)``.
        """
        self.calls.append("ingest")
        return self.update(remove, appends, request_id, tail_epochs=tail_epochs, merge_from=merge_from)

    def update(
        self,
        remove: Sequence[str],
        appends: Mapping[int, pa.Table],
        request_id: str,
        *,
        tail_epochs: int | None = None,
        merge_from: int | None = None,
        retrain_from: int | None = None,
    ) -> ShardUpdate:
        """Change the slice sequence, then retrain from the checkpoint before the first changed slice.

        In order: rows of the ``remove`` digests leave every slice; ``appends[k]`` (canonical rows with
        ``subject_digest``, record ids new to this shard) join slice ``k``, and ``k`` equal to the
        number of slices opens a new tail slice trained on its own rows for ``tail_epochs`` epochs;
        ``merge_from`` merges slices ``merge_from..`` into one such slice (compaction). Each changed
        slice is rewritten sorted by record id; unchanged slices keep their objects, and only the
        slices a retrained step reads are loaded. ``retrain_from`` retrains from that slice at the
        latest when anything changed. The result equals ``train`` on the new slice sequence with
        its recorded recipes, bit for bit. Nothing changed: the published manifest, no new objects.

        Raises:
            StorageCorruptError: no trained state, or an object of it is missing or damaged.
            ConfigError: an append past the new tail, a tail without ``tail_epochs``, or a merge out of range.
            DataValidationError: an appended record id is already in the slice it joins.
        """
        if self.manifest is None:
            raise StorageCorruptError(f"shard {self.shard_id} has no trained state to change")
        began, cpu = time.perf_counter(), time.process_time()
        old = self.manifest
        count = len(old.slices)
        tables = _Slices(count, lambda i: self._slice_table(old.slices[i]), {})
        new: dict[int, pa.Table] = {}
        removed = 0
        if remove:
            wanted = string_array(sorted(set(remove)))
            for i in range(count):
                kept = tables[i].filter(pc.invert(pc.is_in(tables[i].column(SUBJECT_DIGEST), value_set=wanted)))
                if len(kept) != len(tables[i]):
                    removed += len(tables[i]) - len(kept)
                    new[i] = kept
        recipes: list[tuple[int | None, SliceScope]] = [(e.epochs, e.scope) for e in old.slices]
        added = sum(len(t) for t in appends.values())
        for index, rows in sorted(appends.items()):
            if len(rows) == 0:
                continue
            if index > count:
                raise ConfigError(f"shard {self.shard_id}: rows for slice {index}, but it has {count} slice(s)")
            if index == count:
                if tail_epochs is None:
                    raise ConfigError(f"shard {self.shard_id}: a new tail slice needs tail_epochs")
                recipes.append((tail_epochs, "slice"))
                new[index] = rows.sort_by(RECORD_ID)
                continue
            base = new.get(index, tables[index])
            rows = rows.select(base.column_names).cast(base.schema)
            clash = pc.is_in(rows.column(RECORD_ID), value_set=base.column(RECORD_ID))
            if pc.any(clash).as_py():
                raise DataValidationError(
                    f"the rows added to shard {self.shard_id}", ["record ids already stored in the slice they join"]
                )
            new[index] = pa.concat_tables([base, rows]).sort_by(RECORD_ID)
        size = len(recipes)
        merged: tuple[int, ...] = ()
        if merge_from is not None and merge_from < size - 1:
            if merge_from < 0 or tail_epochs is None:
                raise ConfigError(f"shard {self.shard_id}: cannot merge slices from {merge_from}")
            parts = [new[i] if i in new else tables[i] for i in range(merge_from, size)]
            schema = parts[0].schema
            new = {i: t for i, t in new.items() if i < merge_from}
            new[merge_from] = pa.concat_tables([p.select(schema.names).cast(schema) for p in parts]).sort_by(RECORD_ID)
            merged = tuple(range(merge_from, size))
            recipes = [*recipes[:merge_from], (tail_epochs, "slice")]
            size = merge_from + 1
        if not new:
            return ShardUpdate(shard_id=self.shard_id, manifest_version=old.version, previous_version=old.version)
        first = min(new)
        if retrain_from is not None:
            first = min(first, retrain_from)
        entries = [
            self._write_slice(i, new[i], *recipes[i]) if i in new else old.slices[i].model_copy(update={"index": i})
            for i in range(size)
        ]
        view = _Slices(size, lambda i: tables[i], new)
        states: dict[tuple[str, str | None], StateSnapshot] = {}
        encodings: dict[tuple[str, ...], dict[str, Any]] = {}
        if isinstance(self.model, DecrementalStatisticsModel):
            sources = set(range(count)) if remove else {k for k in appends if k < count}
            state, checkpoints = self._change_sums(tables, new, sources, set(remove), appends, entries)
            first, restarted = min(new), old.checkpoints[-1].key if old.checkpoints else None
        else:
            keep = [c for c in old.checkpoints if c.step < first]
            start = self._start(keep[-1]) if first > 0 else None
            restarted = keep[-1].key if first > 0 else None
            kept = {(c.key, c.sha256) for c in keep}
            states.update((k, v) for k, v in self._states.items() if k in kept)
            state, checkpoints = self._run(
                view,
                entries,
                start,
                keep,
                self._states_to_keep(states),
                encodings if self._keeps_slices(entries) else None,
            )
        self.manifest = self._publish(entries, checkpoints, request_id)
        self._final = state
        self._keep_slices(entries, _kept_tables(tables, new, count))
        self._states, self._encodings = states, encodings
        new_keys = self.manifest.object_keys()
        return ShardUpdate(
            shard_id=self.shard_id,
            manifest_version=self.manifest.version,
            previous_version=old.version,
            rows_removed=removed,
            rows_added=added,
            slices_retrained=(
                tuple(sorted(new)) if isinstance(self.model, DecrementalStatisticsModel) else tuple(range(first, size))
            ),
            restarted_from=restarted,
            seconds=time.perf_counter() - began,
            cpu_seconds=time.process_time() - cpu,
            superseded_keys=tuple(sorted(old.object_keys() - new_keys)),
            new_keys=tuple(sorted(new_keys - old.object_keys())),
            slices_merged=merged,
        )

    def _change_sums(
        self,
        tables: Sequence[pa.Table],
        new: Mapping[int, pa.Table],
        sources: set[int],
        removed: set[str],
        appends: Mapping[int, pa.Table],
        entries: list[SliceEntry],
    ) -> tuple[TrainedState, list[CheckpointEntry]]:
        """New final sums of a decremental model: out with the changed subjects' old rows, in with their new ones.

        The changed subjects are the erased ones and those with appended rows; their old rows are
        in the ``sources`` slices of ``tables`` (all of a subject's rows share one slice), their
        new rows in the rewritten slices ``new``; every other subject's contribution stays as is. Exact (``DecrementalStatisticsModel.subtract``), so the state is
        bit for bit the sum from scratch over the new slices, written as the one checkpoint.
        """
        assert isinstance(self.model, DecrementalStatisticsModel)
        changed = removed | {d for t in appends.values() for d in t.column(SUBJECT_DIGEST).to_pylist()}
        wanted = pa.array(sorted(changed), type=pa.string())

        def of_changed(table: pa.Table) -> pa.Table:
            return table.filter(pc.is_in(table.column(SUBJECT_DIGEST), value_set=wanted))

        before = [of_changed(tables[i]) for i in sorted(sources)]
        after = [of_changed(table) for table in new.values()]
        current = self.final_state().module
        minus = self.model.accumulate(self.model.empty(), pa.concat_tables(before)) if before else self.model.empty()
        plus = self.model.accumulate(self.model.empty(), pa.concat_tables(after)) if after else None
        if plus is not None and _takes_replacement(self.model):
            state_module = self.model.subtract(current, minus, plus)  # one merge with the shard's sums
        else:  # a model written against subtract(state, part): out, then in
            state_module = self.model.subtract(current, minus)
            state_module = self.model.combine([state_module, plus]) if plus is not None else state_module
        state = TrainedState(state_module, None, len(entries))
        step = len(entries) - 1
        data = serialize_state(self.model, state, [e.records_sha256 for e in entries])
        key = self._checkpoint_key(step, entries)
        self.store.put(key, data)
        return state, [CheckpointEntry(step=step, key=key, sha256=hashlib.sha256(data).hexdigest())]

    def _states_to_keep(
        self, states: dict[tuple[str, str | None], StateSnapshot]
    ) -> dict[tuple[str, str | None], StateSnapshot] | None:
        """``states`` where this shard keeps checkpoint states (a gradient model's), else None."""
        return None if isinstance(self.model, SufficientStatisticsModel) else states

    def adopt(self, manifest_version: int) -> None:
        """Switch to a published manifest version (e.g. after a failed commit elsewhere)."""
        self.manifest = self._read_manifest(manifest_version)
        self._final = None
        self._slice_cache = {}
        self._states, self._encodings = {}, {}

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
