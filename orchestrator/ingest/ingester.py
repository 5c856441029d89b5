"""The ingest path: validate a batch, place its rows, retrain only the touched shards from their new slices, commit.

Read top to bottom, ``Ingester.ingest`` is the whole ingest of a batch:
prepare (``ingest.batch``: validate, refuse erased subjects, drop rows already stored) -> plan
(``ingest.slice_policy``: shard and slice per subject, compaction) -> retrain the touched shard actors
from their first changed slice (``Shard.ingest``) -> publish the new version (``catalog``) ->
purge what it no longer references (``store_purge``) -> keep the receipt and record it in MLflow.
"""

from __future__ import annotations

import logging
import time
import uuid

import pyarrow as pa

from expunge.orchestrator.catalog import EnsembleManifest, PlacementIndex
from expunge.orchestrator.config import IngestConfig
from expunge.orchestrator.errors import ConfigError, ExpungeError, StorageConflictError
from expunge.orchestrator.ingest.batch import PreparedBatch, StoredRecords, prepare_batch, split_by_cell, stored_records
from expunge.orchestrator.ingest.slice_policy import IngestLimits, IngestPlan, place_after, plan_ingest
from expunge.orchestrator.receipts import IngestReceipt, ShardIngest, utc_now
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.session import StoreSession
from expunge.orchestrator.store_purge import purge_unreferenced
from expunge.shards.models import SufficientStatisticsModel, model_for
from expunge.shards.shard import ShardUpdate

__all__ = ["INGEST_RECEIPT_PREFIX", "Ingester"]

log = logging.getLogger(__name__)

#: Where the receipt of every ingest is kept, by request id.
INGEST_RECEIPT_PREFIX = "receipts/ingests"


def _pending(step: str, exc: BaseException) -> str:
    return f"{step}: {type(exc).__name__}: {exc}"[:500]


class Ingester:
    """Adds new rows to a trained store: only the shards that receive rows retrain, from their new slice.

    Constructible alone: ``Ingester(StoreSession(uri, hasher, local_pool), lineage)``.
    """

    def __init__(self, session: StoreSession, lineage: Lineage | None = None) -> None:
        self.session = session
        self.lineage = lineage
        self._stored: StoredRecords | None = None

    def ingest(
        self,
        rows: pa.Table,
        request_id: str | None = None,
        settings: IngestConfig | None = None,
        source: str = "the ingest batch",
    ) -> IngestReceipt:
        """Add ``rows`` (canonical columns) to the published version and publish the next one.

        Rows of erased subjects are refused and counted; rows whose record id the store holds for
        the same subject are left out (the same batch twice adds nothing). Known subjects keep
        their shard, new ones go where the keyed hash says, and each touched shard retrains from
        its first changed slice (``ingest.slice_policy``). The result equals training from scratch on
        the recorded slice sequence, bit for bit (docs/exactness.md). ``source`` names the batch
        in errors. Holds the store's write lease throughout.

        Raises:
            DataValidationError: the rows fail validation (every problem listed); nothing is written.
            ConfigError: an untrained store, a wrong key, row placement, or a bad request id.
            StoreBusyError: another process writes the store (e.g. a running service).
            StorageConflictError: another writer published meanwhile (nothing changed; ingest again).
            ShardRetrainFailed: a shard actor failed (nothing published; ingest again).
        """
        began, cpu = time.perf_counter(), time.process_time()
        settings = settings or IngestConfig()
        request_id = check_request_id(request_id or f"ingest-{uuid.uuid4().hex[:12]}")
        self.session.follow_latest()
        manifest = self.session.require_manifest()
        if manifest.sharding.placement == "row":
            raise ConfigError(
                "ingest places rows by subject, and this store was trained with sharding.placement 'row'; "
                "retrain it with 'balanced' or 'hash' to ingest"
            )
        batch = prepare_batch(
            rows,
            manifest,
            self.session.hasher,
            self.session.catalog.tombstones(),
            self._records(manifest).owner,
            source,
        )
        with self.session.lease.hold("expunge ingest"):
            if self.session.follow_latest():  # another writer committed before we held the lease: check again
                manifest = self.session.require_manifest()
                batch = prepare_batch(
                    rows,
                    manifest,
                    self.session.hasher,
                    self.session.catalog.tombstones(),
                    self._records(manifest).owner,
                    source,
                )
            return self._ingest(manifest, batch, request_id, settings, began, cpu)

    def _records(self, manifest: EnsembleManifest) -> StoredRecords:
        if self._stored is None or self._stored.version != manifest.version:
            self._stored = stored_records(self.session.catalog, manifest)
        return self._stored

    def _ingest(
        self,
        manifest: EnsembleManifest,
        batch: PreparedBatch,
        request_id: str,
        settings: IngestConfig,
        began: float,
        cpu: float,
    ) -> IngestReceipt:
        counts = {
            "request_id": request_id,
            "batch_digest": batch.digest,
            "rows_in_batch": batch.rows_in_batch,
            "rows_refused_erased": batch.rows_refused_erased,
            "subjects_refused_erased": batch.subjects_refused_erased,
            "rows_already_stored": batch.rows_already_stored,
            "full_retrain_cpu_seconds": manifest.train_cpu_seconds,
            "model_version_before": manifest.version,
        }
        if not batch.subject_rows:
            log.info("ingest %s: nothing new in the batch (%d row(s))", request_id, batch.rows_in_batch)
            receipt = IngestReceipt(
                status="nothing_new",
                rows_added=0,
                untouched_shards=tuple(range(manifest.sharding.shards)),
                model_version_after=manifest.version,
                seconds=time.perf_counter() - began,
                driver_cpu_seconds=time.process_time() - cpu,
                **counts,
            )
            return self._keep(receipt)
        index = self.session.catalog.read_placement(manifest.placement_key)
        slice_counts = [
            len(self.session.catalog.shard_manifest(s, v).slices) for s, v in enumerate(manifest.shard_versions)
        ]
        plan = plan_ingest(
            batch.subject_rows,
            index.entries,
            slice_counts,
            manifest.sharding.slices,
            whole_subject=isinstance(model_for(manifest.model), SufficientStatisticsModel),
            limits=IngestLimits(settings.max_tail_slices, settings.max_subject_slices),
        )
        updates, retrain_seconds = self._retrain(manifest, batch, plan, request_id, settings)
        placement = PlacementIndex(place_after(index.entries, batch.subject_rows, plan))
        new_manifest = self._commit(manifest, placement, updates, request_id, batch)
        pending: list[str] = []
        deleted: list[str] = []
        try:
            purged = purge_unreferenced(self.session.store, self.session.catalog, new_manifest, since=manifest.version)
            deleted = [str(v) for v in purged]
        except ExpungeError as exc:
            pending.append(_pending("purge", exc))
        self._stored = self._records(manifest).added(new_manifest.version, batch.rows)
        receipt = IngestReceipt(
            status="ingested",
            rows_added=sum(u.rows_added for u in updates.values()),
            subjects_added=len(batch.subject_rows),
            new_subjects=len(plan.new_subjects),
            shards=tuple(
                ShardIngest(
                    shard=s,
                    rows_added=u.rows_added,
                    slices_retrained=u.slices_retrained,
                    restarted_from=u.restarted_from,
                    slices_merged=u.slices_merged,
                    slices_after=plan.shards[s].slices_after,
                    seconds=u.seconds,
                    cpu_seconds=u.cpu_seconds,
                )
                for s, u in sorted(updates.items())
            ),
            untouched_shards=tuple(s for s in range(manifest.sharding.shards) if s not in updates),
            retrain_seconds=retrain_seconds,
            retrain_cpu_seconds=sum(u.cpu_seconds for u in updates.values()),
            model_version_after=new_manifest.version,
            committed_at=utc_now(),
            deleted_objects=tuple(deleted),
            pending=tuple(pending),
            seconds=time.perf_counter() - began,
            driver_cpu_seconds=time.process_time() - cpu,
            **counts,
        )
        receipt = self._register(receipt, new_manifest)
        log.info(
            "ingest %s: added %d row(s) to shard(s) %s in %.2fs",
            request_id,
            receipt.rows_added,
            receipt.touched_shards,
            receipt.seconds,
        )
        return self._keep(receipt)

    def _retrain(
        self,
        manifest: EnsembleManifest,
        batch: PreparedBatch,
        plan: IngestPlan,
        request_id: str,
        settings: IngestConfig,
    ) -> tuple[dict[int, ShardUpdate], float]:
        """Each touched shard adds its rows and retrains from its first changed slice, in parallel."""
        cells = {d: (c.shard, c.slice) for d, c in plan.cells.items()}
        tables = split_by_cell(batch.rows, cells)
        per_shard = {
            shard: (tables[shard], request_id, settings.tail_epochs, plan.shards[shard].merge_from, ())
            for shard in plan.touched_shards
        }
        pool = self.session.pool
        try:
            pool.call("ready", {s: () for s in per_shard})
            started = time.perf_counter()
            updates: dict[int, ShardUpdate] = pool.call("ingest", per_shard)
            return updates, time.perf_counter() - started
        except ExpungeError:
            self.session.rollback(manifest)
            raise

    def _commit(
        self,
        manifest: EnsembleManifest,
        placement: PlacementIndex,
        updates: dict[int, ShardUpdate],
        request_id: str,
        batch: PreparedBatch,
    ) -> EnsembleManifest:
        """Publish the next version (the commit point); a lost race deletes what this attempt wrote.

        Raises:
            StorageConflictError: another writer published first, or a subject of the batch was
                erased while the shards retrained (nothing published; ingest again).
        """
        versions = list(manifest.shard_versions)
        for shard, update in updates.items():
            versions[shard] = update.manifest_version
        new_manifest = manifest.model_copy(
            update={
                "version": manifest.version + 1,
                "parent_version": manifest.version,
                "kind": "ingest",
                "request_id": request_id,
                "created_at": utc_now(),
                "shard_versions": tuple(versions),
                "placement_key": self.session.catalog.write_placement(placement),
                "rows": manifest.rows + sum(u.rows_added for u in updates.values()),
                "lease_token": self.session.lease.token,
            }
        )
        written = [k for u in updates.values() for k in u.new_keys] + [new_manifest.placement_key]
        try:
            late = set(batch.subject_rows) & self.session.catalog.tombstones()
            if late:
                raise StorageConflictError(
                    f"{len(late)} subject(s) of the batch were erased while it was ingested; nothing was published. "
                    "Ingest again: their rows are then refused."
                )
            self.session.catalog.publish(new_manifest)
        except ExpungeError:
            self.session.rollback(manifest)
            self.session.discard(written)
            raise
        self.session.adopt(new_manifest)
        return new_manifest

    def _register(self, receipt: IngestReceipt, manifest: EnsembleManifest) -> IngestReceipt:
        """Record the new version in MLflow; a failure is pending (retried by the next writer), never an error."""
        record = getattr(self.lineage, "record_ingest", None)
        if record is None:
            return receipt
        try:
            parent = self.lineage.current_version() if self.lineage is not None else None
            version = record(receipt, manifest, parent)
        except Exception as exc:  # committed: MLflow catches up on the next open (Lineage.reconcile)
            return receipt.model_copy(update={"pending": (*receipt.pending, _pending("registration", exc))})
        return receipt.model_copy(
            update={"registry_version_before": parent, "registry_version_after": version, "registered_at": utc_now()}
        )

    def _keep(self, receipt: IngestReceipt) -> IngestReceipt:
        """Store the receipt under its request id; a failure to store it is pending, never an error."""
        try:
            self.session.store.put(
                f"{INGEST_RECEIPT_PREFIX}/{receipt.request_id}.json", receipt.model_dump_json(indent=1).encode()
            )
        except ExpungeError as exc:
            return receipt.model_copy(update={"pending": (*receipt.pending, _pending("receipt", exc))})
        return receipt
