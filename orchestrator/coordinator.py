"""The coordinator: places subjects, trains every shard, and routes erasures only to affected shards."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.audit import ErasureAudit
from orchestrator.catalog import Catalog, EnsembleManifest, PlacementIndex, RegistryBinding
from orchestrator.config import (
    AnyModelConfig,
    ItemStatsConfig,
    JobConfig,
    MFConfig,
    StorageConfig,
    TrainingConfig,
)
from orchestrator.digests import SubjectHasher
from orchestrator.ensemble import StatisticsEnsemble, aggregate
from orchestrator.errors import (
    ConfigError,
    DataValidationError,
    ErasedSubjectsInDataError,
    ExpungeError,
    StorageConflictError,
    StorageCorruptError,
    UnknownSubjectError,
)
from orchestrator.partition import partition_rows
from orchestrator.pool import LocalShardPool, RayShardPool, ShardPool
from orchestrator.purge import purge_unreferenced
from orchestrator.receipt_chain import append_receipt, chained_receipts
from orchestrator.receipts import ErasureReceipt, ShardRetrain, utc_now
from orchestrator.registry import Lineage
from orchestrator.routing import route
from orchestrator.staging import RowBatches, place_summary, stage_source, summarise_source
from shards.models import SufficientStatisticsModel, model_for, task_of
from shards.rows import FEATURES, ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID, validate_rows
from shards.shard import ShardUpdate
from shards.store import ObjectStore
from shards.training import load_checkpoint

__all__ = [
    "REQUEST_ID",
    "Coordinator",
    "PoolFactory",
    "TrainResult",
    "check_key",
    "check_request_id",
    "partition_rows",
    "published",
]

log = logging.getLogger(__name__)


PoolFactory = Callable[[StorageConfig, TrainingConfig, AnyModelConfig, Mapping[int, int | None]], ShardPool]


class TrainResult:
    """What ``Coordinator.train`` returns."""

    def __init__(
        self, manifest: EnsembleManifest, updates: dict[int, ShardUpdate], seconds: float, registry_version: str | None
    ) -> None:
        self.manifest = manifest
        self.updates = updates
        self.seconds = seconds
        self.registry_version = registry_version


#: What a request id may be (it names stored receipts and MLflow runs): see ``check_request_id``.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_request_id(request_id: str) -> str:
    """A request id names stored receipts and MLflow runs: 1-128 of ``A-Z a-z 0-9 . _ -``, not starting with . _ -.

    Raises:
        ConfigError: any other id (a path separator, a space, a quote, an empty id ...).
    """
    if not REQUEST_ID.fullmatch(request_id):
        raise ConfigError(
            f"request id {request_id!r} is not usable: use 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. a ticket number such as GDPR-2026-0042), or omit it to get a generated one"
        )
    return request_id


def published(storage: StorageConfig | str, hasher: SubjectHasher | None = None) -> tuple[Catalog, EnsembleManifest]:
    """A store's catalog and its published version, checked against ``hasher``'s key when given.

    Raises:
        ConfigError: the store does not exist or was never trained (never treated as empty or
            clean), or ``hasher``'s key is not the one the store was trained with.
    """
    catalog = Catalog(ObjectStore(storage))
    latest = catalog.latest()
    if latest is None:
        raise ConfigError(
            f"no published ensemble in {catalog.store.uri}: the store does not exist or was never trained. "
            "Check --storage (a local folder, file:// or s3:// URI of a trained store), or run `expunge train`."
        )
    if hasher is not None:
        check_key(latest, hasher)  # a wrong key would silently find nobody
    return catalog, latest


def check_key(manifest: EnsembleManifest, hasher: SubjectHasher) -> None:
    """Refuse a digest key other than the one the store was trained with (it would match nobody)."""
    if manifest.key_check is not None and manifest.key_check != hasher.key_check():
        raise ConfigError(
            f"the subject digest key differs from the one ensemble v{manifest.version} was trained with, so "
            "no subject would be found. Set EXPUNGE_SUBJECT_KEY (or privacy.subject_key_env) to the original key."
        )


def resolve_model(config: AnyModelConfig, rows: pa.Table) -> AnyModelConfig:
    """Fill in data-derived model settings (the item catalogue size) once, at first training."""
    if isinstance(config, MFConfig | ItemStatsConfig) and config.num_items == 0:
        largest = pc.max(rows.column(ITEM_ID)).as_py()
        return config.model_copy(update={"num_items": int(largest) + 1 if largest is not None else 1})
    return config


def ray_pool(
    storage: StorageConfig, training: TrainingConfig, model: AnyModelConfig, versions: Mapping[int, int | None]
) -> ShardPool:
    return RayShardPool(storage, training, model, versions)


def local_pool(
    storage: StorageConfig, training: TrainingConfig, model: AnyModelConfig, versions: Mapping[int, int | None]
) -> ShardPool:
    return LocalShardPool(storage, training, model, versions)


class Coordinator:
    """Owns the shard pool for one store; every public method leaves the store at a committed state."""

    def __init__(
        self,
        storage: StorageConfig | str,
        hasher: SubjectHasher,
        lineage: Lineage | None = None,
        pool_factory: PoolFactory = ray_pool,
    ) -> None:
        self.storage = storage if isinstance(storage, StorageConfig) else StorageConfig(uri=storage)
        self.store = ObjectStore(self.storage)
        self.catalog = Catalog(self.store)
        self.hasher = hasher
        self.lineage = lineage
        self.pool_factory = pool_factory
        self.manifest = self.catalog.latest()
        self._pool: ShardPool | None = None
        self._statistics: tuple[int, StatisticsEnsemble] | None = None  # (ensemble version, its sum)
        if self.manifest is not None:
            # Finish what a crash may have interrupted right after a commit: the purge of the
            # store, then the registry (a pre-erasure model version must not stay servable).
            purge_unreferenced(self.store, self.catalog, self.manifest)
            self._sync_lineage()

    # ----- helpers ---------------------------------------------------------------------------
    def _require_manifest(self) -> EnsembleManifest:
        if self.manifest is None:
            raise ConfigError(f"no trained ensemble in {self.store.uri}; run `expunge train --config FILE.yaml` first")
        check_key(self.manifest, self.hasher)
        return self.manifest

    @property
    def pool(self) -> ShardPool:
        if self._pool is None:
            manifest = self._require_manifest()
            versions = dict(enumerate(manifest.shard_versions))
            self._pool = self.pool_factory(self.storage, manifest.training, manifest.model, versions)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # ----- training ---------------------------------------------------------------------------
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
        subject" exactly as Expunge defines it (see ``orchestrator.placement``).
        """
        # Before anything is written; the returned rows carry subject ids in canonical form (shards.identity).
        rows = validate_rows(rows, "training rows", task_of(job.training.model), model=model or job.training.model)
        rows, dropped = self.apply_tombstones(rows, job.data.erased_subjects)
        model = model or resolve_model(job.training.model, rows)
        placement, pool = self._start_training(job, model, placement)
        began = time.perf_counter()
        _, parts, index = partition_rows(rows, job.sharding, self.hasher, placement)
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

        ``batches`` is called twice (``orchestrator.staging``): a first pass validates every
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
        """
        task = task_of(job.training.model)
        checked_model = model or job.training.model

        def validate(batch: pa.Table, label: str) -> pa.Table:
            return validate_rows(batch, label, task, model=checked_model)

        erased = frozenset(self.catalog.tombstones())
        summary = summarise_source(batches, self.hasher, validate, erased, source)
        dropped = summary.erased_rows
        if dropped:
            if job.data.erased_subjects != "drop":
                raise ErasedSubjectsInDataError(dropped, len(summary.erased_subjects), self.store.uri)
            log.warning(
                "dropped %d row(s) of %d erased subject(s) from the training rows",
                dropped,
                len(summary.erased_subjects),
            )
        model = model or resolve_model(job.training.model, summary.item_table())
        placement, pool = self._start_training(job, model, placement)
        began = time.perf_counter()
        homes = place_summary(summary, job.sharding, placement)
        staged = stage_source(batches, self.hasher, validate, erased, job.sharding, homes, self.store, source)
        if staged.rows != summary.rows - summary.erased_rows:
            self.store.delete(staged.keys.values())
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
            self.store.delete(staged.keys.values())  # raw rows: never left behind, trained or not
        return self._commit_training(
            job, model, pool, updates, staged.index, staged.rows, dropped, request_id, train_phase_seconds, began
        )

    def _start_training(
        self, job: JobConfig, model: AnyModelConfig, placement: PlacementIndex | None
    ) -> tuple[PlacementIndex | None, ShardPool]:
        """Checks before training, the placement to pin, and a fresh pool with every actor started."""
        if job.sharding.placement == "row" and isinstance(model_for(model), SufficientStatisticsModel):
            raise ConfigError(
                "a sufficient-statistics model (training.model.kind item_stats) centres each subject's ratings by "
                "the subject's own mean, so all of a subject's rows must share one slice: set sharding.placement "
                "to 'balanced' or 'hash'"
            )
        parent = self.manifest
        if placement is None and parent is not None and parent.sharding == job.sharding:
            # Retraining the same deployment: known subjects keep their persisted cells.
            placement = self.placement_index()
        self.close()
        pool = self.pool_factory(self.storage, job.training, model, dict.fromkeys(range(job.sharding.shards)))
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
        parent = self.manifest
        manifest = EnsembleManifest(
            version=(parent.version + 1) if parent else 1,
            parent_version=parent.version if parent else None,
            kind="train",
            request_id=request_id,
            sharding=job.sharding,
            training=job.training,
            model=model,
            shard_versions=tuple(updates[s].manifest_version for s in range(job.sharding.shards)),
            placement_key=self.catalog.write_placement(index),
            rows=rows,
            key_check=self.hasher.key_check(),
            train_seconds=train_phase_seconds,
            registry=self._registry_binding(),
            erased_rows_dropped=dropped,
        )
        self.catalog.publish(manifest)
        self.manifest, self._pool = manifest, pool
        purge_unreferenced(self.store, self.catalog, manifest)
        seconds = time.perf_counter() - began
        registry_version = None
        if self.lineage is not None:
            registry_version = self.lineage.record_training(manifest, {"train_seconds": seconds})
        log.info(
            "trained %d shards x %d slices on %d rows in %.2fs", job.sharding.shards, job.sharding.slices, rows, seconds
        )
        return TrainResult(manifest, dict(updates), seconds, registry_version)

    def apply_tombstones(self, rows: pa.Table, policy: str) -> tuple[pa.Table, int]:
        """Refuse (``policy="refuse"``) or drop (``"drop"``) rows of subjects this store has erased.

        ``train`` applies it to its rows; apply it to held-out rows too, so an erased person is
        not evaluated on either. Returns the rows kept and how many were dropped.

        Raises:
            ErasedSubjectsInDataError: ``policy="refuse"`` and some rows belong to erased subjects.
        """
        erased = self.catalog.tombstones()
        if not erased or len(rows) == 0:
            return rows, 0
        digests = pa.array(self.hasher.digest_many(rows.column(SUBJECT_ID).to_pylist()), pa.string())
        hit = pc.is_in(digests, value_set=pa.array(sorted(erased), pa.string()))
        matched = int(pc.sum(hit).as_py() or 0)
        if matched == 0:
            return rows, 0
        subjects = len(set(pc.filter(digests, hit).to_pylist()))
        if policy != "drop":
            raise ErasedSubjectsInDataError(matched, subjects, self.store.uri)
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

    def _finish_committed(self, request_id: str, digests: Sequence[str]) -> ErasureReceipt | None:
        """The receipt of ``request_id`` if an erasure with that id already committed, finishing its record.

        A crash after the store commit (in MLflow, or before the receipt log) leaves the store
        erased but the request unanswered; its retry must not look like a miss. The registry is
        already reconciled on open (``_sync_lineage``); this completes the receipt log.

        Raises:
            ConfigError: the id was used by an erasure of other subjects (ids name one request).
        """
        version = next(
            (
                v
                for v in sorted(self.catalog.versions(), reverse=True)
                if (m := self.catalog.read(v)).kind == "erasure" and m.request_id == request_id
            ),
            None,
        )
        if version is None:
            return None
        done = [r for _, r in chained_receipts(self.store, request_id) if r.status == "erased"]
        stored = done[-1] if done else None
        if stored is None and (text := self.catalog.read_receipt(version)) is not None:
            stored = ErasureReceipt.model_validate_json(text)
        if stored is None:  # crashed between the commit and the per-version receipt
            parent = self.catalog.read(version - 1) if version > 1 else None
            stored = ErasureReceipt(
                request_id=request_id,
                status="erased",
                subject_digests=tuple(digests),
                rows_removed=(parent.rows - self.catalog.read(version).rows) if parent else 0,
                model_version_before=version - 1,
                model_version_after=version,
            )
        if set(stored.subject_digests) != set(digests):
            raise ConfigError(
                f"request id {request_id!r} already erased other subjects (ensemble v{version}); "
                "each request needs its own id: use a new --request-id, or omit it"
            )
        if done:
            return stored
        if self.lineage is not None and stored.registry_version_after is None:
            stored = stored.model_copy(update={"registry_version_after": self.lineage.current_version()})
        log.info("request %s had committed ensemble v%d before a crash: finishing its receipt", request_id, version)
        return append_receipt(self.store, stored)

    def _already_erased(self, not_found: Sequence[str]) -> tuple[str, ...]:
        """The digests among ``not_found`` that an earlier erasure of this store removed (tombstoned)."""
        if not not_found:
            return ()
        erased = self.catalog.tombstones()
        return tuple(d for d in not_found if d in erased)

    def readmit(self, subject_ids: Sequence[object], reason: str, request_id: str | None = None) -> int:
        """Lift the tombstones of subjects who gave new consent; returns how many were tombstoned.

        Recorded in the store's tombstone log with the reason. The subjects' rows are not
        restored: a later ``train`` on data that holds them admits them again.

        Raises:
            ConfigError: an empty reason, or no subject named.
        """
        if not reason.strip():
            raise ConfigError("re-admitting a subject needs a reason (e.g. the consent ticket); pass --reason TEXT")
        if not subject_ids:
            raise ConfigError("name at least one subject to re-admit with --subject ID")
        request_id = check_request_id(request_id or f"readmit-{uuid.uuid4().hex[:12]}")
        digests = list(dict.fromkeys(self.hasher.digest_many(subject_ids)))
        erased = self.catalog.tombstones()
        self.catalog.append_tombstones("readmitted", digests, request_id, reason.strip())
        return sum(d in erased for d in digests)

    # ----- erasure ------------------------------------------------------------------------------
    def forget(
        self, subject_ids: Sequence[object], request_id: str | None = None, audit: ErasureAudit | None = None
    ) -> ErasureReceipt:
        """Erase every row of the subjects and retrain only the shards that held them.

        ``audit`` (e.g. ``orchestrator.audit.MembershipAudit``) is called before any shard is
        retrained and after the commit; its record's sha256 goes into the receipt. Every
        receipt is appended to the store's receipt log (``orchestrator.receipt_chain``) and
        recorded in MLflow when a lineage is set.

        Raises:
            ConfigError: no subject named, a bad request id, or an id that named other subjects.
            InvalidSubjectIdError: an id the identity rule refuses (``shards.identity``).
        """
        if not subject_ids:
            raise ConfigError("an erasure request needs at least one subject id")
        if request_id is not None:
            check_request_id(request_id)
        digests = list(dict.fromkeys(self.hasher.digest_many(subject_ids)))
        return self.forget_digests(digests, request_id, audit)

    def forget_digests(
        self,
        digests: Sequence[str],
        request_id: str | None = None,
        audit: ErasureAudit | None = None,
        *,
        register: bool = True,
        resume: bool = True,
    ) -> ErasureReceipt:
        """``forget`` for subjects already digested with this store's key (the service's entry point).

        ``register=False`` stops at the store commit (the live actors serve the new version and
        the receipt is chained); the caller registers later with ``register_published``.
        ``resume=False`` is the caller's promise that no earlier attempt used ``request_id``, which
        skips looking for one (a scan of every stored version).

        Raises:
            ConfigError: no digest, a bad request id, or an id that named other subjects.
            StorageConflictError: another writer published first (nothing changed; submit again).
            ShardRetrainFailed: a shard actor failed or died (nothing published; submit again).
        """
        began = time.perf_counter()
        if not digests:
            raise ConfigError("an erasure request needs at least one subject id")
        self._refresh(sync=register)
        manifest = self._require_manifest()
        request_id = check_request_id(request_id or f"req-{uuid.uuid4().hex[:12]}")
        digests = list(dict.fromkeys(digests))
        committed = self._finish_committed(request_id, digests) if resume else None
        if committed is not None:
            return committed  # a retry of a request that already committed: the same receipt, once
        index = self.catalog.read_placement(manifest.placement_key)
        plan = route(digests, index.cells())
        all_shards = range(manifest.sharding.shards)
        if not plan.found:
            log.info("request %s: no rows for %d subject(s); nothing changed", request_id, len(digests))
            missed = ErasureReceipt(
                request_id=request_id,
                status="not_found",
                subject_digests=tuple(digests),
                not_found_digests=plan.not_found,
                already_erased_digests=self._already_erased(plan.not_found),
                untouched_shards=tuple(all_shards),
                seconds=time.perf_counter() - began,
                model_version_before=manifest.version,
                model_version_after=manifest.version,
                registry_version_before=self.lineage.current_version() if self.lineage and register else None,
                registry_version_after=self.lineage.current_version() if self.lineage and register else None,
                committed_at=utc_now(),
            )
            # The audit trail shows every request, not only those that erased something.
            missed = append_receipt(self.store, missed)
            if self.lineage is not None and register:
                self.lineage.record_request(missed, manifest)
            return missed
        found = set(plan.found)
        cells = index.cells()
        per_shard = {
            shard: (sorted(d for d in plan.found if any(c.shard == shard for c in cells[d])), first, request_id)
            for shard, first in plan.first_affected_slice.items()
        }
        if audit is not None:
            # The only moment both exist: the subjects' rows and the constituents trained on them.
            audit.before_retrain(self.catalog, manifest, sorted(found), self.hasher)
        pool = self.pool
        try:
            # Start the affected actors first (a no-op when warm) so that retrain_seconds is
            # retraining alone, like the manifest's train_seconds it is compared with.
            pool.call("ready", {s: () for s in per_shard})
            retrain_began = time.perf_counter()
            updates: dict[int, ShardUpdate] = pool.call("erase", per_shard)
            retrain_seconds = time.perf_counter() - retrain_began
        except StorageCorruptError as exc:
            self._rollback(manifest)
            if self.manifest is not None and self.manifest.version != manifest.version:
                raise StorageConflictError(
                    f"ensemble v{self.manifest.version} was published while request {request_id} ran "
                    f"from v{manifest.version}; nothing was changed. Submit the request again."
                ) from exc
            raise
        except ExpungeError:
            self._rollback(manifest)
            raise
        versions = list(manifest.shard_versions)
        for shard, update in updates.items():
            versions[shard] = update.manifest_version
        new_index = index.without(found)
        new_manifest = EnsembleManifest(
            version=manifest.version + 1,
            parent_version=manifest.version,
            kind="erasure",
            request_id=request_id,
            sharding=manifest.sharding,
            training=manifest.training,
            model=manifest.model,
            shard_versions=tuple(versions),
            placement_key=self.catalog.write_placement(new_index),
            rows=manifest.rows - sum(u.rows_removed for u in updates.values()),
            key_check=manifest.key_check,
            train_seconds=manifest.train_seconds,
            registry=manifest.registry,
        )
        # Tombstones first: from here on no training admits these people again, even if the
        # commit below loses a race (the retry then completes the erasure they asked for).
        self.catalog.append_tombstones("erased", sorted(found), request_id)
        try:
            self.catalog.publish(new_manifest)
        except StorageConflictError:
            self._rollback(manifest)
            # What we wrote was derived from a version that is no longer current: it may hold
            # rows the winner just erased, so it goes now rather than at the next commit.
            self._discard([k for u in updates.values() for k in u.new_keys] + [new_manifest.placement_key])
            raise
        self.manifest = new_manifest
        if self._pool is not None:
            self._pool.published(dict(enumerate(new_manifest.shard_versions)))
        deleted = [str(v) for v in purge_unreferenced(self.store, self.catalog, new_manifest, since=manifest.version)]
        receipt = ErasureReceipt(
            request_id=request_id,
            status="erased",
            subject_digests=tuple(digests),
            not_found_digests=plan.not_found,
            already_erased_digests=self._already_erased(plan.not_found),
            rows_removed=sum(u.rows_removed for u in updates.values()),
            shards=tuple(
                ShardRetrain(
                    shard=s,
                    first_affected_slice=plan.first_affected_slice[s],
                    slices_retrained=u.slices_retrained,
                    restarted_from=u.restarted_from,
                    rows_removed=u.rows_removed,
                    seconds=u.seconds,
                )
                for s, u in sorted(updates.items())
            ),
            untouched_shards=tuple(s for s in all_shards if s not in updates),
            seconds=time.perf_counter() - began,
            retrain_seconds=retrain_seconds,
            full_retrain_seconds=manifest.train_seconds,
            model_version_before=manifest.version,
            model_version_after=new_manifest.version,
            deleted_objects=tuple(deleted),
            committed_at=utc_now(),
        )
        self.catalog.write_receipt(new_manifest.version, receipt.model_dump_json(indent=1))
        if self.lineage is not None and register:
            parent = self.lineage.current_version()
            version = self.lineage.record_erasure(receipt, new_manifest, parent)
            receipt = receipt.model_copy(
                update={
                    "registry_version_before": parent,
                    "registry_version_after": version,
                    "registered_at": utc_now(),
                }
            )
        try:
            if audit is not None:
                receipt = receipt.model_copy(
                    update={"audit_sha256": audit.after_commit(self.catalog, new_manifest, receipt)}
                )
        finally:
            receipt = append_receipt(self.store, receipt)  # a failed audit still leaves the receipt
        log.info(
            "request %s: erased %d row(s) from shard(s) %s in %.2fs",
            request_id,
            receipt.rows_removed,
            receipt.affected_shards,
            receipt.seconds,
        )
        return receipt

    def _sync_lineage(self) -> None:
        """Finish what a crash or an MLflow outage left undone in the registry (``Lineage.reconcile``).

        Records a published store version MLflow missed, purges every version older than the
        newest erasure, and closes interrupted runs, so a pre-erasure model is never left servable.
        """
        if self.lineage is not None and self.manifest is not None:
            self.lineage.reconcile()

    def _refresh(self, sync: bool = True) -> None:
        """Act on the latest published version (another process may have committed since)."""
        latest = self.catalog.latest()
        if latest is not None and (self.manifest is None or latest.version != self.manifest.version):
            self.close()
            self.manifest = latest
        if sync:
            self._sync_lineage()

    def register_published(self) -> str | None:
        """Bring MLflow up to the published version (new version, alias moved, every earlier one purged).

        The second stage of a service erasure (``forget_digests(register=False)``); a no-op when
        the registry already has it or tracking is off. Returns the registry version serving now.
        """
        if self.lineage is None:
            return None
        self.lineage.reconcile()
        return self.lineage.current_version()

    def _follow_latest(self) -> EnsembleManifest:
        """The published version, re-read from the store: serving never answers from a superseded one.

        Another process may have erased someone since this coordinator last looked; its actors
        and cached statistics would still hold them.
        """
        latest = self.catalog.latest()
        if latest is not None and (self.manifest is None or latest.version != self.manifest.version):
            self.close()
            self.manifest = latest
            self._statistics = None
        return self._require_manifest()

    def _discard(self, keys: list[str]) -> None:
        """Delete objects of a losing attempt, except any the published version references."""
        latest = self.catalog.latest()
        keep = self.catalog.referenced_keys(latest) if latest is not None else set()
        self.store.delete(k for k in keys if k not in keep)

    def _rollback(self, manifest: EnsembleManifest) -> None:
        """Point actors back at the published versions; their unpublished objects are garbage."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.manifest = self.catalog.latest() or manifest

    # ----- serving ------------------------------------------------------------------------------
    def predict(self, rows: pa.Table) -> np.ndarray:
        """Ensemble predictions, shape (n,) (class probabilities (n, classes) for classifiers).

        Rows of a ratings model need ``subject_id`` (or ``subject_digest``) and ``item_id``; a
        classifier's need ``features``. Unknown subjects, erased ones included, get the
        population's prediction: after an erasure the person is indistinguishable from a newcomer.

        Raises:
            ConfigError: a needed column is missing.
        """
        manifest = self._follow_latest()
        needed = [ITEM_ID] if task_of(manifest.model) == "rating" else [FEATURES]
        missing = [c for c in needed if c not in rows.column_names]
        if task_of(manifest.model) == "rating" and not {SUBJECT_ID, SUBJECT_DIGEST} & set(rows.column_names):
            missing.append(SUBJECT_ID)
        if missing:
            raise ConfigError(
                f"rows to predict lack column(s) {missing}: a {manifest.model.kind!r} model needs "
                f"{', '.join(needed + ([SUBJECT_ID] if task_of(manifest.model) == 'rating' else []))} "
                f"(got {rows.column_names})"
            )
        if SUBJECT_DIGEST not in rows.column_names and SUBJECT_ID in rows.column_names:
            rows = rows.append_column(
                SUBJECT_DIGEST, pa.array(self.hasher.digest_many(rows.column(SUBJECT_ID).to_pylist()), pa.string())
            )
        model = model_for(manifest.model)
        if isinstance(model, SufficientStatisticsModel):
            return self.statistics().fit.predict(rows)
        results = self.pool.call("predict", {s: (rows,) for s in range(manifest.sharding.shards)})
        ordered = [results[s] for s in range(manifest.sharding.shards)]
        return aggregate([r[0] for r in ordered], [r[1] for r in ordered], model.subject_specific)

    def statistics(self) -> StatisticsEnsemble:
        """The summed shard states of a sufficient-statistics model and their fit (cached per version).

        Read from the final checkpoint of each published shard version in the store, so no
        shard actor has to run.

        Raises:
            ConfigError: the published model is not a sufficient-statistics model.
        """
        manifest = self._follow_latest()
        model = model_for(manifest.model)
        if not isinstance(model, SufficientStatisticsModel):
            raise ConfigError(
                f"ensemble v{manifest.version} is a {manifest.model.kind!r} model, not a statistics model"
            )
        if self._statistics is None or self._statistics[0] != manifest.version:
            states = []
            for shard, version in enumerate(manifest.shard_versions):
                checkpoints = self.catalog.shard_manifest(shard, version).checkpoints
                if not checkpoints:
                    raise StorageCorruptError(
                        f"shard {shard} manifest v{version} in {self.store.uri} lists no checkpoint; "
                        "retrain into a fresh storage URI"
                    )
                states.append(load_checkpoint(model, self.store.get(checkpoints[-1].key)).module)
            self._statistics = (manifest.version, StatisticsEnsemble(model, states))
        return self._statistics[1]

    def recommend(self, subject_id: object, k: int = 10) -> list[int]:
        """The ``k`` items the subject has not rated that the exact ensemble ranks best, best first.

        A sufficient-statistics model ranks with its own top-N scorer (EASE for ``item_stats``)
        over the items someone rated; matrix factorisation ranks every catalogue item by the
        ensemble's predicted rating. Ties go to the smaller item id.

        Raises:
            UnknownSubjectError: the published version holds no rows of the subject (never
                trained on, or erased).
            ConfigError: ``k < 1``, or a model without an item catalogue (a classifier).
        """
        manifest = self._follow_latest()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k={k!r}: ask for a whole number of recommendations, at least 1")
        digest = self.hasher.digest(subject_id)
        model = model_for(manifest.model)
        unknown = UnknownSubjectError(
            f"subject {digest[:12]}... (digest) has no rows in ensemble v{manifest.version} of {self.store.uri}: "
            "recommendations need a subject the model holds (never trained on, or erased). Check the id and "
            "EXPUNGE_SUBJECT_KEY, or use popular items for newcomers."
        )
        if isinstance(model, SufficientStatisticsModel):
            fit = self.statistics().fit
            if not fit.knows(digest):
                raise unknown
            return fit.recommend(digest, k)
        if not isinstance(manifest.model, MFConfig):
            raise ConfigError(
                f"recommend needs a model with an item catalogue (kind mf or item_stats); ensemble "
                f"v{manifest.version} is {manifest.model.kind!r}"
            )
        cells = self.placement_index().cells().get(digest)
        if not cells:
            raise unknown
        catalogue = np.arange(manifest.model.num_items, dtype=np.int64)
        rows = pa.table({ITEM_ID: catalogue, SUBJECT_DIGEST: pa.array([digest] * len(catalogue), pa.string())})
        scores = self.predict(rows)
        scores[self._rated_items(manifest, digest, cells)] = -np.inf
        order = np.argsort(-scores, kind="stable")
        return [int(i) for i in order[np.isfinite(scores[order])][:k]]

    def _rated_items(self, manifest: EnsembleManifest, digest: str, cells: Sequence[Any]) -> np.ndarray:
        """Item ids of the subject's rows, read from the slices that hold them."""
        import io

        import pyarrow.parquet as pq

        items: list[np.ndarray] = []
        for cell in cells:
            shard_manifest = self.catalog.shard_manifest(cell.shard, manifest.shard_versions[cell.shard])
            table = pq.read_table(io.BytesIO(self.store.get(shard_manifest.slices[cell.slice].key)))
            mine = table.filter(pc.equal(table.column(SUBJECT_DIGEST), digest))
            items.append(mine.column(ITEM_ID).to_numpy().astype(np.int64))
        return np.concatenate(items) if items else np.zeros(0, np.int64)

    def placement_index(self) -> PlacementIndex:
        """The persisted subject placement of the published version (digests only)."""
        return self.catalog.read_placement(self._require_manifest().placement_key)

    def constituent_tensors(self) -> dict[int, dict[str, Any]]:
        manifest = self._require_manifest()
        return self.pool.call("tensors", {s: () for s in range(manifest.sharding.shards)})
