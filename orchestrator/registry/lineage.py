"""``Lineage``: the one object the coordinator talks to; it composes runs, packaging and purge."""

from __future__ import annotations

from orchestrator.catalog import EnsembleManifest
from orchestrator.config import StorageConfig, TrackingConfig
from orchestrator.receipts import ErasureReceipt
from orchestrator.registry.packaging import Packager
from orchestrator.registry.purge import Purger
from orchestrator.registry.runs import RunRecorder
from orchestrator.registry.tracking import Registry
from shards.store import ObjectStore

__all__ = ["Lineage"]


class Lineage:
    """Records a run and a servable model version per commit, and purges versions an erasure made unlawful."""

    def __init__(self, tracking: TrackingConfig, storage: StorageConfig | str) -> None:
        """``storage`` is the shard store the coordinator commits to (its options reach S3 here too)."""
        self.registry = Registry.open(tracking, storage)
        self.runs = RunRecorder(self.registry)
        self.packaging = Packager(self.registry)
        self.purger = Purger(self.registry)

    # ----- what callers read --------------------------------------------------------------------
    @property
    def client(self):  # type: ignore[no-untyped-def]
        """The ``MlflowClient`` bound to this deployment's tracking URI."""
        return self.registry.client

    @property
    def tracking(self) -> TrackingConfig:
        return self.registry.tracking

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

    def current_version(self) -> str | None:
        """The registry version the alias points at (None: nothing registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.registry.model_name, self.registry.alias).version)
        except MlflowException:
            return None

    def recorded_ensemble_version(self) -> int | None:
        """The store version the alias's model version was built from (None: nothing recorded)."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(self.registry.model_name, self.registry.alias)
        except MlflowException:
            return None
        tag = version.tags.get("expunge.ensemble_version")
        return int(tag) if tag else None

    # ----- a version per commit -----------------------------------------------------------------
    def _new_version(
        self, run_id: str, manifest: EnsembleManifest, parent: str | None, retrained: set[int], description: str
    ) -> str:
        self.runs.log_ensemble(run_id, manifest, retrained)
        servable = self.packaging.log_servable(run_id, manifest)
        return self.packaging.register(run_id, manifest, parent, servable, description)

    def record_training(self, manifest: EnsembleManifest, metrics: dict[str, float]) -> str:
        """Log the training run and its version, and move the alias to it; returns the registry version."""
        parent = self.current_version()
        run_id = self.runs.start_training(manifest, metrics)
        version = self._new_version(
            run_id,
            manifest,
            parent,
            set(range(manifest.sharding.shards)),
            f"Training of ensemble v{manifest.version} ({manifest.rows} rows).",
        )
        self.runs.end(run_id)
        return version

    def record_erasure(self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        """Log the erasure run and the new version, move the alias, then purge every earlier version."""
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
        self.runs.finish_erasure(run_id, receipt, parent, version)
        self.runs.end(run_id)
        self.purge_superseded(receipt.request_id, version)
        return version

    def record_request(
        self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None = None
    ) -> str | None:
        """Record any erasure request; returns the registry version serving after it.

        ``status == "not_found"``: a finished run (``expunge.outcome=not_found``, the digests,
        the receipt, the version it was checked against) and no new version; ``manifest`` is
        the published version the request was checked against. ``status == "erased"``: as
        ``record_erasure``. ``parent`` defaults to the alias target.
        """
        checked = parent if parent is not None else self.current_version()
        if receipt.status == "erased":
            return self.record_erasure(receipt, manifest, checked)
        self.runs.record_not_found(receipt, manifest, checked)
        return checked

    def purge_superseded(self, request_id: str, keep: str) -> list[str]:
        """Make every version older than ``keep`` unloadable (see ``Purger.purge_superseded``)."""
        return self.purger.purge_superseded(request_id, keep)
