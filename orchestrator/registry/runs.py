"""MLflow runs that explain each model version: params, metrics, digest tags, the receipt, a chart, data inputs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from expunge.orchestrator.catalog import EnsembleManifest
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.registry.faults import fault_point
from expunge.orchestrator.registry.tracking import REQUEST_TAG, Registry, equals_filter, same_store
from expunge.orchestrator.serving.servable import read_shard_manifest
from expunge.shards.manifest import shard_prefix

__all__ = ["REASON_TAG", "TICKET_TAG", "RunRecorder"]

#: Run tags of an erasure request's requester reference and reason (screened free text, never
#: personal data): a privacy officer finds the runs of a case with ``tags."expunge.ticket" = '<ticket>'``.
TICKET_TAG = "expunge.ticket"
REASON_TAG = "expunge.reason"


def _request_text_tags(receipt: ErasureReceipt) -> dict[str, str]:
    """The receipt's ticket and reason as run tags (absent when not given)."""
    given = {TICKET_TAG: receipt.ticket, REASON_TAG: receipt.reason}
    return {tag: value for tag, value in given.items() if value is not None}


def _digest_tags(receipt: ErasureReceipt) -> dict[str, str]:
    """One tag per keyed digest (``erased`` or ``not_found``): "which request erased this digest?" is a run search."""
    missed = set(receipt.not_found_digests)
    if receipt.status == "not_found":
        missed |= set(receipt.subject_digests)
    return {f"expunge.subject_digest.{d}": "not_found" if d in missed else "erased" for d in receipt.subject_digests}


class RunRecorder:
    """Writes the runs of one deployment's experiment; never touches model versions."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.client = registry.client

    # ----- training ---------------------------------------------------------------------------------
    def start_training(self, manifest: EnsembleManifest, metrics: dict[str, float]) -> str:
        """A ``train-v<N>`` run with the job's settings as params; returns its id.

        Metric ``train_seconds`` is always the manifest's (``EnsembleManifest.train_seconds``: wall
        time of the parallel training phase, actors already started, in seconds), the baseline of
        every receipt's speed-up; ``metrics`` adds others (e.g. ``train_total_seconds``).

        Raises:
            ValueError: ``metrics`` names ``train_seconds`` (it has one definition, the manifest's).
        """
        if "train_seconds" in metrics:
            raise ValueError(
                "train_seconds is the manifest's training phase (EnsembleManifest.train_seconds); "
                "log another quantity under another name, e.g. train_total_seconds"
            )
        fault_point("run.create")
        run = self.client.create_run(
            self.registry.experiment_id,
            run_name=f"train-v{manifest.version}",
            tags={
                "expunge.kind": "train",
                **self.registry.store_tags,
                "expunge.ensemble_version": str(manifest.version),
            },
        )
        run_id = str(run.info.run_id)
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
        fault_point("run.log")
        for name, value in params.items():
            self.client.log_param(run_id, name, value)
        for name, value in {"train_seconds": manifest.train_seconds, **metrics}.items():
            self.client.log_metric(run_id, name, value)
        return run_id

    # ----- erasure ----------------------------------------------------------------------------------
    def start_erasure(self, receipt: ErasureReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        """An ``erasure-<request>`` run with the receipt's figures and one tag per subject digest."""
        from mlflow.entities import Metric, Param, RunTag

        fault_point("run.create")
        run_id = self._create_request_run(receipt, manifest, "erased", {"expunge.parent_version": parent or "none"})
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
        tags = [RunTag(k, v) for k, v in _digest_tags(receipt).items()]
        fault_point("run.log")
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=tags,
        )
        return run_id

    def _create_request_run(
        self, receipt: ErasureReceipt, manifest: EnsembleManifest, outcome: str, tags: dict[str, str]
    ) -> str:
        """The ``erasure-<request>`` run of a request, tagged with its outcome; returns the run id."""
        run = self.client.create_run(
            self.registry.experiment_id,
            run_name=f"erasure-{receipt.request_id}",
            tags={
                "expunge.kind": "erasure",
                "expunge.outcome": outcome,
                "expunge.request_id": receipt.request_id,
                **self.registry.store_tags,
                "expunge.ensemble_version": str(manifest.version),
                **_request_text_tags(receipt),
                **tags,
            },
        )
        return str(run.info.run_id)

    def record_not_found(
        self, receipt: ErasureReceipt, manifest: EnsembleManifest, checked: str | None, fresh: bool = False
    ) -> str:
        """A finished run for a request that found none of its subjects: no new version, the audit trail only.

        ``checked`` is the registry version the request was checked against (the alias target).
        Idempotent: a request already recorded as not found (a restart after its run, before its
        journal said so) keeps that run, and its id is returned. ``fresh``: the caller knows no
        run of it can exist (committed by this process, not yet recorded), so that search, which
        grows with the experiment's history, is skipped.
        """
        from mlflow.entities import Metric, Param, RunTag

        if not fresh and (recorded := self._not_found_run(receipt.request_id)) is not None:
            return recorded
        run_id = self._create_request_run(
            receipt, manifest, "not_found", {"expunge.registry_version": checked or "none"}
        )
        params = {
            "request_id": receipt.request_id,
            "subjects": str(len(receipt.subject_digests)),
            "ensemble_version_checked": str(manifest.version),
            "registry_version_checked": checked or "none",
        }
        metrics = {"rows_removed": 0.0, "erasure_seconds": receipt.seconds}
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in _digest_tags(receipt).items()],
        )
        final = receipt.model_copy(update={"registry_version_before": checked, "registry_version_after": checked})
        self.client.log_text(run_id, final.model_dump_json(indent=1), "receipt.json")
        self.client.set_terminated(run_id)
        return run_id

    def _not_found_run(self, request_id: str) -> str | None:
        """The id of this store's finished not-found run of ``request_id``, if one was recorded in full.

        A run cut short (its params, metrics or receipt not written: MLflow failed mid-way) is not
        reused: the retry records a complete one.
        """
        from mlflow.utils.search_utils import SearchUtils

        clause = equals_filter(f"tags.`{REQUEST_TAG}`", request_id, SearchUtils.parse_search_filter)
        wanted = clause or "tags.`expunge.outcome` = 'not_found'"
        for run in self.client.search_runs(
            [self.registry.experiment_id], f"{wanted} and attributes.status = 'FINISHED'"
        ):
            tags = run.data.tags
            if (
                (tags.get(REQUEST_TAG), tags.get("expunge.outcome")) == (request_id, "not_found")
                and same_store(tags.get("expunge.storage", ""), self.registry.store_uri)
                and run.info.status == "FINISHED"
            ):
                return str(run.info.run_id)
        return None

    def finish_erasure(self, run_id: str, receipt: ErasureReceipt, parent: str | None, version: str) -> None:
        """The registry versions, the final receipt and (``tracking.charts``) the retrain chart, once the version exists.

        Idempotent (same values), so finishing the run of an interrupted record is calling it again.
        """
        fault_point("run.receipt")
        self._log_registry_version(run_id, version)
        final = receipt.model_copy(update={"registry_version_before": parent, "registry_version_after": version})
        self.client.log_text(run_id, final.model_dump_json(indent=1), "receipt.json")
        fault_point("run.chart")
        if self.registry.tracking.charts:  # only when asked for: matplotlib costs seconds per erasure
            self._log_retrain_chart(run_id, final, receipt.full_retrain_seconds)

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

    # ----- ingest -------------------------------------------------------------------------------------
    def start_ingest(self, receipt: IngestReceipt, manifest: EnsembleManifest, parent: str | None) -> str:
        """An ``ingest-<request>`` run with the receipt's counts, per touched shard what it did, and its times.

        Counts and keys only: the batch appears as its keyed digest (``expunge.batch_digest``),
        never as record or subject ids.
        """
        from mlflow.entities import Metric, Param

        fault_point("run.create")
        run = self.client.create_run(
            self.registry.experiment_id,
            run_name=receipt.request_id if receipt.request_id.startswith("ingest-") else f"ingest-{receipt.request_id}",
            tags={
                "expunge.kind": "ingest",
                "expunge.request_id": receipt.request_id,
                **self.registry.store_tags,
                "expunge.ensemble_version": str(manifest.version),
                "expunge.parent_version": parent or "none",
                "expunge.batch_digest": receipt.batch_digest,
            },
        )
        run_id = str(run.info.run_id)
        params = {
            "request_id": receipt.request_id,
            "touched_shards": ",".join(map(str, receipt.touched_shards)) or "none",
            "untouched_shards": ",".join(map(str, receipt.untouched_shards)) or "none",
            "ensemble_version_before": str(receipt.model_version_before),
            "ensemble_version_after": str(receipt.model_version_after),
            "registry_version_before": parent or "none",
        }
        for shard in receipt.shards:
            params[f"shard_{shard.shard}.rows_added"] = str(shard.rows_added)
            params[f"shard_{shard.shard}.slices_retrained"] = ",".join(map(str, shard.slices_retrained)) or "none"
            params[f"shard_{shard.shard}.slices_merged"] = ",".join(map(str, shard.slices_merged)) or "none"
            params[f"shard_{shard.shard}.restarted_from"] = shard.restarted_from or "scratch"
        metrics = {
            "rows_in_batch": float(receipt.rows_in_batch),
            "rows_added": float(receipt.rows_added),
            "rows_refused_erased": float(receipt.rows_refused_erased),
            "rows_already_stored": float(receipt.rows_already_stored),
            "subjects_added": float(receipt.subjects_added),
            "new_subjects": float(receipt.new_subjects),
            "slices_retrained": float(sum(len(s.slices_retrained) for s in receipt.shards)),
            # The receipt's own figures: the whole ingest up to the commit, and its retraining phase.
            "ingest_seconds": receipt.seconds,
            "retrain_seconds": receipt.retrain_seconds,
            "retrain_cpu_seconds": receipt.retrain_cpu_seconds,
            "driver_cpu_seconds": receipt.driver_cpu_seconds,
            "full_retrain_cpu_seconds": receipt.full_retrain_cpu_seconds,
            "cpu_fraction": receipt.cpu_fraction,
        }
        for shard in receipt.shards:
            metrics[f"retrain_seconds_shard_{shard.shard}"] = shard.seconds
            metrics[f"retrain_cpu_seconds_shard_{shard.shard}"] = shard.cpu_seconds
        fault_point("run.log")
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
        )
        return run_id

    def finish_ingest(self, run_id: str, receipt: IngestReceipt, parent: str | None, version: str) -> None:
        """The registry versions and the final receipt, once the version exists; idempotent (same values).

        The receipt logged is the one the ingest stored, with the registry versions filled in and
        its ``registration`` pending entry dropped: the version it was pending for now exists.
        """
        fault_point("run.receipt")
        self._log_registry_version(run_id, version)
        final = receipt.model_copy(
            update={
                "registry_version_before": parent,
                "registry_version_after": version,
                "pending": tuple(p for p in receipt.pending if not p.startswith("registration:")),
            }
        )
        self.client.log_text(run_id, final.model_dump_json(indent=1), "receipt.json")

    def _log_registry_version(self, run_id: str, version: str) -> None:
        """Param ``registry_version_after`` and tag ``expunge.registry_version``: one write, not two."""
        from mlflow.entities import Param, RunTag

        self.client.log_batch(
            run_id,
            params=[Param("registry_version_after", version)],
            tags=[RunTag("expunge.registry_version", version)],
        )

    # ----- what every versioned run holds ------------------------------------------------------------
    def log_ensemble(self, run_id: str, manifest: EnsembleManifest, retrained: set[int]) -> None:
        """The published manifest as an artifact and each shard's data version as a dataset input."""
        fault_point("run.inputs")
        self.client.log_text(run_id, manifest.model_dump_json(indent=1), "ensemble/manifest.json")
        self._log_shard_inputs(run_id, manifest, retrained)

    def _log_shard_inputs(self, run_id: str, manifest: EnsembleManifest, retrained: set[int]) -> None:
        """Each shard's data version as a dataset input: keys and digests only, never rows."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        store = self.registry.store
        source_type = "s3" if store.protocol.startswith("s3") else "local"
        inputs = []
        for shard, version in enumerate(manifest.shard_versions):
            shard_manifest = read_shard_manifest(store, shard, version)
            records = json.dumps([s.records_sha256 for s in shard_manifest.slices])
            dataset = Dataset(
                name=f"expunge-shard-{shard:04d}",
                digest=hashlib.sha256(records.encode()).hexdigest()[:32],
                source_type=source_type,
                source=json.dumps({"uri": store.url(f"{shard_prefix(shard)}/manifests/{version:08d}.json")}),
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

    def end(self, run_id: str) -> None:
        fault_point("run.end")
        self.client.set_terminated(run_id)

    def retire_interrupted(self, keep_run_id: str | None, up_to_ensemble: int) -> list[str]:
        """Mark FAILED the runs of this store left RUNNING by an interrupted record; returns their ids.

        Only runs of ensemble versions up to ``up_to_ensemble`` (what the alias serves): a run of
        a newer version may be being written by another process right now.
        """
        retired = []
        for run in self.registry.running_runs():
            tags = run.data.tags
            if run.info.run_id == keep_run_id or not same_store(
                tags.get("expunge.storage", ""), self.registry.store_uri
            ):
                continue
            version = tags.get("expunge.ensemble_version", "")
            if tags.get("expunge.kind") not in {"train", "erasure", "ingest"} or not version.isdigit():
                continue
            if int(version) > up_to_ensemble:
                continue
            self.client.set_tag(run.info.run_id, "expunge.interrupted", "true")
            self.client.set_terminated(run.info.run_id, status="FAILED")
            retired.append(str(run.info.run_id))
        return retired
