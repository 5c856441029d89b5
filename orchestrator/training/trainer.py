"""Training from scratch: validate rows, apply tombstones, place subjects, train every shard, publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from expunge.orchestrator.catalog import EnsembleManifest, PlacementIndex, RegistryBinding
from expunge.orchestrator.config import AnyModelConfig, ItemStatsConfig, JobConfig, MFConfig
from expunge.orchestrator.errors import (
    ConfigError,
    DataValidationError,
    ErasedSubjectsInDataError,
    ExpungeError,
    StorageConflictError,
)
from expunge.orchestrator.pool import ShardPool
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.session import StoreSession
from expunge.orchestrator.store_purge import purge_unreferenced
from expunge.orchestrator.training.partition import partition_rows
from expunge.orchestrator.training.streaming import (
    RowBatches,
    SourceSummary,
    place_summary,
    stage_source,
    summarise_source,
)
from expunge.shards.manifest import ShardUpdate
from expunge.shards.models import SufficientStatisticsModel, model_for, task_of
from expunge.shards.rows import ITEM_ID, SUBJECT_ID, validate_rows

__all__ = ["TrainResult", "Trainer", "resolve_model"]

log = logging.getLogger(__name__)


class TrainResult:
    """What ``Trainer.train`` returns: the published version, each shard's update, seconds, the registry version,
    and the steps after its commit that could not be done now (``pending``: ``"purge: ..."``,
    ``"registration: ..."``; the next writer that opens the store finishes them)."""

    def __init__(
        self,
        manifest: EnsembleManifest,
        updates: dict[int, ShardUpdate],
        seconds: float,
        registry_version: str | None,
        pending: tuple[str, ...] = (),
    ) -> None:
        self.manifest = manifest
        self.updates = updates
        self.seconds = seconds
        self.registry_version = registry_version
        self.pending = pending


def resolve_model(config: AnyModelConfig, rows: pa.Table) -> AnyModelConfig:
    """Fill in data-derived model settings (the item catalogue size) once, at first training."""
    if isinstance(config, MFConfig | ItemStatsConfig) and config.num_items == 0:
        largest = pc.max(rows.column(ITEM_ID)).as_py()
        return config.model_copy(update={"num_items": int(largest) + 1 if largest is not None else 1})
    return config


class Trainer:
    """Trains every shard of a store from scratch, in parallel, and publishes the result as a new version.

    Constructible without erasure or serving: ``Trainer(StoreSession(uri, hasher, local_pool))``.
    """

    def __init__(self, session: StoreSession, lineage: Lineage | None = None) -> None:
        self.session = session
        self.lineage = lineage

    def train(
        self,
        rows: pa.Table,
        job: JobConfig,
        request_id: str | None = None,
        placement: PlacementIndex | None = None,
        model: AnyModelConfig | None = None,
    ) -> TrainResult:
        """Train every shard from scratch in parallel and publish a new ensemble version.

        ``placement`` pins known subjects to their persisted cells and ``model`` fixes the
        resolved model settings: together they reproduce "training from scratch without a
        subject" exactly as Expunge defines it (see ``expunge.orchestrator.training.placement``).
        Holds the store's write lease throughout.

        Raises:
            StoreBusyError: another process writes the store (e.g. a running service).
            StorageConflictError: another writer published, or subjects in the rows were erased,
                while this training ran; what it wrote is deleted. Train again.
        """
        # Before anything is written (the lease too); the returned rows carry subject ids in canonical
        # form (expunge.shards.identity).
        rows = validate_rows(rows, "training rows", task_of(job.training.model), model=model or job.training.model)
        rows, dropped = self.apply_tombstones(rows, job.data.erased_subjects)
        resolved = model or resolve_model(job.training.model, rows)
        self._check_training(job, resolved)
        with self.session.writing("expunge train"):
            return self._train(rows, dropped, job, request_id, placement, resolved)

    def _train(
        self,
        rows: pa.Table,
        dropped: int,
        job: JobConfig,
        request_id: str | None,
        placement: PlacementIndex | None,
        model: AnyModelConfig,
    ) -> TrainResult:
        placement, pool = self._start_training(job, model, placement)
        began = time.perf_counter()
        _, parts, index = partition_rows(rows, job.sharding, self.session.hasher, placement)
        training_began = time.perf_counter()
        updates: dict[int, ShardUpdate] = pool.call(
            "train", {s: (parts[s], request_id) for s in range(job.sharding.shards)}
        )
        train_phase_seconds = time.perf_counter() - training_began
        return self._commit_training(
            job, model, pool, updates, index, len(rows), dropped, request_id, train_phase_seconds, began
        )

    def train_stream(
        self,
        batches: RowBatches,
        job: JobConfig,
        request_id: str | None = None,
        placement: PlacementIndex | None = None,
        model: AnyModelConfig | None = None,
        source: str = "training rows",
    ) -> TrainResult:
        """``train`` on rows read batch by batch, without holding them all in this process.

        ``batches`` is called twice (``expunge.orchestrator.training.streaming``): a first pass validates every
        batch, checks tombstones and counts rows per subject; a second places and stages each
        shard's rows in the store under ``staging/``, which the shard actors read
        (``Shard.train_staged``). The result (shard manifests, checkpoints, placement) is bit
        for bit what ``train`` gives on the same rows. Staged objects are deleted once the
        shards have trained, whether or not the commit succeeds. ``source`` names the input in
        validation errors (with the batch's row range).

        Raises:
            DataValidationError: a batch fails ``validate_rows`` (raised at the first such batch),
                no rows at all, or duplicate record ids within a shard.
            ErasedSubjectsInDataError: rows of tombstoned subjects and ``data.erased_subjects=refuse``.
            StoreBusyError, StorageConflictError: as for ``train``.
        """
        task = task_of(job.training.model)
        checked_model = model or job.training.model

        def validate(batch: pa.Table, label: str) -> pa.Table:
            return validate_rows(batch, label, task, model=checked_model)

        erased = frozenset(self.session.catalog.tombstones())
        summary = summarise_source(batches, self.session.hasher, validate, erased, source)
        dropped = summary.erased_rows
        if dropped:
            if job.data.erased_subjects != "drop":
                raise ErasedSubjectsInDataError(dropped, len(summary.erased_subjects), self.session.store.uri)
            log.warning(
                "dropped %d row(s) of %d erased subject(s) from the training rows",
                dropped,
                len(summary.erased_subjects),
            )
        resolved = model or resolve_model(job.training.model, summary.item_table())
        self._check_training(job, resolved)
        with self.session.writing("expunge train"):  # after the validating pass: bad input writes nothing
            return self._train_staged(batches, job, request_id, placement, resolved, source, summary, validate, erased)

    def _train_staged(
        self,
        batches: RowBatches,
        job: JobConfig,
        request_id: str | None,
        placement: PlacementIndex | None,
        model: AnyModelConfig,
        source: str,
        summary: SourceSummary,
        validate: Callable[[pa.Table, str], pa.Table],
        erased: frozenset[str],
    ) -> TrainResult:
        dropped = summary.erased_rows
        placement, pool = self._start_training(job, model, placement)
        began = time.perf_counter()
        homes = place_summary(summary, job.sharding, placement)
        staged = stage_source(
            batches, self.session.hasher, validate, erased, job.sharding, homes, self.session.store, source
        )
        if staged.rows != summary.rows - summary.erased_rows:
            self.session.store.delete(staged.keys.values())
            raise DataValidationError(
                source,
                [
                    f"gave {summary.rows - summary.erased_rows} row(s) to train on in the first pass and "
                    f"{staged.rows} in the second: the source changed between the two passes over it; train again "
                    "on a source nobody writes to meanwhile"
                ],
            )
        try:
            training_began = time.perf_counter()
            updates: dict[int, ShardUpdate] = pool.call(
                "train_staged",
                {s: (staged.keys[s], job.sharding.slices, request_id) for s in range(job.sharding.shards)},
            )
            train_phase_seconds = time.perf_counter() - training_began
        finally:
            self.session.store.delete(staged.keys.values())  # raw rows: never left behind, trained or not
        return self._commit_training(
            job, model, pool, updates, staged.index, staged.rows, dropped, request_id, train_phase_seconds, began
        )

    @staticmethod
    def _check_training(job: JobConfig, model: AnyModelConfig) -> None:
        """Settings that cannot train together, refused before anything is written (the lease too)."""
        if job.sharding.placement == "row" and isinstance(model_for(model), SufficientStatisticsModel):
            raise ConfigError(
                "a sufficient-statistics model (training.model.kind item_stats) centres each subject's ratings by "
                "the subject's own mean, so all of a subject's rows must share one slice: set sharding.placement "
                "to 'balanced' or 'hash'"
            )

    def _start_training(
        self, job: JobConfig, model: AnyModelConfig, placement: PlacementIndex | None
    ) -> tuple[PlacementIndex | None, ShardPool]:
        """The placement to pin, and a fresh pool with every actor started."""
        parent = self.session.manifest
        if placement is None and parent is not None and parent.sharding == job.sharding:
            # Retraining the same deployment: known subjects keep their persisted cells. A subject
            # whose rows all came by ingest (a tail slice past the first training's) is placed afresh.
            index = self.session.placement_index()
            slices = job.sharding.slices
            placement = PlacementIndex({d: c for d, c in index.entries.items() if min(c).slice < slices})
        pool = self.session.new_pool(job.training, model, job.sharding.shards)
        # Actor start-up (process spawn, torch import) is not training time: wait for it first.
        pool.call("ready", {s: () for s in range(job.sharding.shards)})
        return placement, pool

    def _commit_training(
        self,
        job: JobConfig,
        model: AnyModelConfig,
        pool: ShardPool,
        updates: Mapping[int, ShardUpdate],
        index: PlacementIndex,
        rows: int,
        dropped: int,
        request_id: str | None,
        train_phase_seconds: float,
        began: float,
    ) -> TrainResult:
        """Publish the trained shards as the next ensemble version, purge, and record it in the registry."""
        parent = self.session.manifest
        manifest = EnsembleManifest(
            version=(parent.version + 1) if parent else 1,
            parent_version=parent.version if parent else None,
            kind="train",
            request_id=request_id,
            sharding=job.sharding,
            training=job.training,
            model=model,
            shard_versions=tuple(updates[s].manifest_version for s in range(job.sharding.shards)),
            placement_key=self.session.catalog.write_placement(index),
            rows=rows,
            key_check=self.session.hasher.key_check(),
            train_seconds=train_phase_seconds,
            train_cpu_seconds=sum(u.cpu_seconds for u in updates.values()),
            registry=self._registry_binding(),
            erased_rows_dropped=dropped,
            lease_token=self.session.lease.token,
        )
        written = [k for u in updates.values() for k in u.new_keys] + [manifest.placement_key]
        try:
            # Tombstones at the commit, not only at the start: someone erased meanwhile stays out.
            late = set(index.entries) & self.session.catalog.tombstones()
            if late:
                raise StorageConflictError(
                    f"{len(late)} subject(s) in the training rows were erased while this training ran; nothing "
                    "was published. Train again: their rows are then refused (or dropped, data.erased_subjects)."
                )
            self.session.catalog.publish(manifest)
        except ExpungeError:
            # What this attempt wrote may hold rows of people erased meanwhile: it goes now.
            pool.shutdown()
            self.session.close()
            self.session.manifest = self.session.catalog.latest()
            self.session.discard(written)
            raise
        self.session.adopt(manifest, pool)
        # The commit point is behind us: nothing from here on fails the training. A step that cannot be
        # done now (a store or MLflow that does not answer, a link in the store) is named in ``pending``,
        # and the next writer that opens the store finishes it (``Eraser.finish_interrupted``, ``reconcile``).
        pending: list[str] = []
        try:
            purge_unreferenced(self.session.store, self.session.catalog, manifest)
        except (ExpungeError, OSError) as exc:  # a typed store error, or a local disk's own (EIO, EROFS)
            pending.append(f"purge: {type(exc).__name__}: {exc}"[:500])
        seconds = time.perf_counter() - began
        registry_version = None
        if self.lineage is not None:
            try:
                # train_seconds (the training phase) comes from the manifest; this is the whole job so far.
                registry_version = self.lineage.record_training(manifest, {"train_total_seconds": seconds})
            except Exception as exc:  # any MLflow failure: published all the same, recorded by the next writer
                pending.append(f"registration: {type(exc).__name__}: {exc}"[:500])
        for step in pending:
            log.warning("ensemble v%d is published; pending, for the next writer to finish: %s", manifest.version, step)
        log.info(
            "trained %d shards x %d slices on %d rows in %.2fs", job.sharding.shards, job.sharding.slices, rows, seconds
        )
        return TrainResult(manifest, dict(updates), seconds, registry_version, tuple(pending))

    def apply_tombstones(self, rows: pa.Table, policy: str) -> tuple[pa.Table, int]:
        """Refuse (``policy="refuse"``) or drop (``"drop"``) rows of subjects this store has erased.

        ``train`` applies it to its rows; apply it to held-out rows too, so an erased person is
        not evaluated on either. Returns the rows kept and how many were dropped.

        Raises:
            ErasedSubjectsInDataError: ``policy="refuse"`` and some rows belong to erased subjects.
        """
        erased = self.session.catalog.tombstones()
        if not erased or len(rows) == 0:
            return rows, 0
        digests = pa.array(self.session.hasher.digest_many(rows.column(SUBJECT_ID).to_pylist()), pa.string())
        hit = pc.is_in(digests, value_set=pa.array(sorted(erased), pa.string()))
        matched = int(pc.sum(hit).as_py() or 0)
        if matched == 0:
            return rows, 0
        subjects = len(set(pc.filter(digests, hit).to_pylist()))
        if policy != "drop":
            raise ErasedSubjectsInDataError(matched, subjects, self.session.store.uri)
        log.warning("dropped %d row(s) of %d erased subject(s) from the training rows", matched, subjects)
        return rows.filter(pc.invert(hit)), matched

    def _registry_binding(self) -> RegistryBinding | None:
        if self.lineage is None:
            return None
        tracking = self.lineage.tracking
        return RegistryBinding(
            tracking_uri=self.lineage.uri,
            experiment=tracking.experiment,
            model_name=tracking.model_name,
            alias=tracking.alias,
        )
