"""Helpers for lineage tests: rows whose subject ids look like personal data, and a personal-data scanner."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.registry.purge_notice import NOTICE_FILES
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID

#: A digest key as a deployment sets it in EXPUNGE_SUBJECT_KEY (hex of 32 random bytes: strong enough).
SERVING_KEY = "9f2c6a41d07be3584c1e9a7d2b60f8e3a5c4d19b7e02f6a83d5c1b9e47f0a26d"


def email_rows(users: int = 36, seed: int = 9) -> pa.Table:
    """Synthetic ratings whose subject ids are e-mail addresses (``person7@example.org``).

    The ``@`` ends every id, so no id is a substring of another and a scan has no false hits.
    """
    rows = synthetic_ratings(SyntheticRatingsConfig(users=users, items=30, ratings_per_user=6, seed=seed))
    ids = [f"{s.replace('user-', 'person')}@example.org" for s in rows.column(SUBJECT_ID).to_pylist()]
    return rows.set_column(rows.column_names.index(SUBJECT_ID), SUBJECT_ID, pa.array(ids, pa.string()))


def subjects(rows: pa.Table) -> list[str]:
    return sorted(set(rows.column(SUBJECT_ID).to_pylist()))


def without(rows: pa.Table, subject: str) -> pa.Table:
    return rows.filter(pc.not_equal(rows.column(SUBJECT_ID), subject))


def beyond_notice(paths: Iterable[object], model_id: str) -> list[str]:
    """Files (paths, or S3 ``key@version``) of LoggedModel ``model_id`` other than one copy of each purge-notice file.

    A purged version keeps only its notice (``purge_notice.py``; its bytes are checked in
    ``test_purged_versions.py``) and MLflow's ``registered_model_meta`` once someone loaded it.
    """
    allowed, seen, left = {*NOTICE_FILES, "registered_model_meta"}, set(), []
    for path in sorted(map(str, paths)):
        if model_id not in path:
            continue
        relative = path.split(f"{model_id}/artifacts/", 1)[-1].rsplit("@", 1)[0]
        if relative in allowed and relative not in seen:
            seen.add(relative)
            continue
        left.append(path)
    return left


def _files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()]


def personal_data_hits(tracking_uri: str, needles: list[str]) -> list[str]:
    """Every place in the tracking store where a needle occurs: names, params, tags, metrics, inputs, files."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri)
    hits: list[str] = []

    def check(where: str, *texts: object) -> None:
        for text in texts:
            hits.extend(f"{where}: {needle!r}" for needle in needles if needle in str(text))

    def check_files(where: str, artifact_uri: str) -> int:
        with tempfile.TemporaryDirectory() as scratch:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=scratch, tracking_uri=tracking_uri
            )
            files = _files(Path(local))
            for file in files:  # bytes, not only text: a raw id inside a pickle or zip would show too
                data = file.read_bytes()
                hits.extend(f"{where}/{file.name}: {n!r}" for n in needles if n.encode() in data)
            return len(files)

    experiments = client.search_experiments(view_type=ViewType.ALL)
    scanned_files = 0
    for experiment in experiments:
        check(f"experiment {experiment.experiment_id}", experiment.name, experiment.tags)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    for run in runs:
        where = f"run {run.info.run_name}"
        check(where, run.info.run_name, run.data.params, run.data.tags, list(run.data.metrics))
        for dataset_input in run.inputs.dataset_inputs:
            d = dataset_input.dataset
            check(f"{where} input", d.name, d.digest, d.source, d.profile, d.schema, dataset_input.tags)
        scanned_files += check_files(where, run.info.artifact_uri)
    for logged in client.search_logged_models([e.experiment_id for e in experiments]):
        where = f"logged model {logged.model_id}"
        check(where, logged.name, logged.tags, logged.params)
        scanned_files += check_files(where, logged.artifact_location)
    for registered in client.search_registered_models():
        check(f"registered model {registered.name}", registered.name, registered.description, registered.tags)
        for version in client.search_model_versions(f"name = '{registered.name}'"):
            check(f"version {version.version}", version.description, version.tags, version.source)
    assert runs, "no run to scan; the scan would pass vacuously"
    assert scanned_files, "no artifact file to scan; the scan would pass vacuously"
    return hits
