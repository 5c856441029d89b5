"""The ingest path: validate a batch, place its rows, retrain only the touched shards from their new slices, commit.

Read top to bottom, ``Ingester.ingest`` is the whole ingest of a batch:
prepare (``ingest.batch``: validate, refuse erased subjects, drop rows already stored) -> plan
(``ingest.slice_policy``: shard and slice per subject, compaction) -> retrain the touched shard actors
from their first changed slice (``Shard.ingest``) -> publish the new version (``catalog``) ->
purge what it no longer references (``store_purge``) -> keep the receipt and record it in MLflow.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Collection

import pyarrow as pa
import pyarrow.parquet as pq

from expunge.orchestrator.catalog import EnsembleManifest
from expunge.orchestrator.config import IngestConfig
from expunge.orchestrator.errors import ConfigError, ExpungeError, PersonalDataInTextError, StorageConflictError
from expunge.orchestrator.ingest.batch import (
    PreparedBatch,
    StoredRecords,
    names_stored_subject,
    prepare_batch,
    stored_records,
)
from expunge.orchestrator.ingest.prepared import PreparedIngest
from expunge.orchestrator.ingest.slice_policy import IngestLimits, plan_ingest
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt, ShardIngest, utc_now
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.session import StoreSession
from expunge.orchestrator.store_purge import purge_unreferenced
from expunge.shards.manifest import ShardUpdate
from expunge.shards.models import SufficientStatisticsModel, model_for

__all__ = ["Ingester", "PreparedIngest"]

log = logging.getLogger(__name__)


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
        self._schema: pa.Schema | None = None

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
            ConfigError: an untrained store, a wrong key, row placement, a bad request id, or one used for
                another batch (a request id given again with the same batch returns its receipt).
            PersonalDataInTextError: the request id names a subject of the batch.
            StoreBusyError: another process writes the store (e.g. a running service).
            StorageConflictError: another writer published meanwhile (nothing changed; ingest again).
            ShardRetrainFailed: a shard actor failed (nothing published; ingest again).
        """
        prepared = self.prepare(rows, request_id, settings, source)
        with self.session.writing("expunge ingest"):
            self._reconcile()
            if self.session.follow_latest():  # another writer committed before we held the lease: check again
                prepared = self.prepare(rows, prepared.request_id, settings, source)
            return self.run(prepared)

    def prepare(
        self,
        rows: pa.Table,
        request_id: str | None = None,
        settings: IngestConfig | None = None,
        source: str = "the ingest batch",
        erasing: Collection[str] = (),
    ) -> PreparedIngest:
        """Validate and plan a batch against the latest published version; writes nothing.

        ``erasing``: digests an erasure will remove in the same commit; their rows are refused
        like those of tombstoned subjects.

        Raises:
            DataValidationError, ConfigError: as ``ingest``.
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
        tombstones = self.session.catalog.tombstones()
        erased = tombstones | set(erasing)
        batch = prepare_batch(
            rows,
            manifest,
            self.session.hasher,
            erased,
            self._records(manifest).owner,
            source,
            request_id,
            self._slice_schema(manifest),
        )
        index = self.session.catalog.read_placement(manifest.placement_key)
        if names_stored_subject(request_id, self.session.hasher, lambda d: d in index.entries or d in tombstones):
            raise PersonalDataInTextError(
                "the request id names a person this store holds or erased: one of its parts, or a run of them "
                "(split at - _ . : / or spaces; e.g. the 12 or 05 of a date), equals a subject id. It is stored with "
                "the receipt and the model version, so use a label whose parts are no subject id (e.g. "
                "daily-20261203), or omit it. Nothing was stored"
            )
        earlier = self._earlier(request_id, batch)
        plan = None
        if batch.subject_rows:
            counts = [
                len(self.session.catalog.shard_manifest(s, v).slices) for s, v in enumerate(manifest.shard_versions)
            ]
            plan = plan_ingest(
                batch.subject_rows,
                index.entries,
                counts,
                manifest.sharding.slices,
                whole_subject=isinstance(model_for(manifest.model), SufficientStatisticsModel),
                limits=IngestLimits(settings.max_tail_slices, settings.max_subject_slices),
            )
        return PreparedIngest(request_id, manifest, batch, index, plan, settings, began, cpu, self._finish, earlier)

    def _slice_schema(self, manifest: EnsembleManifest) -> pa.Schema | None:
        """The Arrow schema of the store's slices (one footer read, once per process); None for an empty store."""
        if self._schema is None:
            for shard, version in enumerate(manifest.shard_versions):
                slices = self.session.catalog.shard_manifest(shard, version).slices
                if slices:
                    data = self.session.catalog.store.get(slices[0].key)
                    self._schema = pq.read_schema(io.BytesIO(data))
                    break
        return self._schema

    def _reconcile(self) -> None:
        """Bring MLflow up to the store first (what a crash or outage left), as an erasure does; never fails the ingest."""
        if self.lineage is None:
            return
        try:
            self.lineage.reconcile()
        except Exception as exc:  # MLflow is recorded after the commit anyway; the next writer catches up
            log.warning("MLflow not reconciled before the ingest (%s: %s)", type(exc).__name__, exc)

    def _earlier(self, request_id: str, batch: PreparedBatch) -> IngestReceipt | None:
        """The stored receipt of ``request_id`` if it ingested this very batch; a retry gets it back.

        Raises:
            ConfigError: the request id was used for another batch (its receipt is never replaced).
        """
        stored = self.session.catalog.read_ingest_receipt(request_id)
        if stored is None:
            return None
        earlier = IngestReceipt.model_validate_json(stored)
        if earlier.batch_digest != batch.digest:
            raise ConfigError(
                f"request id {request_id!r} was already used for another batch (its receipt is kept, never replaced); "
                "give this batch a new request id, or omit it"
            )
        return earlier

    def _records(self, manifest: EnsembleManifest) -> StoredRecords:
        """The record ids ``manifest`` stores: the cache, carried over erasures since, else every slice read."""
        cached = self._stored
        if cached is not None and cached.version < manifest.version:
            cached = self._past_erasures(cached, manifest.version)
        if cached is None or cached.version != manifest.version:
            cached = stored_records(self.session.catalog, manifest)
        self._stored = cached
        return cached

    def _past_erasures(self, cached: StoredRecords, version: int) -> StoredRecords | None:
        """``cached`` carried to ``version`` when every version since only removed rows; else None (read again).

        A version qualifies when it is an erasure whose receipt's removed rows account for the
        whole change of the row count (an erasure that a batch joined in another process adds rows).
        """
        catalog = self.session.catalog
        before = catalog.read(cached.version)
        for number in range(cached.version + 1, version + 1):
            after = catalog.read(number)
            text = catalog.read_receipt(number) if after.kind == "erasure" else None
            receipt = ErasureReceipt.model_validate_json(text) if text else None
            if receipt is None or after.rows != before.rows - receipt.rows_removed:
                return None
            # The people this erasure found (not the tombstones now: someone re-admitted since is not gone).
            cached = cached.without(number, set(receipt.subject_digests) - set(receipt.not_found_digests))
            before = after
        return cached

    def run(self, prepared: PreparedIngest) -> IngestReceipt:
        """Retrain, commit and record a prepared batch; the caller holds the store's lease.

        Raises:
            StorageConflictError: the store moved past the version the batch was planned on.
        """
        manifest = prepared.manifest
        if prepared.earlier is not None:  # a retry of an ingest that finished: the same receipt, once
            prepared.receipt = prepared.earlier
            return prepared.earlier
        if self.session.manifest is None or self.session.manifest.version != manifest.version:
            raise StorageConflictError(
                f"the batch was planned on version {manifest.version}, and the store has moved on; ingest again"
            )
        if prepared.plan is None:
            log.info(
                "ingest %s: nothing new in the batch (%d row(s))", prepared.request_id, prepared.batch.rows_in_batch
            )
            registered = self._registered_version()  # nothing published: the registry stays where it is
            receipt = IngestReceipt(
                status="nothing_new",
                rows_added=0,
                untouched_shards=tuple(range(manifest.sharding.shards)),
                model_version_after=manifest.version,
                registry_version_before=registered,
                registry_version_after=registered,
                seconds=time.perf_counter() - prepared.began,
                driver_cpu_seconds=time.process_time() - prepared.cpu,
                **self._counts(prepared),
            )
            prepared.receipt = self._keep(receipt)
            return prepared.receipt
        updates, retrain_seconds = self._retrain(prepared)
        new_manifest = self._commit(prepared, updates)
        return self._finish(prepared, new_manifest, updates, retrain_seconds, True, None)

    @staticmethod
    def _counts(prepared: PreparedIngest) -> dict[str, object]:
        batch = prepared.batch
        return {
            "request_id": prepared.request_id,
            "batch_digest": batch.digest,
            "rows_in_batch": batch.rows_in_batch,
            "rows_refused_erased": batch.rows_refused_erased,
            "subjects_refused_erased": batch.subjects_refused_erased,
            "rows_already_stored": batch.rows_already_stored,
            "full_retrain_cpu_seconds": prepared.manifest.train_cpu_seconds,
            "model_version_before": prepared.manifest.version,
        }

    def _finish(
        self,
        prepared: PreparedIngest,
        new_manifest: EnsembleManifest,
        updates: dict[int, ShardUpdate],
        retrain_seconds: float,
        own_commit: bool,
        registered: str | None,
    ) -> IngestReceipt:
        """After the commit: purge and register (``own_commit``), keep the receipt.

        An erasure carrying the batch purges and registers the version itself; ``registered`` is
        then the registry version it made (None: not yet, or tracking is off).
        """
        plan = prepared.plan
        assert plan is not None
        pending: list[str] = []
        deleted: list[str] = []
        if own_commit:
            try:
                purged = purge_unreferenced(
                    self.session.store, self.session.catalog, new_manifest, since=prepared.manifest.version
                )
                deleted = [str(v) for v in purged]
            except ExpungeError as exc:
                pending.append(_pending("purge", exc))
        if self._stored is not None and self._stored.version == prepared.manifest.version:
            # The version just published: these records, the batch's, less any erased in the same commit.
            gone = self.session.catalog.tombstones() if not own_commit else set()
            self._stored = self._stored.added(new_manifest.version, prepared.batch.rows).without(
                new_manifest.version, gone
            )
        mine = {s: u for s, u in updates.items() if s in plan.shards}
        receipt = IngestReceipt(
            status="ingested",
            rows_added=sum(u.rows_added for u in mine.values()),
            subjects_added=len(prepared.batch.subject_rows),
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
                for s, u in sorted(mine.items())
            ),
            untouched_shards=tuple(s for s in range(new_manifest.sharding.shards) if s not in mine),
            retrain_seconds=retrain_seconds,
            retrain_cpu_seconds=sum(u.cpu_seconds for u in mine.values()),
            model_version_after=new_manifest.version,
            committed_at=utc_now(),
            deleted_objects=tuple(deleted),
            pending=tuple(pending),
            seconds=time.perf_counter() - prepared.began,
            driver_cpu_seconds=time.process_time() - prepared.cpu,
            **self._counts(prepared),
        )
        if own_commit:
            receipt = self._register(receipt, new_manifest)
        elif registered is not None:
            receipt = receipt.model_copy(update={"registry_version_after": registered, "registered_at": utc_now()})
        log.info(
            "ingest %s: added %d row(s) to shard(s) %s in %.2fs",
            prepared.request_id,
            receipt.rows_added,
            receipt.touched_shards,
            receipt.seconds,
        )
        prepared.receipt = self._keep(receipt)
        return prepared.receipt

    def _retrain(self, prepared: PreparedIngest) -> tuple[dict[int, ShardUpdate], float]:
        """Each touched shard adds its rows and retrains from its first changed slice, in parallel."""
        per_shard = prepared.shard_calls({})
        pool = self.session.pool
        try:
            pool.call("ready", {s: () for s in per_shard})
            started = time.perf_counter()
            updates: dict[int, ShardUpdate] = pool.call("ingest", per_shard)
            return updates, time.perf_counter() - started
        except ExpungeError:
            self.session.rollback(prepared.manifest)
            raise

    def _commit(self, prepared: PreparedIngest, updates: dict[int, ShardUpdate]) -> EnsembleManifest:
        """Publish the next version (the commit point); a lost race deletes what this attempt wrote.

        Raises:
            StorageConflictError: another writer published first, or a subject of the batch was
                erased while the shards retrained (nothing published; ingest again).
        """
        manifest = prepared.manifest
        versions = list(manifest.shard_versions)
        for shard, update in updates.items():
            versions[shard] = update.manifest_version
        written = [k for u in updates.values() for k in u.new_keys]
        try:
            placement_key = self.session.catalog.write_placement(prepared.placement_after(set()))
            written.append(placement_key)
            new_manifest = manifest.model_copy(
                update={
                    "version": manifest.version + 1,
                    "parent_version": manifest.version,
                    "kind": "ingest",
                    "request_id": prepared.request_id,
                    "created_at": utc_now(),
                    "shard_versions": tuple(versions),
                    "placement_key": placement_key,
                    "rows": manifest.rows + sum(u.rows_added for u in updates.values()),
                    "lease_token": self.session.lease.token,
                }
            )
            late = set(prepared.batch.subject_rows) & self.session.catalog.tombstones()
            if late:
                raise StorageConflictError(
                    f"{len(late)} subject(s) of the batch were erased while it was ingested; nothing was published. "
                    "Ingest again: their rows are then refused."
                )
            self.session.catalog.publish(new_manifest)
        except ExpungeError:  # any failure: the actors' unpublished versions must not be built on
            self.session.abandon(manifest, written)
            raise
        self.session.adopt(new_manifest)
        return new_manifest

    def _registered_version(self) -> str | None:
        """The registry version the store's alias points at; None without tracking or when MLflow cannot say."""
        if self.lineage is None:
            return None
        try:
            return self.lineage.current_version()
        except Exception as exc:  # the receipt is what matters; MLflow is only its mirror
            log.warning("registry version not read for the receipt (%s: %s)", type(exc).__name__, exc)
            return None

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
            self.session.catalog.write_ingest_receipt(receipt.request_id, receipt.model_dump_json(indent=1))
        except ExpungeError as exc:
            return receipt.model_copy(update={"pending": (*receipt.pending, _pending("receipt", exc))})
        return receipt
