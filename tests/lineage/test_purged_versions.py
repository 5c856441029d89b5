"""Purged versions that say so (tags, description, load and alias errors, verify), ticket and reason on the
erasure's runs, and one ``train_seconds``: a local sqlite registry, in-process shards."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import typer
from mlflow.exceptions import MlflowException

from expunge.orchestrator.catalog import RegistryBinding
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, PurgedVersionError
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.registry.artifacts import ArtifactEraser
from expunge.orchestrator.registry.checks import AuditView
from expunge.orchestrator.registry.purge_notice import NOTICE_FILES, PurgeNotice, notice_objects
from expunge.orchestrator.registry.tracking import MANIFEST_TAG
from expunge.pipelines._runtime import EXIT_BAD_INPUT, exit_on_error
from expunge.shards.rows import ITEM_ID
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows(users=20, seed=5)
MODEL = "expunge-purged"
ALIAS = "production"


@dataclass
class Deployment:
    root: Path
    lineage: Lineage
    coordinator: Coordinator
    erased: list[str]

    @property
    def binding(self) -> RegistryBinding:
        return RegistryBinding(tracking_uri=self.lineage.uri, experiment="purged", model_name=MODEL, alias=ALIAS)

    def audit(self) -> AuditView:
        return AuditView(self.binding, str(self.root / "store"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Train (version 1), erase as req-a (version 2, purges 1), erase as req-b (version 3, purges 2)."""
    root = tmp_path_factory.mktemp("purged")
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="purged", model_name=MODEL)
    lineage = Lineage(tracking, str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    erased = [subjects(ROWS)[2], subjects(ROWS)[7]]
    coordinator.forget(erased[:1], request_id="req-a")
    lineage.set_alias("canary", "2")  # removed by the purge of version 2
    coordinator.forget(erased[1:], request_id="req-b")
    return Deployment(root, lineage, coordinator, erased)


def _version(deployment: Deployment, version: str):  # type: ignore[no-untyped-def]
    return deployment.lineage.client.get_model_version(MODEL, version)


# ----- what the UI shows -------------------------------------------------------------------------------
def test_a_purged_version_says_so_in_its_tags_and_description(deployment):
    for version, request, use, was in (("1", "req-a", "2", "Training of"), ("2", "req-b", "3", "Erasure req-a:")):
        entry = _version(deployment, version)
        assert entry.tags["expunge.purged"] == "true"
        assert entry.tags["expunge.purged_by"] == request
        assert entry.tags["expunge.use_version"] == use
        assert entry.description.startswith(f"PURGED by erasure request {request}:")
        assert f"that was version {use}" in entry.description
        assert f"Was: {was}" in entry.description  # what it said before stays readable
    current = _version(deployment, "3")
    assert "expunge.purged" not in current.tags
    assert not current.description.startswith("PURGED")
    assert deployment.lineage.client.get_registered_model(MODEL).aliases == {ALIAS: 3}  # "canary" went with 2


# ----- loading it ----------------------------------------------------------------------------------------
def test_a_plain_mlflow_load_of_a_purged_version_names_the_erasure_and_the_version_to_use(deployment, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", deployment.lineage.uri)
    with pytest.raises(PurgedVersionError, match=r"expunge-purged/1 was PURGED by erasure request 'req-a'") as caught:
        mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    assert (caught.value.request_id, caught.value.use_version) == ("req-a", "2")
    assert f"models:/{MODEL}@{ALIAS}" in str(caught.value)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@{ALIAS}")
    assert served.predict(pd.DataFrame({"subject_digest": [""], ITEM_ID: [1]})).shape == (1,)


def test_where_expunge_is_not_installed_the_notice_still_names_the_erasure(deployment, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", deployment.lineage.uri)
    monkeypatch.setitem(sys.modules, "expunge.orchestrator.errors", None)  # `from ... import` now fails
    with pytest.raises(
        RuntimeError,
        match=r"PURGED by erasure request 'req-b'.*@production; when this erasure committed that was version 3",
    ) as caught:
        mlflow.pyfunc.load_model(f"models:/{MODEL}/2")
    assert type(caught.value).__name__ == "PurgedModelVersion"
    assert not isinstance(caught.value, PurgedVersionError)


def test_expunges_loader_refuses_a_purged_version_naming_the_newest_to_use_and_exits_2(deployment):
    lineage = deployment.lineage
    with pytest.raises(typer.Exit) as exited, exit_on_error():
        lineage.load_version("1")
    assert exited.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(PurgedVersionError, match="'req-a'") as caught:
        lineage.load_version("1")
    assert caught.value.use_version == "3"  # version 2, which req-a's purge named, is purged too
    assert lineage.purge_notice("3") is None
    with pytest.raises(ConfigError, match="no version '9'"):
        lineage.load_version("9")
    model = lineage.load_version()  # the alias target
    assert model.predict(pd.DataFrame({"subject_digest": ["", ""], ITEM_ID: [1, 2]})).shape == (2,)


def test_the_notice_is_all_that_is_left_and_verify_accepts_it(deployment, monkeypatch):
    lineage = deployment.lineage
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lineage.uri)
    for version in ("1", "2"):
        source = str(_version(deployment, version).source)
        folder = Path(source.removeprefix("file://"))
        with pytest.raises(PurgedVersionError):  # MLflow writes its registered_model_meta beside local files
            mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
        stored = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert sorted(stored) == sorted([*NOTICE_FILES, "registered_model_meta"])
        assert sum(map(len, stored.values())) < 8000  # a notice, not weights
        assert not [s for s in subjects(ROWS) if s.encode() in b"".join(stored.values())]
        notice = PurgeNotice.of(_version(deployment, version), ALIAS)
        assert notice is not None
        assert notice_objects(source, lineage.registry.artifact_root, ArtifactEraser(), notice) == len(stored)
    check = deployment.audit().check_erasure(2)
    assert check.problems == ()
    (v1,) = check.versions
    assert (v1.notice, v1.remaining_objects, v1.loadable) == (True, 0, False)


def test_anything_beside_or_in_place_of_the_notice_is_reported_as_left_over(deployment):
    folder = Path(str(_version(deployment, "1").source).removeprefix("file://"))
    notice = folder / "purged.json"
    original = notice.read_bytes()
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    try:
        notice.write_bytes(original.replace(b"req-a", b"req-z"))
        check = deployment.audit().check_erasure(2)
        assert [(v.version, v.notice, v.remaining_objects) for v in check.versions] == [("1", False, files)]
        assert "version 1" in check.problems[0]
        assert f"{files} stored file(s) remain" in check.problems[0]
        notice.write_bytes(original)
        (folder / "shards.pt").write_bytes(b"weights")
        check = deployment.audit().check_erasure(2)
        assert [(v.version, v.notice, v.remaining_objects) for v in check.versions] == [("1", True, 1)]
        assert "1 stored file(s) remain" in check.problems[0]
    finally:
        notice.write_bytes(original)
        (folder / "shards.pt").unlink(missing_ok=True)
    assert deployment.audit().check_erasure(2).problems == ()


# ----- aliases -----------------------------------------------------------------------------------------------
def test_an_alias_on_a_purged_version_is_refused_by_expunge_and_reported_by_verify(deployment):
    lineage, client = deployment.lineage, deployment.lineage.client
    with pytest.raises(PurgedVersionError, match=r"expunge-purged/2 was PURGED by erasure request 'req-b'"):
        lineage.set_alias("rollback", "2")
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "rollback")  # nothing was changed
    lineage.set_alias("rollback", "3")
    assert str(client.get_model_version_by_alias(MODEL, "rollback").version) == "3"

    # Someone points it at version 2 in the UI; version 2 postdates req-a's erasure, and is still named.
    client.set_registered_model_alias(MODEL, "rollback", "2")
    try:
        problems = deployment.audit().check_erasure(2).problems
    finally:
        client.delete_registered_model_alias(MODEL, "rollback")
    assert len(problems) == 1
    assert "['rollback'] point at version 2" in problems[0]
    assert "'req-b' PURGED" in problems[0]
    assert "move them to version 3" in problems[0]
    client.set_registered_model_alias(MODEL, "rollback", "1")  # a version that held req-a's subject
    try:
        (v1,) = deployment.audit().check_erasure(2).versions
        (problem,) = deployment.audit().check_erasure(2).problems
    finally:
        client.delete_registered_model_alias(MODEL, "rollback")
    assert v1.aliases == ("rollback",)
    assert problem.startswith("version 1 (ensemble v1, PURGED by erasure 'req-a') held the subject")
    assert "it carries alias(es) ['rollback']" in problem
    assert deployment.audit().check_erasure(2).problems == ()


# ----- ticket and reason -------------------------------------------------------------------------------------
def test_ticket_and_reason_are_tags_of_the_requests_runs_and_found_by_a_ui_search(deployment):
    lineage = deployment.lineage
    manifest = deployment.coordinator.manifest
    assert manifest is not None
    stranger = SubjectHasher(TEST_KEY).digest("nobody@example.org")
    missed = ErasureReceipt(
        request_id="req-miss",
        status="not_found",
        subject_digests=(stranger,),
        not_found_digests=(stranger,),
        ticket="CASE-1",
        reason="asked by letter",
    )
    lineage.record_request(missed, manifest)
    erased = ErasureReceipt(
        request_id="req-ticketed", status="erased", subject_digests=(stranger,), ticket="CASE-2", reason="app form"
    )
    run_id = lineage.runs.start_erasure(erased, manifest, "3")
    lineage.runs.end(run_id)
    untold = ErasureReceipt(request_id="req-untold", status="not_found", subject_digests=(stranger,))
    lineage.record_request(untold, manifest)

    def search(clause: str) -> list[tuple[str, str | None, str | None]]:
        runs = lineage.client.search_runs([lineage.experiment_id], filter_string=clause)
        tags = [r.data.tags for r in runs]
        return sorted((t["expunge.request_id"], t.get("expunge.ticket"), t.get("expunge.reason")) for t in tags)

    assert search("""tags."expunge.ticket" = 'CASE-1'""") == [("req-miss", "CASE-1", "asked by letter")]
    assert search("""tags."expunge.ticket" = 'CASE-2'""") == [("req-ticketed", "CASE-2", "app form")]
    assert search("""tags."expunge.request_id" = 'req-untold'""") == [("req-untold", None, None)]


# ----- one train_seconds ----------------------------------------------------------------------------------------
def test_the_training_runs_train_seconds_is_the_manifests(deployment):
    lineage = deployment.lineage
    (run,) = lineage.client.search_runs([lineage.experiment_id], filter_string="tags.`expunge.kind` = 'train'")
    manifest = deployment.coordinator.catalog.read(1)
    assert manifest.train_seconds > 0
    assert run.data.metrics["train_seconds"] == pytest.approx(manifest.train_seconds)
    # The whole job (staging, actor start, commit, purge) is kept under its own name.
    assert run.data.metrics["train_total_seconds"] >= run.data.metrics["train_seconds"]
    with pytest.raises(ValueError, match="train_total_seconds"):
        lineage.runs.start_training(manifest, {"train_seconds": 1.0})


def test_an_alias_serving_another_stores_version_fails_the_registry_check(deployment, tmp_path):
    # A copy of the store published to this registry (before writers refused that): the alias then
    # served a version nothing vouches for, and verify passed.
    client = deployment.lineage.client
    served = client.get_model_version_by_alias(MODEL, ALIAS)
    ours, digest = served.tags["expunge.storage"], served.tags[MANIFEST_TAG]
    client.set_model_version_tag(MODEL, served.version, "expunge.storage", str(tmp_path / "a-copy" / "store"))
    try:  # made by another store with the same past (this store checked through a copy of it): fine
        assert deployment.audit().check_erasure(2).problems == ()
        client.set_model_version_tag(MODEL, served.version, MANIFEST_TAG, "0" * 64)  # the copy's own v2
        problems = deployment.audit().check_erasure(2).problems
    finally:
        client.set_model_version_tag(MODEL, served.version, "expunge.storage", ours)
        client.set_model_version_tag(MODEL, served.version, MANIFEST_TAG, digest)
    assert len(problems) == 2
    assert f"made by the store at {tmp_path / 'a-copy' / 'store'}, not this one" in problems[0]
    assert "pass --tracking-uri naming it" in problems[1]
    assert deployment.audit().check_erasure(2).problems == ()
