"""MLflow lineage through ``MlflowClient`` only: a run per training and per erasure, a version per commit."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from orchestrator.catalog import EnsembleManifest
from orchestrator.config import TrackingConfig
from orchestrator.receipts import ErasureReceipt

__all__ = ["Lineage", "default_tracking_uri"]

log = logging.getLogger(__name__)


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """``sqlite:///<dir>/mlflow.db``: MLflow's own default, made explicit."""
    base = Path(workdir) if workdir is not None else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


class Lineage:
    """Records model versions (tagged with parent version and request) and erasure runs."""

    def __init__(self, tracking: TrackingConfig, store_uri: str) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self.tracking = tracking
        self.uri = tracking.uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.store_uri = store_uri
        experiment = self.client.get_experiment_by_name(tracking.experiment)
        self.experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(tracking.experiment)
        )
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(tracking.model_name)
        except MlflowException:
            self.client.create_registered_model(
                tracking.model_name, description="Lethe SISA ensemble; one version per training or erasure commit."
            )

    def current_version(self) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.tracking.model_name, self.tracking.alias).version)
        except MlflowException:
            return None

    def _new_version(self, run_id: str, manifest: EnsembleManifest, parent: str | None) -> str:
        self.client.log_text(run_id, manifest.model_dump_json(indent=1), "ensemble/manifest.json")
        tags = {
            "lethe.ensemble_version": str(manifest.version),
            "lethe.parent_version": parent or "none",
            "lethe.request_id": manifest.request_id or "none",
            "lethe.kind": manifest.kind,
            "lethe.storage": self.store_uri,
        }
        version = self.client.create_model_version(
            self.tracking.model_name, source=f"runs:/{run_id}/ensemble", run_id=run_id, tags=tags
        )
        # The alias moves only after the store commit (the caller publishes first).
        self.client.set_registered_model_alias(self.tracking.model_name, self.tracking.alias, version.version)
        return str(version.version)

    def record_training(self, manifest: EnsembleManifest, metrics: dict[str, float]) -> str:
        parent = self.current_version()
        run = self.client.create_run(
            self.experiment_id, run_name=f"train-v{manifest.version}", tags={"lethe.kind": "train"}
        )
        run_id = run.info.run_id
        params: dict[str, Any] = {
            "shards": manifest.sharding.shards,
            "slices": manifest.sharding.slices,
            "placement": manifest.sharding.placement,
            "model": manifest.model.kind,
            "epochs": manifest.training.epochs,
            "batch_size": manifest.training.batch_size,
            "learning_rate": manifest.training.learning_rate,
            "seed": manifest.training.seed,
            "rows": manifest.rows,
        }
        for name, value in params.items():
            self.client.log_param(run_id, name, value)
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, value)
        version = self._new_version(run_id, manifest, parent)
        self.client.set_terminated(run_id)
        return version

    def record_erasure(self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"erasure-{receipt.request_id}",
            tags={"lethe.kind": "erasure", "lethe.request_id": receipt.request_id},
        )
        run_id = run.info.run_id
        self.client.log_param(run_id, "request_id", receipt.request_id)
        self.client.log_param(run_id, "affected_shards", ",".join(str(s) for s in receipt.affected_shards))
        self.client.log_metric(run_id, "rows_removed", receipt.rows_removed)
        self.client.log_metric(run_id, "erasure_seconds", receipt.seconds)
        for shard in receipt.shards:
            self.client.log_metric(run_id, f"retrain_seconds_shard_{shard.shard}", shard.seconds)
        version = self._new_version(run_id, manifest, parent)
        final = receipt.model_copy(update={"registry_version_before": parent, "registry_version_after": version})
        self.client.log_text(run_id, final.model_dump_json(indent=1), "receipt.json")
        self.client.set_terminated(run_id)
        return version

    def describe(self) -> dict[str, str]:
        return {
            "tracking_uri": self.uri,
            "model_name": self.tracking.model_name,
            "alias": self.tracking.alias,
            "experiment": self.tracking.experiment,
            "summary": json.dumps({}),
        }
