"""``Lineage``: the one object the coordinator talks to; it composes runs, packaging and purge."""

from __future__ import annotations

import logging
from typing import Any

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import StorageConfig, TrackingConfig
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.registry.chain_anchors import ChainAnchor, ChainAnchors
from expunge.orchestrator.registry.commit_records import (
    erasure_receipt,
    ingest_receipt,
    joined_ingest_receipt,
    missed_erasure,
)
from expunge.orchestrator.registry.opening import LineageParts, OnFirstUse, connect
from expunge.orchestrator.registry.ownership import refuse_another_stores_registry
from expunge.orchestrator.registry.packaging import Packager
from expunge.orchestrator.registry.purge_notice import PurgeNotice
from expunge.orchestrator.registry.runs import RunRecorder
from expunge.orchestrator.registry.scratch import Staging
from expunge.orchestrator.registry.tracking import REQUEST_TAG, SUPERSEDES_ERASURE, Registry
from expunge.orchestrator.registry.version_purge import Purger, ensemble_version
from expunge.shards.store import ObjectStore

__all__ = ["Lineage"]

log = logging.getLogger(__name__)


class Lineage:
    """Records a run and a servable model version per commit, and purges versions an erasure made unlawful.

    Opening one finishes what a crash or an MLflow outage interrupted (``reconcile``), so the
    registry never keeps serving, or storing, a model an erasure superseded. A ``deferred`` one
    opens on first use (or ``open()``), and still reconciles before doing anything else.
    """

    def __init__(self, tracking: TrackingConfig, storage: StorageConfig | str, *, deferred: bool = False) -> None:
        """``storage`` is the shard store the coordinator commits to (its options reach S3 here too).

        ``deferred``: connect and reconcile on first use instead of now (nothing is read or
        written before then), so that a job can open MLflow beside other start-up work; the
        errors below are then raised by ``open()`` or the first use.

        Raises:
            TrackingUnreachable: the tracking server or database does not answer.
            ArtifactStoreNotErasable: model files would go where every copy cannot be deleted.
            ConfigError: an http(s) tracking URI without ``tracking.backend_store_uri``.
        """
        self._tracking = tracking
        self._first_use = OnFirstUse(lambda: connect(tracking, storage), self._reconcile)
        if not deferred:
            self.open()

    def open(self) -> Lineage:
        """Connect and reconcile now, once (later calls return at once); raises as the constructor does."""
        self._first_use.get()
        return self

    def connect(self) -> Lineage:
        """Connect to MLflow now without reconciling (e.g. in a thread while Ray starts); the first use
        still reconciles before anything else. Raises as the constructor does; returns this lineage."""
        self._first_use.connect_now()
        return self

    @property
    def is_open(self) -> bool:
        """Whether it has connected and reconciled (a deferred one: not before its first use)."""
        return self._first_use.done

    def _opened(self) -> LineageParts:
        return self._first_use.get()

    # ----- the parts (opened on first use) ---------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self._opened().registry

    @property
    def staging(self) -> Staging:
        return self._opened().staging

    @property
    def runs(self) -> RunRecorder:
        return self._opened().runs

    @property
    def packaging(self) -> Packager:
        return self._opened().packaging

    @property
    def purger(self) -> Purger:
        return self._opened().purger

    @property
    def anchors(self) -> ChainAnchors:
        return self._opened().anchors

    # ----- what callers read --------------------------------------------------------------------
    @property
    def client(self):  # type: ignore[no-untyped-def]
        """The ``MlflowClient`` bound to this deployment's tracking URI."""
        return self.registry.client

    @property
    def tracking(self) -> TrackingConfig:
        """The tracking settings (known without connecting)."""
        return self._tracking

    @property
    def uri(self) -> str:
        return self.registry.uri

    @property
    def backend_store_uri(self) -> str:
        return self.registry.backend_store_uri

    @property
    def experiment_id(self) -> str:
        return self.registry.experiment_id

    @property
    def store(self) -> ObjectStore:
        return self.registry.store

    @property
    def store_uri(self) -> str:
        return self.registry.store_uri

    def _alias_target(self) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.registry.model_name, self.registry.alias)
        except MlflowException:
            return None

    def current_version(self) -> str | None:
        """The registry version the alias points at (None: nothing registered yet)."""
        return str(target.version) if (target := self._alias_target()) is not None else None

    def recorded_ensemble_version(self) -> int | None:
        """The store version the alias's model version was built from (None: nothing recorded)."""
        tag = target.tags.get("expunge.ensemble_version") if (target := self._alias_target()) is not None else None
        return int(tag) if tag else None

    # ----- loading a version, moving an alias: never to a purged one ----------------------------------
    def _version(self, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.registry.model_name, str(version))
        except MlflowException as exc:
            raise ConfigError(
                f"model {self.registry.model_name!r} has no version {version!r} in {self.uri}; the alias "
                f"{self.registry.alias!r} serves version {self.current_version()}"
            ) from exc

    def purge_notice(self, version: str) -> PurgeNotice | None:
        """Why registry ``version`` was purged and the first later version that was not; None when not purged.

        Raises:
            ConfigError: the registered model has no such version.
        """
        notice = PurgeNotice.of(self._version(version), self.registry.alias)
        seen = {str(version)}
        # The version the purge named may have been purged since: name the first one that was not.
        while notice is not None and notice.use_version not in seen:
            seen.add(notice.use_version)
            successor = PurgeNotice.of(self._version(notice.use_version), self.registry.alias)
            if successor is None:
                break
            notice = notice.model_copy(update={"use_version": successor.use_version})
        return notice

    def load_version(self, version: str | None = None) -> Any:
        """Load a registered version (default: the alias target) as an ``mlflow.pyfunc.PyFuncModel``, here.

        The files are fetched into this deployment's staging folder and removed once loaded
        (the model holds its constituents in memory).

        Raises:
            PurgedVersionError: an erasure purged that version; the message names the erasure and
                the version to use instead.
            ConfigError: no such version, or nothing registered yet.
        """
        import mlflow.artifacts
        import mlflow.pyfunc

        if version is None:
            version = self.current_version()
            if version is None:
                raise ConfigError(f"model {self.registry.model_name!r} has no version yet; train first")
        notice = self.purge_notice(version)
        if notice is not None:
            raise notice.error()
        entity = self._version(version)
        with self.staging.folder() as root:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=str(entity.source), dst_path=str(root), tracking_uri=self.uri
            )
            return mlflow.pyfunc.load_model(local)

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at registry ``version``; a purged version is refused, with nothing changed.

        Raises:
            PurgedVersionError: an erasure purged that version (the message names the version to use).
            ConfigError: the registered model has no such version.
        """
        notice = self.purge_notice(version)
        if notice is not None:
            raise notice.error()
        self.client.set_registered_model_alias(self.registry.model_name, alias, str(version))

    # ----- the receipt log's anchors ---------------------------------------------------------------------
    def anchor_receipt(
        self, request_id: str, sequence: int, receipt_sha256: str, previous_sha256: str | None
    ) -> list[str]:
        """Tag every run of this store for ``request_id`` with its receipt's place in the receipt log.

        Tags ``expunge.chain.sequence`` (1 = first receipt), ``expunge.chain.receipt_sha256`` and
        ``expunge.chain.previous_sha256`` (``none`` for the first). Returns the run ids tagged (empty
        when the request has no run).

        Raises:
            ValueError: ``sequence`` below 1, or a digest that is not a lowercase hex sha256.
            TrackingUnreachable: the tracking server or database does not answer.
        """
        return self.anchors.anchor(request_id, sequence, receipt_sha256, previous_sha256)

    def chain_anchors(self) -> list[ChainAnchor]:
        """Every anchor on this store's runs, by sequence (``AuditView.chain_anchors`` reads the same).

        Raises:
            TrackingUnreachable: the tracking server or database does not answer.
        """
        return self.anchors.read()

    # ----- a version per commit -----------------------------------------------------------------
    def _new_version(
        self,
        run_id: str,
        manifest: EnsembleManifest,
        parent: str | None,
        retrained: set[int],
        description: str,
        missed: EnsembleManifest | None = None,
    ) -> str:
        """Log the servable, register it and move the alias; ``missed``: see ``_missed_erasure``."""
        self.runs.log_ensemble(run_id, manifest, retrained)
        servable = self.packaging.log_servable(run_id, manifest)
        receipt = erasure_receipt(self.store, missed) if missed is not None else None
        tags = {SUPERSEDES_ERASURE: receipt.request_id} if receipt is not None else None
        version = self.packaging.register(run_id, manifest, parent, servable, description, tags)
        if missed is not None and receipt is not None:
            # The purge first (the erased subjects' weights cannot wait), then the erasure's own run.
            self.purge_superseded(receipt.request_id, version)
            erasure_run = self.runs.start_erasure(receipt, missed, parent)
            self.runs.finish_erasure(erasure_run, receipt, parent, version)
            self.runs.end(erasure_run)
        return version

    def _missed_erasure(self, manifest: EnsembleManifest) -> EnsembleManifest | None:
        """The newest erasure published before ``manifest`` that MLflow holds no version of, if any.

        A training or ingest that follows an erasure whose registration never happened (MLflow
        down, the process gone) stands in for it: the version it registers is tagged
        ``expunge.supersedes_erasure``, every older version is purged by that erasure, and the
        erasure gets its run (receipt, digests), naming this version as the one registered after it.
        """
        recorded = max((ensemble_version(v.tags) for v in self.registry.model_versions()), default=0)
        return missed_erasure(Catalog(self.store), manifest, recorded)

    def record_training(self, manifest: EnsembleManifest, metrics: dict[str, float]) -> str:
        """Log the training run and its version, and move the alias to it; returns the registry version."""
        parent = self.current_version()
        missed = self._missed_erasure(manifest)
        run_id = self.runs.start_training(manifest, metrics)
        version = self._new_version(
            run_id,
            manifest,
            parent,
            set(range(manifest.sharding.shards)),
            f"Training of ensemble v{manifest.version} ({manifest.rows} rows).",
            missed,
        )
        self.runs.end(run_id)
        return version

    def record_ingest(self, receipt: IngestReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        """Log the ingest run and the new version, move the alias to it, close the run; returns the version.

        An ingest adds rows and erases nobody: earlier versions keep their weights (their
        subjects were not asked to be erased), unless MLflow missed an erasure before this
        ingest, whose purge is then done here (``_missed_erasure``).

        Raises:
            ValueError: ``receipt`` published nothing (``status`` ``nothing_new``).
        """
        if receipt.status != "ingested":
            raise ValueError(
                f"record_ingest needs an 'ingested' receipt, got {receipt.status!r}: nothing was published"
            )
        missed = self._missed_erasure(manifest)
        run_id = self.runs.start_ingest(receipt, manifest, parent)
        version = self._new_version(
            run_id,
            manifest,
            parent,
            set(receipt.touched_shards),
            f"Ingest {receipt.request_id}: {receipt.rows_added} row(s) of {receipt.subjects_added} subject(s) added "
            f"({receipt.new_subjects} new); shards {receipt.touched_shards} retrained from their first changed slice.",
            missed,
        )
        self.runs.finish_ingest(run_id, receipt, parent, version)
        self.runs.end(run_id)
        return version

    def record_erasure(self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        """Log the erasure run and the new version, move the alias, purge every earlier version, close the run.

        The purge comes right after the alias moves: the run's closing details can wait, the
        superseded weights cannot. Returns the new registry version.
        """
        if receipt.status != "erased":
            raise ValueError(f"record_erasure needs an 'erased' receipt, got {receipt.status!r}; use record_request")
        run_id = self.runs.start_erasure(receipt, manifest, parent)
        version = self._new_version(
            run_id,
            manifest,
            parent,
            set(receipt.affected_shards),
            f"Erasure {receipt.request_id}: {receipt.rows_removed} row(s) of {len(receipt.subject_digests)} "
            f"subject(s) removed; shards {receipt.affected_shards} retrained.",
        )
        self.purge_superseded(receipt.request_id, version)
        self.runs.finish_erasure(run_id, receipt, parent, version)
        self.runs.end(run_id)
        return version

    def record_request(
        self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None = None, fresh: bool = False
    ) -> str | None:
        """Record any erasure request; returns the registry version serving after it.

        ``status == "not_found"``: a finished run (``expunge.outcome=not_found``, the digests,
        the receipt, the version it was checked against) and no new version; ``manifest`` is
        the published version it was checked against; ``fresh``: no earlier process can have recorded
        it (no search first). ``status == "erased"``: as ``record_erasure``. ``parent`` defaults to the alias target.
        """
        checked = parent if parent is not None else self.current_version()
        if receipt.status == "erased":
            return self.record_erasure(receipt, manifest, checked)
        self.runs.record_not_found(receipt, manifest, checked, fresh=fresh)
        return checked

    def purge_superseded(self, request_id: str, keep: str) -> list[str]:
        """Make every version older than ``keep`` unloadable (see ``Purger.purge_superseded``)."""
        return self.purger.purge_superseded(request_id, keep)

    # ----- crash recovery ---------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Bring the registry in line with the store, finishing whatever a crash or outage interrupted.

        In order: staging folders of dead processes are removed; the store's published version
        (training, erasure or ingest) is recorded if the registry lags it, from the receipt kept
        in the store; every version older than the newest erasure version (or than a version
        standing in for an erasure MLflow missed) is purged, with LoggedModels no version
        references, while versions after it stay; the alias target's run is finished; other runs
        left RUNNING are marked FAILED. Cheap when nothing is pending
        (four lookups); runs on open (a deferred lineage: on first use, this call included, once),
        and may be called again at any time.
        """
        if not self._first_use.reconcile_first():  # the first use's reconcile is this one
            self._reconcile()

    def _reconcile(self) -> None:
        self.staging.sweep()
        manifest = Catalog(self.store).latest()
        target = self._alias_target()  # the parent of a version recorded now: one lookup for both
        refuse_another_stores_registry(self.registry, target)  # a copy's registry: before any MLflow write
        tag = target.tags.get("expunge.ensemble_version") if target is not None else None
        recorded = int(tag) if tag else None
        self.purger.finished = None
        if manifest is not None and (recorded is None or recorded < manifest.version):
            manifest = self.packaging.hold(manifest)  # its checkpoints, before a commit beside purges them
            behind = f"its alias serves v{recorded}" if recorded is not None else "it has no version of this store"
            log.warning("MLflow lags the store (%s; the store is at v%d): recording it now", behind, manifest.version)
            self._record_published(manifest, None if target is None else str(target.version))
        # Every version older than the newest erasure's (or the version standing in for an erasure
        # MLflow missed) held the erased subjects; versions after it (ingests, trainings) stay. A
        # version just recorded here that purged (``finished``) is that newest one: no second scan.
        erasures = [
            v
            for v in (self.registry.model_versions() if self.purger.finished is None else [])
            if v.tags.get("expunge.kind") == "erasure" or SUPERSEDES_ERASURE in v.tags
        ]
        if erasures:
            newest = max(erasures, key=lambda v: int(v.version))
            request = newest.tags.get(SUPERSEDES_ERASURE) or newest.tags.get(REQUEST_TAG, "unknown")
            self.purge_superseded(request, str(newest.version))
        target = self._alias_target()
        if target is None:
            return
        self._finish_run_of(target)
        ensemble = target.tags.get("expunge.ensemble_version", "")
        self.runs.retire_interrupted(target.run_id, int(ensemble) if ensemble.isdigit() else 0)

    def _record_published(self, manifest: EnsembleManifest, parent: str | None) -> None:
        """Record ``manifest``'s version; ``parent``: the registry version the alias serves now."""
        if manifest.kind == "train":
            self.record_training(manifest, {})
        elif manifest.kind == "ingest":
            self.record_ingest(ingest_receipt(self.store, manifest), manifest, parent)
        else:
            receipt = erasure_receipt(self.store, manifest)
            version = self.record_erasure(receipt, manifest, parent)
            joined = joined_ingest_receipt(self.store, receipt, manifest)
            if joined is not None:  # its own run, with the erasure's version: one commit for both
                run_id = self.runs.start_ingest(joined, manifest, parent)
                self.runs.finish_ingest(run_id, joined, parent, version)
                self.runs.end(run_id)

    def _finish_run_of(self, version: Any) -> None:
        """Close the run that explains ``version`` if its record was interrupted after the version existed."""
        if not version.run_id:
            return
        run = self.client.get_run(version.run_id)
        if run.info.status != "RUNNING":
            return
        if version.tags.get("expunge.kind") == "erasure":
            ensemble = int(version.tags.get("expunge.ensemble_version", "0"))
            parent = version.tags.get("expunge.parent_version", "none")
            manifest = Catalog(self.store).read(ensemble)
            receipt = erasure_receipt(self.store, manifest)
            self.runs.finish_erasure(
                version.run_id, receipt, None if parent == "none" else parent, str(version.version)
            )
        elif version.tags.get("expunge.kind") == "ingest":
            ensemble = int(version.tags.get("expunge.ensemble_version", "0"))
            parent = version.tags.get("expunge.parent_version", "none")
            ingest = ingest_receipt(self.store, Catalog(self.store).read(ensemble))
            self.runs.finish_ingest(version.run_id, ingest, None if parent == "none" else parent, str(version.version))
        self.runs.end(version.run_id)
