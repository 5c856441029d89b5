"""The connection to MLflow: tracking URIs, this deployment's experiment and registered model, tag names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import StorageConfig, TrackingConfig
from orchestrator.errors import ConfigError
from shards.store import ObjectStore

__all__ = ["LOGGED_MODEL_TAG", "PURGED_BY_REQUEST", "Registry", "artifacts_beside", "default_tracking_uri"]

#: Version tag naming the erasure request whose commit purged the version's weights.
PURGED_BY_REQUEST = "expunge.purged_by_request"
#: MLflow's sqlite registry does not keep a version's model_id, so the version carries it as a tag.
LOGGED_MODEL_TAG = "expunge.logged_model_id"


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """``sqlite:///<dir>/mlflow.db``: MLflow's own default, made explicit."""
    base = Path(workdir) if workdir is not None else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def artifacts_beside(uri: str) -> str | None:
    """``<db folder>/mlruns`` for a sqlite store: MLflow's default (``./mlruns``) depends on the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()


@dataclass(frozen=True)
class Registry:
    """Where one deployment's lineage lives: the client, its experiment and registered model, the shard store."""

    client: Any  # mlflow.MlflowClient (untyped)
    tracking: TrackingConfig
    uri: str
    backend_store_uri: str
    experiment_id: str
    store: ObjectStore

    @property
    def model_name(self) -> str:
        return self.tracking.model_name

    @property
    def alias(self) -> str:
        return self.tracking.alias

    @property
    def store_uri(self) -> str:
        return self.store.uri

    @classmethod
    def open(cls, tracking: TrackingConfig, storage: StorageConfig | str) -> Registry:
        """Connect, and create the experiment and the registered model when they do not exist yet."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = tracking.uri or default_tracking_uri()
        backend_store_uri = tracking.backend_store_uri or uri
        if backend_store_uri.startswith(("http://", "https://")):
            raise ConfigError(
                f"tracking.uri is the server {uri!r} but tracking.backend_store_uri is not set: purging "
                "erased subjects' model versions runs `mlflow gc`, which needs the server's own database. "
                "Set tracking.backend_store_uri to the URI the server was started with (--backend-store-uri)."
            )
        client = MlflowClient(tracking_uri=uri)
        store = ObjectStore(storage)
        experiment = client.get_experiment_by_name(tracking.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(
                tracking.experiment, artifact_location=tracking.artifact_location or artifacts_beside(uri)
            )
        )
        try:
            client.get_registered_model(tracking.model_name)
        except MlflowException:
            client.create_registered_model(
                tracking.model_name,
                description="Expunge SISA ensemble; one version per training or erasure commit. Load "
                f"models:/{tracking.model_name}@{tracking.alias} with mlflow.pyfunc.load_model.",
            )
        return cls(client, tracking, uri, backend_store_uri, str(experiment_id), store)
