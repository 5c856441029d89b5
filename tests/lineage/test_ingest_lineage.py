"""What MLflow holds after ingests, against a real ``mlflow server``: an ``ingest-<request>`` run and a version
per ingest, purged only by a later erasure; an outage is pending and caught up on the next open."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from expunge.orchestrator.catalog import INGEST_RECEIPT_PREFIX
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import PurgedVersionError
from expunge.orchestrator.evidence.verify import verify_erasure, verify_log
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from expunge.orchestrator.registry.faults import FAULT_AT_MLFLOW, INGEST_STEPS
from expunge.orchestrator.registry.tracking import SUPERSEDES_ERASURE
from expunge.pipelines.fault_proxy import FaultProxy, FaultSchedule
from expunge.shards.rows import ITEM_ID, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows, subjects

pytestmark = pytest.mark.integration


def _newcomers(users: int, seed: int) -> pa.Table:
    """``email_rows`` with ids no other test uses (``newcomer7@example.org``): a scan hit can only be ours."""
    rows = email_rows(users=users, seed=seed)
    ids = [s.replace("person", "newcomer") for s in rows.column(SUBJECT_ID).to_pylist()]
    return rows.set_column(rows.column_names.index(SUBJECT_ID), SUBJECT_ID, pa.array(ids, pa.string()))


ROWS = _newcomers(users=30, seed=3)
CONFIG = job(shards=2, slices=2)
FIRST_INGEST = "batch-2026-001"
ERASURE = "ticket-after-ingest"
SECOND_INGEST = "batch-2026-002"


def _batches(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(training rows, an ingest batch): the batch holds 8 new subjects and 6 new rows of 3 known ones."""
    people = subjects(rows)
    early = rows.filter(pc.is_in(rows.column(SUBJECT_ID), value_set=pa.array(people[:22])))
    later = rows.filter(pc.invert(pc.is_in(rows.column(SUBJECT_ID), value_set=pa.array(people[:22]))))
    known = early.filter(pc.is_in(early.column(SUBJECT_ID), value_set=pa.array(people[:3]))).slice(0, 6)
    early = early.filter(pc.invert(pc.is_in(early.column(RECORD_ID), value_set=known.column(RECORD_ID))))
    known = known.set_column(0, RECORD_ID, pa.array([f"late-{i}" for i in range(len(known))]))
    return early, pa.concat_tables([later, known.cast(later.schema)])


INITIAL, BATCH = _batches(ROWS)


def _tracking(server, name: str, root: Path, uri: str | None = None) -> TrackingConfig:  # type: ignore[no-untyped-def]
    """This test's experiment and model on the session's server, model files on local disk (fast)."""
    return TrackingConfig(
        uri=uri or server.uri,
        backend_store_uri=server.backend_store_uri,
        experiment=name,
        model_name=name,
        artifact_location=(root / "artifacts").as_uri(),
    )


def _open(tracking: TrackingConfig, root: Path) -> Coordinator:
    store = str(root / "store")
    return Coordinator(store, SubjectHasher(TEST_KEY), Lineage(tracking, store), pool_factory=local_pool)


def _runs(client: MlflowClient, experiment_id: str, request_id: str) -> list:  # type: ignore[type-arg]
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL)
    return [r for r in runs if r.data.tags.get("expunge.request_id") == request_id]


def _logged_receipt(client: MlflowClient, run_id: str) -> IngestReceipt:
    return IngestReceipt.model_validate_json(Path(client.download_artifacts(run_id, "receipt.json")).read_text())


@dataclass
class Deployment:
    root: Path
    name: str
    coordinator: Coordinator
    first: IngestReceipt  # train (v1) -> ingest (v2)
    served_after_first: str | None  # the alias target right after the first ingest
    erasure: ErasureReceipt  # -> erasure (v3)
    second: IngestReceipt  # -> ingest after the erasure (v4)
    erased: str

    @property
    def lineage(self) -> Lineage:
        assert self.coordinator.lineage is not None
        return self.coordinator.lineage


@pytest.fixture(scope="module")
def deployment(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Train, ingest a batch, erase a subject the batch brought, ingest again: four versions on a real server."""
    root = tmp_path_factory.mktemp("ingest-lineage")
    name = f"expunge-ingest-{uuid.uuid4().hex[:6]}"
    coordinator = _open(_tracking(mlflow_server, name, root), root)
    coordinator.train(INITIAL, CONFIG)
    first = coordinator.ingest(BATCH, request_id=FIRST_INGEST)
    served = coordinator.lineage.current_version() if coordinator.lineage else None
    erased = subjects(BATCH)[-1]  # a subject the ingest brought (new in the batch)
    erasure = coordinator.forget([erased], request_id=ERASURE)
    newcomers = _newcomers(users=34, seed=5)
    unseen = sorted(set(subjects(newcomers)) - set(subjects(ROWS)))
    later = newcomers.filter(pc.is_in(newcomers.column(SUBJECT_ID), value_set=pa.array(unseen)))
    later = later.set_column(0, RECORD_ID, pa.array([f"second-{i}" for i in range(len(later))]))
    second = coordinator.ingest(later, request_id=SECOND_INGEST)
    return Deployment(root, name, coordinator, first, served, erasure, second, erased)


def test_an_ingest_is_a_run_and_a_version_and_the_alias_moves_to_it(deployment):
    client, name, first = deployment.lineage.client, deployment.name, deployment.first
    assert first.status == "ingested"
    assert first.pending == ()
    assert (first.registry_version_before, first.registry_version_after) == ("1", "2")
    assert deployment.served_after_first == "2"  # the alias moved to the ingest's version at once

    version = client.get_model_version(name, "2")
    assert version.tags["expunge.kind"] == "ingest"
    assert version.tags["expunge.request_id"] == FIRST_INGEST
    assert version.tags["expunge.ensemble_version"] == str(first.model_version_after) == "2"
    assert version.tags["expunge.parent_version"] == "1"
    assert SUPERSEDES_ERASURE not in version.tags  # MLflow missed no erasure before it
    assert FIRST_INGEST in version.description
    assert f"{first.rows_added} row(s)" in version.description

    (run,) = _runs(client, deployment.lineage.experiment_id, FIRST_INGEST)
    assert run.info.run_id == version.run_id
    assert run.info.run_name == f"ingest-{FIRST_INGEST}"
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["expunge.kind"] == "ingest"
    assert tags["expunge.ensemble_version"] == "2"
    assert tags["expunge.parent_version"] == "1"
    assert tags["expunge.batch_digest"] == first.batch_digest
    assert tags["expunge.registry_version"] == "2"
    assert first.shards, "the ingest touched no shard: the per-shard params would go unchecked"
    for shard in first.shards:
        assert params[f"shard_{shard.shard}.rows_added"] == str(shard.rows_added)
        assert params[f"shard_{shard.shard}.slices_retrained"] == ",".join(map(str, shard.slices_retrained))
        assert params[f"shard_{shard.shard}.slices_merged"] == (",".join(map(str, shard.slices_merged)) or "none")
    assert sum(int(params[f"shard_{s.shard}.rows_added"]) for s in first.shards) == first.rows_added
    assert first.rows_added == BATCH.num_rows
    assert metrics["rows_added"] == first.rows_added
    assert metrics["rows_refused_erased"] == first.rows_refused_erased == 0
    assert metrics["rows_already_stored"] == first.rows_already_stored == 0
    assert metrics["ingest_seconds"] == first.seconds > 0
    assert metrics["retrain_cpu_seconds"] == first.retrain_cpu_seconds > 0
    logged = _logged_receipt(client, run.info.run_id)
    assert logged.batch_digest == first.batch_digest
    assert logged.registry_version_after == "2"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"expunge-shard-0000", "expunge-shard-0001"}


def test_the_ingest_version_pins_its_requirements_like_every_version(deployment):
    client = deployment.lineage.client
    version = client.get_model_version(deployment.name, "4")  # the ingest after the erasure: never purged
    files = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(version.source)))
    pins = (files / "requirements.txt").read_text().split()
    assert any(p.startswith("torch==") for p in pins)
    assert any(p.startswith("pyarrow==") for p in pins)
    # An item_stats version fits when it loads: scipy, on one BLAS thread (threadpoolctl).
    assert any(p.startswith("scipy==") for p in pins)
    assert any(p.startswith("threadpoolctl==") for p in pins)
    assert all("==" in p for p in pins if not p.startswith("mlflow"))


def test_an_erasure_after_an_ingest_purges_every_earlier_version_and_later_ingests_stay(deployment, monkeypatch):
    client, name, lineage = deployment.lineage.client, deployment.name, deployment.lineage
    assert deployment.erasure.status == "erased"
    assert deployment.erasure.registry_version_after == "3"
    assert deployment.second.registry_version_after == "4"
    assert client.get_model_version_by_alias(name, "production").version == "4"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lineage.uri)
    for purged in ("1", "2"):  # the training and the ingest that brought the erased subject
        version = client.get_model_version(name, purged)
        assert version.tags[PURGED_BY_REQUEST] == ERASURE
        with pytest.raises(PurgedVersionError, match=f"'{ERASURE}'"):
            mlflow.pyfunc.load_model(f"models:/{name}/{purged}")
    Lineage(lineage.tracking, lineage.store_uri)  # the next open: reconcile must keep what is lawful
    for kept in ("3", "4"):
        assert PURGED_BY_REQUEST not in client.get_model_version(name, kept).tags
    digests = SubjectHasher(TEST_KEY).digest_many(BATCH.column(SUBJECT_ID).to_pylist())
    request = pa.table({SUBJECT_DIGEST: digests, ITEM_ID: BATCH.column(ITEM_ID)})
    served = mlflow.pyfunc.load_model(f"models:/{name}@production").predict(request.to_pandas())
    assert np.array_equal(served, deployment.coordinator.predict(request))


def test_verify_and_the_evidence_trail_accept_an_ingest_version_and_refuse_a_forged_one(deployment):
    store = deployment.coordinator.store.uri
    report = verify_erasure(store, ERASURE, SubjectHasher(TEST_KEY), log_to_mlflow=False)
    assert report.check("registry").status == "passed", report.check("registry").summary
    assert report.check("state").status == "skipped"  # the published version is the ingest after it
    trail = verify_log(store)
    assert trail.broken == (), trail.broken

    latest = deployment.coordinator.require_manifest()
    path = deployment.root / "store" / "ensemble" / f"{latest.version + 1:08d}.json"
    forged = json.loads(latest.model_dump_json())
    forged.update({"version": latest.version + 1, "parent_version": latest.version, "request_id": "made-up"})
    path.write_text(json.dumps(forged))  # an ingest version written into the store by hand: MLflow never saw it
    try:
        state = verify_erasure(store, ERASURE, SubjectHasher(TEST_KEY), log_to_mlflow=False).check("state")
        problems = " | ".join(b.problem for b in verify_log(store).broken)
    finally:
        path.unlink()
    assert state.status == "failed"
    assert "made by an ingest of new rows, but MLflow holds no model version of it" in state.summary
    assert "MLflow holds no model version of it" in problems


def _hits(lineage: Lineage, needles: list[str]) -> tuple[list[str], int]:
    """Where in this deployment's experiment and model a needle occurs, and how many files were read.

    ``_support.personal_data_hits`` reads every experiment of the tracking store; the session's
    server holds other tests' experiments too, so this reads only this deployment's.
    """
    client, hits, files = lineage.client, [], 0

    def check(where: str, *texts: object) -> None:
        hits.extend(f"{where}: {n!r}" for n in needles for text in texts if n in str(text))

    def read(where: str, folder: str) -> None:
        nonlocal files
        for path in (p for p in Path(folder).rglob("*") if p.is_file()):
            files += 1
            data = path.read_bytes()  # bytes: a raw id inside a pickle or a zip shows too
            hits.extend(f"{where}/{path.name}: {n!r}" for n in needles if n.encode() in data)

    for run in client.search_runs([lineage.experiment_id], run_view_type=ViewType.ALL):
        where = f"run {run.info.run_name}"
        check(where, run.info.run_name, run.data.params, run.data.tags, list(run.data.metrics))
        for used in run.inputs.dataset_inputs:
            check(f"{where} input", used.dataset.name, used.dataset.source, used.dataset.profile, used.tags)
        if client.list_artifacts(run.info.run_id):
            read(where, client.download_artifacts(run.info.run_id, ""))
    for model in client.search_logged_models([lineage.experiment_id]):
        check(f"logged model {model.model_id}", model.name, model.tags, model.params)
        read(
            f"logged model {model.model_id}", mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location)
        )
    for version in lineage.registry.model_versions():  # purged ones keep only their notice
        check(f"version {version.version}", version.description, version.tags, version.source)
        read(f"version {version.version}", mlflow.artifacts.download_artifacts(artifact_uri=str(version.source)))
    return hits, files


def test_no_raw_subject_id_reaches_mlflow(deployment):
    needles = sorted(set(subjects(ROWS)) | set(subjects(_newcomers(users=34, seed=5))))
    assert deployment.erased in needles
    control = deployment.first.batch_digest  # on the run, in its receipt: the scan must find it
    hits, files = _hits(deployment.lineage, [*needles, control])
    assert files > 20, "too few files read: the scan would pass vacuously"
    assert any(repr(control) in h and "receipt.json" in h for h in hits)
    assert [h for h in hits if repr(control) not in h] == []


# ----- MLflow down during an ingest --------------------------------------------------------------------------
@pytest.fixture
def proxied(mlflow_server, monkeypatch):  # type: ignore[no-untyped-def]
    """The session's server behind a proxy this test can take down; MLflow's own retries kept short."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with FaultProxy(mlflow_server.uri) as proxy:
        yield proxy


def _down(proxy: FaultProxy) -> None:
    proxy.set_schedule(FaultSchedule(rates={"cut": 1.0}))  # every connection closed unanswered


def test_an_ingest_while_mlflow_is_down_is_pending_and_recorded_on_the_next_open(proxied, mlflow_server, tmp_path):
    tracking = _tracking(mlflow_server, f"expunge-outage-{uuid.uuid4().hex[:6]}", tmp_path, uri=proxied.url)
    coordinator = _open(tracking, tmp_path)
    coordinator.train(INITIAL, CONFIG)
    _down(proxied)
    receipt = coordinator.ingest(BATCH, request_id=FIRST_INGEST)
    assert receipt.status == "ingested"
    assert receipt.model_version_after == 2
    assert [p.split(":")[0] for p in receipt.pending] == ["registration"]
    assert receipt.registry_version_after is None
    stored = (tmp_path / "store" / INGEST_RECEIPT_PREFIX / f"{FIRST_INGEST}.json").read_text()
    assert IngestReceipt.model_validate_json(stored).pending == receipt.pending
    assert proxied.injected.get("cut", 0) > 0  # the outage was real: requests were cut

    proxied.pause()  # MLflow is back
    client = MlflowClient(mlflow_server.uri)
    assert client.get_model_version_by_alias(tracking.model_name, "production").version == "1"  # still stale
    reopened = _open(tracking, tmp_path)  # the next writer's open reconciles
    assert reopened.lineage is not None
    version = client.get_model_version_by_alias(tracking.model_name, "production")
    assert version.version == "2"
    assert version.tags["expunge.kind"] == "ingest"
    assert version.tags["expunge.request_id"] == FIRST_INGEST
    assert PURGED_BY_REQUEST not in client.get_model_version(tracking.model_name, "1").tags  # an ingest purges nothing
    (run,) = _runs(client, reopened.lineage.experiment_id, FIRST_INGEST)
    assert run.info.status == "FINISHED"
    assert run.data.tags["expunge.batch_digest"] == receipt.batch_digest
    logged = _logged_receipt(client, run.info.run_id)
    assert logged.registry_version_after == "2"
    assert logged.pending == ()
    assert logged.rows_added == receipt.rows_added


def test_an_ingest_after_an_erasure_mlflow_missed_purges_for_that_erasure(mlflow_server, tmp_path, monkeypatch):
    tracking = _tracking(mlflow_server, f"expunge-missed-{uuid.uuid4().hex[:6]}", tmp_path)
    coordinator = _open(tracking, tmp_path)
    coordinator.train(INITIAL, CONFIG)
    monkeypatch.setenv(FAULT_AT_MLFLOW, "run.create")  # the erasure's record fails at its first MLflow step
    erased = coordinator.forget([subjects(INITIAL)[4]], request_id=ERASURE)
    assert erased.status == "erased"
    assert [p.split(":")[0] for p in erased.pending] == ["registration"]
    monkeypatch.delenv(FAULT_AT_MLFLOW)
    # The same process ingests next: it brings MLflow up to the store first (the erasure's version),
    # as an erasure does, then registers its own.
    receipt = coordinator.ingest(BATCH, request_id=FIRST_INGEST)
    assert receipt.pending == ()
    assert receipt.registry_version_after == "3"
    assert receipt.model_version_after == 3  # train v1, erasure v2, this ingest v3
    client = MlflowClient(mlflow_server.uri)
    assert client.get_model_version(tracking.model_name, "2").tags["expunge.kind"] == "erasure"
    assert client.get_model_version(tracking.model_name, "3").tags["expunge.kind"] == "ingest"
    assert client.get_model_version(tracking.model_name, "1").tags[PURGED_BY_REQUEST] == ERASURE
    assert coordinator.lineage is not None
    (erasure_run,) = _runs(client, coordinator.lineage.experiment_id, ERASURE)
    assert erasure_run.info.status == "FINISHED"
    assert erasure_run.data.tags["expunge.ensemble_version"] == "2"
    Lineage(tracking, str(tmp_path / "store"))  # the next open keeps the ingest's version and the purge
    assert PURGED_BY_REQUEST not in client.get_model_version(tracking.model_name, "3").tags
    assert client.get_model_version_by_alias(tracking.model_name, "production").version == "3"


def test_an_ingest_whose_receipt_was_never_stored_is_recorded_from_the_manifests(mlflow_server, tmp_path, monkeypatch):
    tracking = _tracking(mlflow_server, f"expunge-no-receipt-{uuid.uuid4().hex[:6]}", tmp_path)
    coordinator = _open(tracking, tmp_path)
    coordinator.train(INITIAL, CONFIG)
    monkeypatch.setenv(FAULT_AT_MLFLOW, "run.create")
    receipt = coordinator.ingest(BATCH, request_id=FIRST_INGEST)
    monkeypatch.delenv(FAULT_AT_MLFLOW)
    # As if the process died between the commit and storing the receipt.
    (tmp_path / "store" / INGEST_RECEIPT_PREFIX / f"{FIRST_INGEST}.json").unlink()

    lineage = _open(tracking, tmp_path).lineage
    assert lineage is not None
    target = lineage.client.get_model_version_by_alias(tracking.model_name, "production")
    assert target.tags["expunge.request_id"] == FIRST_INGEST
    logged = _logged_receipt(lineage.client, target.run_id)
    assert logged.rows_added == receipt.rows_added == BATCH.num_rows
    assert logged.batch_digest == "unknown"
    assert [p.split(":")[0] for p in logged.pending] == ["receipt"]
    assert lineage.client.get_run(target.run_id).data.metrics["rows_added"] == receipt.rows_added


# ----- a fault at any MLflow step of an ingest's record ---------------------------------------------------------
_DEFAULT_STEPS = {"run.create", "model.upload", "alias.move", "run.receipt", "run.end"}


@pytest.mark.parametrize(
    "step", [s if s in _DEFAULT_STEPS else pytest.param(s, marks=pytest.mark.slow) for s in INGEST_STEPS]
)
def test_an_error_at_any_mlflow_step_of_an_ingest_is_finished_on_reopen(step, mlflow_server, tmp_path, monkeypatch):
    tracking = _tracking(mlflow_server, f"expunge-ingest-fault-{uuid.uuid4().hex[:6]}", tmp_path)
    coordinator = _open(tracking, tmp_path)
    coordinator.train(INITIAL, CONFIG)
    monkeypatch.setenv(FAULT_AT_MLFLOW, step)
    receipt = coordinator.ingest(BATCH, request_id=FIRST_INGEST)
    assert [p.split(":")[0] for p in receipt.pending] == ["registration"]
    assert step in receipt.pending[0]
    monkeypatch.delenv(FAULT_AT_MLFLOW)

    lineage = _open(tracking, tmp_path).lineage
    assert lineage is not None
    target = lineage.client.get_model_version_by_alias(tracking.model_name, "production")
    assert target.tags["expunge.kind"] == "ingest"
    assert target.tags["expunge.ensemble_version"] == "2"
    assert all(PURGED_BY_REQUEST not in v.tags for v in lineage.registry.model_versions())
    runs = _runs(lineage.client, lineage.experiment_id, FIRST_INGEST)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [target.run_id]
    assert {r.info.status for r in runs if r not in finished} <= {"FAILED"}
    assert finished[0].data.tags["expunge.registry_version"] == str(target.version)
    assert "receipt.json" in {a.path for a in lineage.client.list_artifacts(target.run_id)}
    all_runs = lineage.client.search_runs([lineage.experiment_id], run_view_type=ViewType.ALL)
    assert all(r.info.status != "RUNNING" for r in all_runs)
