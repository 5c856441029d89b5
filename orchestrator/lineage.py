"""MLflow lineage through ``MlflowClient`` only: a run and a servable model version per commit, and purging."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from orchestrator.catalog import EnsembleManifest
from orchestrator.config import CustomModelConfig, MFConfig, StorageConfig, TrackingConfig
from orchestrator.errors import ConfigError, LineagePurgeFailed
from orchestrator.receipts import ErasureReceipt
from orchestrator.serving import ENSEMBLE_ARTIFACT, export_ensemble, read_shard_manifest
from shards.shard import shard_prefix
from shards.store import ObjectStore

__all__ = ["PURGED_BY_REQUEST", "Lineage", "default_tracking_uri"]

log = logging.getLogger(__name__)

#: Version tag naming the erasure request whose commit purged the version's weights.
PURGED_BY_REQUEST = "expunge.purged_by_request"
_PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
# Imported by the pyfunc at load time; pinned to what wrote the checkpoints.
_SERVING_REQUIREMENTS = ("torch", "numpy", "pandas", "pyarrow", "pydantic", "pyyaml", "fsspec")
_GC_TIMEOUT_S = 300
# MLflow's sqlite registry does not keep a version's model_id, so the version carries it as a tag.
_LOGGED_MODEL_TAG = "expunge.logged_model_id"


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """``sqlite:///<dir>/mlflow.db``: MLflow's own default, made explicit."""
    base = Path(workdir) if workdir is not None else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def _artifacts_beside(uri: str) -> str | None:
    """``<db folder>/mlruns`` for a sqlite store: MLflow's default (``./mlruns``) depends on the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()


def _requirements() -> list[str]:
    pins = []
    for name in _SERVING_REQUIREMENTS:
        version = importlib.metadata.version(name).split("+")[0]  # torch's "+cpu" is an index, not a version
        pins.append(f"{name}=={version}")
    return pins


def _stage_code(destination: Path) -> list[str]:
    """Copy the ``orchestrator`` and ``shards`` packages, so a version loads with the code that wrote it."""
    import shards

    paths = []
    for package in (Path(__file__).parent, Path(shards.__file__).parent):
        target = destination / package.name
        shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        paths.append(str(target))
    return paths


def _signature(manifest: EnsembleManifest) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    subjects = [ColSpec("string", "subject_digest", required=False), ColSpec("string", "subject_id", required=False)]
    if isinstance(manifest.model, CustomModelConfig):
        return None  # your model's inputs are yours to describe
    if isinstance(manifest.model, MFConfig):
        inputs = Schema([*subjects, ColSpec("long", "item_id")])
        outputs = Schema([TensorSpec(np.dtype(np.float64), (-1,))])
    else:
        inputs = Schema([*subjects, ColSpec(Array("double"), "features")])
        outputs = Schema([TensorSpec(np.dtype(np.float64), (-1, manifest.model.num_classes))])
    return ModelSignature(inputs=inputs, outputs=outputs)


class Lineage:
    """Records a run and a servable model version per commit, and purges versions an erasure made unlawful."""

    def __init__(self, tracking: TrackingConfig, storage: StorageConfig | str) -> None:
        """``storage`` is the shard store the coordinator commits to (its options reach S3 here too)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.tracking = tracking
        self.uri = tracking.uri or default_tracking_uri()
        self.backend_store_uri = tracking.backend_store_uri or self.uri
        if self.backend_store_uri.startswith(("http://", "https://")):
            raise ConfigError(
                f"tracking.uri is the server {self.uri!r} but tracking.backend_store_uri is not set: purging "
                "erased subjects' model versions runs `mlflow gc`, which needs the server's own database. "
                "Set tracking.backend_store_uri to the URI the server was started with (--backend-store-uri)."
            )
        self.client = MlflowClient(tracking_uri=self.uri)
        self.store = ObjectStore(storage)
        self.store_uri = self.store.uri
        experiment = self.client.get_experiment_by_name(tracking.experiment)
        self.experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(
                tracking.experiment, artifact_location=tracking.artifact_location or _artifacts_beside(self.uri)
            )
        )
        try:
            self.client.get_registered_model(tracking.model_name)
        except MlflowException:
            self.client.create_registered_model(
                tracking.model_name,
                description="Expunge SISA ensemble; one version per training or erasure commit. Load "
                f"models:/{tracking.model_name}@{tracking.alias} with mlflow.pyfunc.load_model.",
            )

    def current_version(self) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.tracking.model_name, self.tracking.alias).version)
        except MlflowException:
            return None

    def recorded_ensemble_version(self) -> int | None:
        """The store version the alias's model version was built from (None: nothing recorded)."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(self.tracking.model_name, self.tracking.alias)
        except MlflowException:
            return None
        tag = version.tags.get("expunge.ensemble_version")
        return int(tag) if tag else None

    # ----- a version per commit -----------------------------------------------------------------
    def _log_shard_inputs(self, run_id: str, manifest: EnsembleManifest, retrained: set[int]) -> None:
        """Each shard's data version as a dataset input: keys and digests only, never rows."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = "s3" if self.store.protocol.startswith("s3") else "local"
        inputs = []
        for shard, version in enumerate(manifest.shard_versions):
            shard_manifest = read_shard_manifest(self.store, shard, version)
            records = json.dumps([s.records_sha256 for s in shard_manifest.slices])
            dataset = Dataset(
                name=f"expunge-shard-{shard:04d}",
                digest=hashlib.sha256(records.encode()).hexdigest()[:32],
                source_type=source_type,
                source=json.dumps({"uri": self.store.url(f"{shard_prefix(shard)}/manifests/{version:08d}.json")}),
                profile=json.dumps(
                    {
                        "num_rows": sum(s.rows for s in shard_manifest.slices),
                        "slices": len(shard_manifest.slices),
                        "shard_version": version,
                    }
                ),
            )
            context = "retrained" if shard in retrained else "reused"
            inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def _log_servable(self, run_id: str, manifest: EnsembleManifest) -> tuple[str, str]:
        """Log the ensemble as a pyfunc LoggedModel holding a copy of every constituent: (id, artifact location)."""
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        model = self.client.create_logged_model(
            self.experiment_id,
            name=f"ensemble-v{manifest.version}",
            source_run_id=run_id,
            tags={"expunge.ensemble_version": str(manifest.version), "expunge.storage": self.store_uri},
            model_type="expunge-sisa-ensemble",
        )
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="expunge-model-") as scratch:
            root = Path(scratch)
            export_ensemble(self.store, manifest, root / "ensemble")
            with warnings.catch_warnings():
                # An input example would be loaded and predicted at logging time; the signature suffices.
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                mlflow.pyfunc.save_model(
                    path=str(root / "model"),
                    python_model=str(_PYFUNC_FILE),
                    artifacts={ENSEMBLE_ARTIFACT: str(root / "ensemble")},
                    code_paths=_stage_code(root / "code"),
                    pip_requirements=_requirements(),
                    signature=_signature(manifest),
                    mlflow_model=Model(
                        artifact_path=model.artifact_location,
                        model_uuid=model.model_id,
                        run_id=run_id,
                        model_id=model.model_id,
                    ),
                )
            self.client.log_model_artifacts(model.model_id, str(root / "model"))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return str(model.model_id), str(model.artifact_location)

    def _new_version(
        self, run_id: str, manifest: EnsembleManifest, parent: str | None, retrained: set[int], description: str
    ) -> str:
        self.client.log_text(run_id, manifest.model_dump_json(indent=1), "ensemble/manifest.json")
        self._log_shard_inputs(run_id, manifest, retrained)
        model_id, location = self._log_servable(run_id, manifest)
        tags = {
            "expunge.ensemble_version": str(manifest.version),
            "expunge.parent_version": parent or "none",
            "expunge.request_id": manifest.request_id or "none",
            "expunge.kind": manifest.kind,
            "expunge.storage": self.store_uri,
            _LOGGED_MODEL_TAG: model_id,
        }
        version = self.client.create_model_version(
            self.tracking.model_name,
            # The artifact location, not models:/<id>: MLflow's sqlite registry resolves the
            # latter through the process-global tracking URI, not this client's.
            source=location,
            run_id=run_id,
            tags=tags,
            model_id=model_id,
            description=description,
        )
        # The alias moves only after the store commit (the caller publishes first).
        self.client.set_registered_model_alias(self.tracking.model_name, self.tracking.alias, version.version)
        return str(version.version)

    def record_training(self, manifest: EnsembleManifest, metrics: dict[str, float]) -> str:
        parent = self.current_version()
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"train-v{manifest.version}",
            tags={
                "expunge.kind": "train",
                "expunge.storage": self.store_uri,
                "expunge.ensemble_version": str(manifest.version),
            },
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
        version = self._new_version(
            run_id,
            manifest,
            parent,
            set(range(manifest.sharding.shards)),
            f"Training of ensemble v{manifest.version} ({manifest.rows} rows).",
        )
        self.client.set_terminated(run_id)
        return version

    # ----- erasure runs ---------------------------------------------------------------------------
    def _log_retrain_chart(self, run_id: str, receipt: ErasureReceipt, full_retrain: float) -> None:
        # Figure without pyplot renders with Agg and leaves matplotlib's global backend alone.
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4.5, 2.8), dpi=100)
        axes = figure.subplots()
        axes.bar([f"shard {s.shard}" for s in receipt.shards], [s.seconds for s in receipt.shards], color="#4c72b0")
        if full_retrain > 0:
            axes.axhline(full_retrain, color="#c44e52", linestyle="--", label="full retrain (measured at training)")
            axes.legend(fontsize=7)
        axes.set_ylabel("retrain seconds")
        axes.set_title(f"request {receipt.request_id}", fontsize=9)
        figure.tight_layout()
        self.client.log_figure(run_id, figure, "retrain_seconds.png")

    def record_erasure(self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        """Log the erasure run and the new version, move the alias, then purge every earlier version."""
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"erasure-{receipt.request_id}",
            tags={
                "expunge.kind": "erasure",
                "expunge.request_id": receipt.request_id,
                "expunge.storage": self.store_uri,
                "expunge.ensemble_version": str(manifest.version),
                "expunge.parent_version": parent or "none",
            },
        )
        run_id = run.info.run_id
        params = {
            "request_id": receipt.request_id,
            "subjects": str(len(receipt.subject_digests)),
            "affected_shards": ",".join(str(s) for s in receipt.affected_shards) or "none",
            "untouched_shards": ",".join(str(s) for s in receipt.untouched_shards) or "none",
            "ensemble_version_before": str(receipt.model_version_before),
            "ensemble_version_after": str(receipt.model_version_after),
            "registry_version_before": parent or "none",
        }
        for shard in receipt.shards:
            params[f"shard_{shard.shard}.slices_retrained"] = ",".join(map(str, shard.slices_retrained))
            params[f"shard_{shard.shard}.restarted_from"] = shard.restarted_from or "scratch"
        metrics = {
            "rows_removed": float(receipt.rows_removed),
            "erasure_seconds": receipt.seconds,
            "slices_retrained": float(sum(len(s.slices_retrained) for s in receipt.shards)),
            # The receipt's own figures, so the run, the receipt and the demo agree by construction.
            "retrain_seconds": receipt.retrain_seconds,
            "full_retrain_seconds": receipt.full_retrain_seconds,
            "speedup": receipt.speedup,
        }
        for shard in receipt.shards:
            metrics[f"retrain_seconds_shard_{shard.shard}"] = shard.seconds
        # One tag per keyed digest makes "which request erased this digest?" a run search.
        tags = [RunTag(f"expunge.subject_digest.{d}", "erased") for d in receipt.subject_digests]
        tags += [RunTag(f"expunge.subject_digest.{d}", "not_found") for d in receipt.not_found_digests]
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=tags,
        )
        version = self._new_version(
            run_id,
            manifest,
            parent,
            set(receipt.affected_shards),
            f"Erasure {receipt.request_id}: {receipt.rows_removed} row(s) of {len(receipt.subject_digests)} "
            f"subject(s) removed; shards {receipt.affected_shards} retrained.",
        )
        self.client.log_param(run_id, "registry_version_after", version)
        self.client.set_tag(run_id, "expunge.registry_version", version)
        final = receipt.model_copy(update={"registry_version_before": parent, "registry_version_after": version})
        self.client.log_text(run_id, final.model_dump_json(indent=1), "receipt.json")
        self._log_retrain_chart(run_id, final, receipt.full_retrain_seconds)
        self.client.set_terminated(run_id)
        self.purge_superseded(receipt.request_id, version)
        return version

    # ----- purging ----------------------------------------------------------------------------------
    def purge_superseded(self, request_id: str, keep: str) -> list[str]:
        """Make every version older than ``keep`` unloadable: delete its LoggedModel and gc its files.

        Expunge has no incremental data add, so every earlier version holds every subject an
        erasure removes: all of them are purged. The versions stay, tagged with the request
        that purged them, so lineage (runs, tags, receipts) survives. Idempotent: a failed
        purge is finished by calling this again (or by the next erasure).
        """
        from mlflow.exceptions import MlflowException

        name = self.tracking.model_name
        doomed = [
            v
            for v in self.client.search_model_versions(f"name = '{name}'")
            if int(v.version) < int(keep) and PURGED_BY_REQUEST not in v.tags
        ]
        model_ids: list[str] = []
        for version in doomed:
            model_id = version.tags.get(_LOGGED_MODEL_TAG)
            if not model_id:
                raise LineagePurgeFailed(
                    f"model version {name}/{version.version} has no LoggedModel id (source {version.source}); "
                    "it was not registered by this Expunge release. Delete it by hand with "
                    "MlflowClient.delete_model_version and remove its artifacts."
                )
            for alias in version.aliases:
                self.client.delete_registered_model_alias(name, alias)
            try:
                self.client.get_logged_model(model_id)
            except MlflowException:
                pass  # soft-deleted by an interrupted purge: gc below finishes it
            else:
                self.client.delete_logged_model(model_id)
            model_ids.append(model_id)
        if model_ids:
            self._gc(model_ids)
        for version in doomed:
            self.client.set_model_version_tag(name, version.version, PURGED_BY_REQUEST, request_id)
            self.client.set_model_version_tag(name, version.version, "expunge.purged_by_version", keep)
            self.client.update_model_version(
                name,
                version.version,
                description=f"PURGED by erasure {request_id} (now version {keep}): weights deleted. "
                f"Was: {version.description or ''}",
            )
        if doomed:
            log.info(
                "request %s: purged %d earlier model version(s) of %s",
                request_id,
                len(doomed),
                self.tracking.model_name,
            )
        return [str(v.version) for v in doomed]

    def _gc(self, model_ids: list[str]) -> None:
        """``mlflow gc`` in a child process: the only call that deletes a LoggedModel's files."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri}
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "gc",
            "--backend-store-uri",
            self.backend_store_uri,
            "--logged-model-ids",
            ",".join(model_ids),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_GC_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise LineagePurgeFailed(
                f"`mlflow gc` failed to delete the files of superseded model(s) {model_ids} "
                f"(exit {done.returncode}): {done.stderr.strip()[-800:]}. The erasure itself is committed; "
                "fix the cause (tracking.backend_store_uri, artifact store access) and call "
                "Lineage.purge_superseded(request_id, keep=<current version>) to finish the purge."
            )
