"""A crash or MLflow outage at any MLflow step of an erasure is finished by the next open: the alias serves
the newest version, every older version is purged and unloadable, and no copy of its weights remains."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, PurgedVersionError
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from expunge.orchestrator.registry.faults import ERASURE_STEPS, FAULT_AT_MLFLOW, TRAINING_STEPS, fault_point
from expunge.orchestrator.registry.scratch import STAGING_FOLDER
from expunge.shards.store import ObjectStore
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import beyond_notice, email_rows, subjects

ROOT = Path(__file__).resolve().parents[2]
ROWS = email_rows(users=16)
MODEL = "expunge-crash"
REQUEST = "ticket-crash"
SUBJECT = subjects(ROWS)[3]
CONFIG = job(shards=2, slices=2)


def _tracking(root: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="crash", model_name=MODEL)


@dataclass(frozen=True)
class Template:
    root: Path
    first_model_id: str  # the LoggedModel of version 1: the pre-erasure weights


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Template:
    """A trained deployment (store, sqlite tracking, local artifacts) to clone for each crash."""
    root = tmp_path_factory.mktemp("registry-crash") / "template"
    lineage = Lineage(_tracking(root), str(root / "store"))
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool).train(ROWS, CONFIG)
    return Template(root, lineage.client.get_model_version(MODEL, "1").tags["expunge.logged_model_id"])


def _clone(template: Template, target: Path) -> Path:
    """Copy the deployment and point the tracking database's absolute paths at the copy."""
    shutil.copytree(template.root, target)
    old, new = str(template.root), str(target)
    with sqlite3.connect(target / "mlflow.db") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(t in str(column[2]).upper() for t in ("CHAR", "TEXT", "CLOB")):
                    db.execute(
                        f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?) '
                        f'WHERE instr("{column[1]}", ?) > 0',
                        (old, new, old),
                    )
    return target


def _assert_finished(root: Path, template: Template, monkeypatch) -> None:
    """Reopen like a restarted job; the registry must then hold exactly the post-erasure state."""
    lineage = Lineage(_tracking(root), str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    assert coordinator.manifest is not None
    assert coordinator.manifest.version == 2  # the store committed before MLflow was touched
    client = lineage.client

    target = client.get_model_version_by_alias(MODEL, "production")
    assert target.tags["expunge.ensemble_version"] == "2"
    assert target.tags["expunge.request_id"] == REQUEST
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lineage.uri)
    older = [v for v in lineage.registry.model_versions() if int(v.version) < int(target.version)]
    assert older, "nothing to purge: the test would pass vacuously"
    for version in older:
        assert version.tags[PURGED_BY_REQUEST] == REQUEST
        with pytest.raises(PurgedVersionError, match=f"'{REQUEST}'"):
            mlflow.pyfunc.load_model(f"models:/{MODEL}/{version.version}")
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@production") is not None

    # No copy of the pre-erasure weights anywhere in the deployment, and no stray model of them.
    left = [p for p in root.rglob("*") if p.is_file() and template.first_model_id in str(p)]
    assert left  # the purge notice
    assert beyond_notice(left, template.first_model_id) == []
    assert {m.tags["expunge.ensemble_version"] for m in client.search_logged_models([lineage.experiment_id])} == {"2"}
    assert not (root / STAGING_FOLDER).exists()

    runs = client.search_runs([lineage.experiment_id], run_view_type=ViewType.ALL)
    ours = [r for r in runs if r.data.tags.get("expunge.request_id") == REQUEST]
    finished = [r for r in ours if r.info.status == "FINISHED"]
    assert len(finished) == 1
    assert {r.info.status for r in ours if r not in finished} <= {"FAILED"}
    assert finished[0].data.tags["expunge.registry_version"] == str(target.version)
    assert "receipt.json" in {a.path for a in client.list_artifacts(finished[0].info.run_id)}
    assert all(r.info.status != "RUNNING" for r in runs)


def test_every_erasure_step_has_a_fault_point_and_unknown_names_are_refused(monkeypatch):
    names = set(ERASURE_STEPS)
    assert len(names) == len(ERASURE_STEPS)
    assert set(TRAINING_STEPS) < names
    source = "".join(p.read_text() for p in (ROOT / "orchestrator" / "registry").glob("*.py"))
    for step in ERASURE_STEPS:
        assert f'fault_point("{step}")' in source
    monkeypatch.setenv(FAULT_AT_MLFLOW, "alias.mvoe")
    with pytest.raises(ConfigError, match="names no MLflow step"):
        fault_point("alias.move")


@pytest.mark.parametrize("step", ERASURE_STEPS)
def test_an_error_at_any_mlflow_step_is_finished_on_reopen(step, template, tmp_path, monkeypatch):
    root = _clone(template, tmp_path / "case")
    lineage = Lineage(_tracking(root), str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    monkeypatch.setenv(FAULT_AT_MLFLOW, step)
    # After the store commit an MLflow failure never fails the request: the receipt names it pending.
    receipt = coordinator.forget([SUBJECT], request_id=REQUEST)
    assert receipt.status == "erased"
    assert len(receipt.pending) == 1
    assert receipt.pending[0].startswith("registration: InjectedFault")
    assert step in receipt.pending[0]
    monkeypatch.delenv(FAULT_AT_MLFLOW)
    _assert_finished(root, template, monkeypatch)


_FORGET = """
import sys
import time
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import Lineage
root, key, subject, model, request = sys.argv[1:6]
tracking = TrackingConfig(uri=f"sqlite:///{root}/mlflow.db", experiment="crash", model_name=model)
lineage = Lineage(tracking, f"{root}/store")
coordinator = Coordinator(f"{root}/store", SubjectHasher(key.encode()), lineage, pool_factory=local_pool)
coordinator.forget([subject], request_id=request)
"""

_TRAIN = """
import sys
import time
import pyarrow.compute as pc
import pyarrow.parquet as pq
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import Lineage
from tests.engine import job
root, key, model = sys.argv[1:4]
tracking = TrackingConfig(uri=f"sqlite:///{root}/mlflow.db", experiment="crash", model_name=model)
lineage = Lineage(tracking, f"{root}/store")
coordinator = Coordinator(f"{root}/store", SubjectHasher(key.encode()), lineage, pool_factory=local_pool)
coordinator.train(pq.read_table(f"{root}/rows.parquet"), job(shards=2, slices=2))
"""


def _killed_at(step: str, script: str, args: list[str], scratch: Path) -> None:
    """Run ``script`` in a child that is killed before MLflow ``step``, with its own temp folder."""
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "PYTHONPATH"}}
    env.update({FAULT_AT_MLFLOW: step, "EXPUNGE_FAULT_MODE": "kill", "TMPDIR": str(scratch)})
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 137, done.stderr[-3000:]


# A kill at every step runs with -m slow; by default one step per phase (the raise at every step, above,
# runs by default): staging the model, moving the alias, purging.
_KILL_STEPS_BY_DEFAULT = {"model.upload", "alias.move", "purge.gc"}


@pytest.mark.integration
@pytest.mark.parametrize(
    "step",
    [s if s in _KILL_STEPS_BY_DEFAULT else pytest.param(s, marks=pytest.mark.slow) for s in ERASURE_STEPS],
)
def test_a_kill_at_any_mlflow_step_is_finished_on_reopen(step, template, tmp_path, monkeypatch):
    root = _clone(template, tmp_path / "case")
    scratch = tmp_path / "child-tmp"
    _killed_at(step, _FORGET, [str(root), TEST_KEY.decode(), SUBJECT, MODEL, REQUEST], scratch)
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # nothing of the model went to the temp dir
    _assert_finished(root, template, monkeypatch)


@pytest.mark.integration
def test_weights_staged_by_a_killed_process_are_removed_on_the_next_open(tmp_path):
    """Killed mid-upload while logging a trained (pre-erasure) model: its weight copies must not outlive it."""
    pq.write_table(ROWS, tmp_path / "rows.parquet")
    scratch = tmp_path / "child-tmp"
    _killed_at("model.upload", _TRAIN, [str(tmp_path), TEST_KEY.decode(), MODEL], scratch)
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # the system temp folder holds no copy
    staged = [p for p in (tmp_path / STAGING_FOLDER).rglob("*.pt")]
    assert staged, "the kill left no staged weights: the test would pass vacuously"

    lineage = Lineage(_tracking(tmp_path), str(tmp_path / "store"))  # the next open
    assert not (tmp_path / STAGING_FOLDER).exists() or list((tmp_path / STAGING_FOLDER).iterdir()) == []
    assert lineage.recorded_ensemble_version() == 1  # and the interrupted record was finished
    coordinator = Coordinator(str(tmp_path / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    coordinator.forget([SUBJECT], request_id=REQUEST)
    first = lineage.client.get_model_version(MODEL, "1")
    assert first.tags[PURGED_BY_REQUEST] == REQUEST
    assert {
        m.tags["expunge.ensemble_version"] for m in lineage.client.search_logged_models([lineage.experiment_id])
    } == {"2"}  # the orphan LoggedModel of the killed record is purged with version 1


class _OutageOnce(Lineage):
    """A real Lineage whose first erasure record fails, as an MLflow outage would."""

    failed = False

    def record_erasure(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise ConnectionError("MLflow tracking server unreachable")
        return super().record_erasure(*args, **kwargs)


def test_the_registry_catches_up_with_the_store_on_reopen(tmp_path, hasher):
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="expunge-reconcile")
    store = str(tmp_path / "store")
    coordinator = Coordinator(store, hasher, _OutageOnce(tracking, store), pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    subject = subjects(ROWS)[0]
    receipt = coordinator.forget([subject], request_id="ticket-7")  # committed: the outage leaves it pending
    assert receipt.pending[0].startswith("registration: ConnectionError")
    client = MlflowClient(tracking.uri)
    stale = client.get_model_version_by_alias("expunge-reconcile", "production")
    assert stale.tags["expunge.ensemble_version"] == "1"  # the alias still serves the pre-erasure model

    lineage = Lineage(tracking, store)  # e.g. the retried job starting up
    assert lineage.recorded_ensemble_version() == 2
    latest = lineage.client.get_model_version_by_alias("expunge-reconcile", "production")
    assert latest.tags["expunge.request_id"] == "ticket-7"
    first = lineage.client.get_model_version("expunge-reconcile", "1")
    assert first.tags[PURGED_BY_REQUEST] == "ticket-7"


@pytest.mark.parametrize("step", ["run.create", "version.create", "alias.move"])
def test_a_training_committed_before_an_mlflow_failure_is_not_reported_failed(step, tmp_path, monkeypatch):
    # Adversarial review: `train` raised after its commit, so a published version was reported as a
    # failed training (exit 4), unlike an erasure or an ingest, which name the step pending.
    root = tmp_path / "case"
    lineage = Lineage(_tracking(root), str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    monkeypatch.setenv(FAULT_AT_MLFLOW, step)
    result = coordinator.train(ROWS, CONFIG)
    assert result.manifest.version == 1
    assert result.registry_version is None
    assert len(result.pending) == 1
    assert result.pending[0].startswith("registration: InjectedFault")
    assert step in result.pending[0]
    monkeypatch.delenv(FAULT_AT_MLFLOW)
    reopened = Lineage(_tracking(root), str(root / "store"))  # the next writer records it
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), reopened, pool_factory=local_pool)
    served = reopened.client.get_model_version_by_alias(MODEL, "production")
    assert served.tags["expunge.ensemble_version"] == "1"


@pytest.mark.integration
def test_a_forget_killed_after_its_commit_has_its_receipt_sealed_on_the_next_open(template, tmp_path):
    # Second adversarial review: killed after the commit, before sealing, the erasure's receipt never
    # entered the receipt log while the next open recorded its MLflow run: every later verify then
    # failed on "MLflow records request ... but the receipt log holds no receipt of it".
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts
    from expunge.orchestrator.registry.checks import AuditView

    root = _clone(template, tmp_path / "case")
    _killed_at("version.create", _FORGET, [str(root), TEST_KEY.decode(), SUBJECT, MODEL, REQUEST], tmp_path / "child")
    lineage = Lineage(_tracking(root), str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    sealed = [r for _, r in chained_receipts(coordinator.store, REQUEST)]
    assert [r.request_id for r in sealed] == [REQUEST]
    # The version this open registered (it lacked one: the kill came first; adversarial review).
    assert sealed[0].registry_version_after == lineage.current_version()
    coordinator.forget([subjects(ROWS)[5]])
    catalog = Catalog(coordinator.store)
    latest = catalog.latest()
    trail = audit_trail(catalog, latest, AuditView(latest.registry, str(root / "store")), None)
    assert not trail.broken, trail.broken


_FORGET_UNTRACKED = """
import sys
import time
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
root, key, *named = sys.argv[1:]
coordinator = Coordinator(f"{root}/store", SubjectHasher(key.encode()), None, pool_factory=local_pool)
coordinator.forget(named, request_id="req-killed")
"""
_NOBODY = "nobody-with-data@example.com"


def _killed_at_write(match: str, script: str, args: list[str]) -> None:
    """Run ``script`` in a child process killed (SIGKILL) at the first store write matching ``match``."""
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "PYTHONPATH"}}
    env.update({"EXPUNGE_FAULT_AT_WRITE": "1", "EXPUNGE_FAULT_MATCH": match, "EXPUNGE_FAULT_MODE": "kill"})
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 137, done.stderr[-3000:]


def _forget_killed_at(root: Path, match: str) -> None:
    _killed_at_write(match, _FORGET_UNTRACKED, [str(root), TEST_KEY.decode(), SUBJECT, _NOBODY])


@pytest.mark.integration
@pytest.mark.parametrize("match", ["receipts/chain", "put receipts/0"], ids=["before-the-log", "before-the-receipt"])
def test_an_untracked_forget_killed_before_sealing_has_its_receipt_sealed_on_the_next_open(match, tmp_path):
    # The same with tracking off: the open that finishes interrupted work returned early (nothing to
    # purge, no registry), so the receipt log lacked the erasure and every later verify failed it.
    # Killed before even ``receipts/<version>.json`` was stored (third-pass note), the receipt is
    # rebuilt from the request's tombstone entry and the two versions' manifests.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _forget_killed_at(root, match)
    # Before the next writer: a reader's audit names the unsealed request (it found the log intact when
    # even the per-version receipt was missing; new-user review).
    unsealed = Catalog(ObjectStore(str(root / "store")))
    before = audit_trail(unsealed, unsealed.latest(), None, None)
    assert [b for b in before.broken if "req-killed" in b.problem], before.broken
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    sealed = [r for _, r in chained_receipts(coordinator.store, "req-killed")]
    assert len(sealed) == 1
    assert coordinator.hasher.digest(SUBJECT) in sealed[0].subject_digests
    assert sealed[0].rows_removed > 0
    assert Catalog(coordinator.store).read_receipt(2) is not None
    coordinator.forget([subjects(ROWS)[5]])
    catalog = Catalog(coordinator.store)
    trail = audit_trail(catalog, catalog.latest(), None, None)
    assert trail.receipts == 2
    assert not trail.broken, trail.broken


@pytest.mark.integration
def test_a_retry_of_a_killed_forget_whose_receipt_was_rebuilt_answers_the_subjects_without_data(tmp_path):
    # A receipt rebuilt on open knows only the subjects found (the tombstone entry); the retry, naming
    # a subject without data as well, is the same request: answered, not refused as another one.
    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _forget_killed_at(root, "put receipts/0")
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    receipt = coordinator.forget([SUBJECT, _NOBODY], request_id="req-killed")
    nobody = coordinator.hasher.digest(_NOBODY)
    assert receipt.status == "erased"
    assert receipt.not_found_digests == (nobody,)
    assert set(receipt.subject_digests) == {nobody, coordinator.hasher.digest(SUBJECT)}
    with pytest.raises(ConfigError, match="already erased other subjects"):
        coordinator.forget([subjects(ROWS)[5]], request_id="req-killed")


_FORGET_JOINED = """
import sys
import time
import pyarrow as pa
import pyarrow.compute as pc
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from tests.lineage._support import email_rows, subjects
root, key, subject = sys.argv[1:4]
coordinator = Coordinator(f"{root}/store", SubjectHasher(key.encode()), None, pool_factory=local_pool)
new = email_rows(users=20, seed=5)
held = set(subjects(email_rows(users=16)))
others = [s for s in subjects(new) if s not in held][:3]
new = new.filter(pc.is_in(new.column("subject_id"), value_set=pa.array(others)))
digests = coordinator.hasher.digest_many([subject, "nobody@example.com"])
ingest = coordinator.prepare_ingest(new, request_id="ing-1", erasing=digests)
coordinator.forget_digests(digests, "req-joined", ingest=ingest)
"""


@pytest.mark.integration
def test_an_erasure_joined_by_an_ingest_and_killed_before_its_receipt_is_rebuilt_with_its_own_rows(tmp_path):
    # Adversarial review (thirteenth pass): the receipt rebuilt on open took each shard's rows lost as
    # its old rows minus its new, which counts the joined ingest's rows against it (-12 rows removed),
    # and sealed it; verify passed it. The thirteenth pass then rebuilt none, and a later commit buried
    # the erasure (fourteenth pass). The tombstone entry now records each shard's rows removed.
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts

    root = tmp_path / "case"
    trained = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    trained.train(ROWS, CONFIG)
    digest = trained.hasher.digest(SUBJECT)
    held = {c.shard for c in trained.placement_index().cells([digest])[digest]}
    subject_rows = ROWS.filter(pc.equal(ROWS.column("subject_id"), SUBJECT)).num_rows
    _killed_at_write("put receipts/0", _FORGET_JOINED, [str(root), TEST_KEY.decode(), SUBJECT])
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    assert coordinator.catalog.latest().request_id == "req-joined"  # committed
    [sealed] = [r for _, r in chained_receipts(coordinator.store, "req-joined")]
    assert sealed.rows_removed == subject_rows
    assert sealed.joined_ingest == "ing-1"  # the rebuilt receipt keeps its link to the ingest (it lost it)
    assert {s.shard: s.rows_removed for s in sealed.shards if s.rows_removed} == {held.pop(): subject_rows}
    assert all(s.rows_removed >= 0 for s in sealed.shards)


@pytest.mark.integration
def test_an_unsealed_erasure_is_not_reported_while_a_live_writer_holds_the_store(tmp_path):
    # Second adversarial review: a verify beside a live forget, between its commit and its seal (purge,
    # registration, audit), failed the healthy store saying its process had ended.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail
    from expunge.orchestrator.lease import StoreLease

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _forget_killed_at(root, "put receipts/0")
    store = ObjectStore(str(root / "store"))
    with StoreLease(store).hold("a live writer between its commit and its seal"):
        catalog = Catalog(store)
        trail = audit_trail(catalog, catalog.latest(), None, None)
    assert not [b for b in trail.broken if "req-killed" in b.problem], trail.broken


@pytest.mark.integration
def test_a_version_written_by_hand_under_a_sealed_request_id_is_not_vouched_for(tmp_path):
    # Second adversarial review: any chained receipt of the request id counted, so a version written by
    # hand (an earlier version's shard manifests under a sealed request's id) passed `verify --log`.
    import json as _json

    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail

    root = tmp_path / "case"
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    coordinator.forget([SUBJECT], request_id="req-sealed")
    store = ObjectStore(str(root / "store"))
    forged = _json.loads(store.get("ensemble/00000002.json"))
    first = _json.loads(store.get("ensemble/00000001.json"))
    forged.update(version=3, parent_version=2, shard_versions=first["shard_versions"])
    store.create_exclusive("ensemble/00000003.json", _json.dumps(forged).encode())
    catalog = Catalog(store)
    trail = audit_trail(catalog, catalog.latest(), None, None)
    assert [b for b in trail.broken if "req-sealed" in b.problem and "version 3" in b.problem], trail.broken


@pytest.mark.integration
def test_a_commit_seals_an_erasure_left_unsealed_before_committing_over_it(tmp_path):
    # Thirteenth-pass note: a seal the open could not make (here: another writer held the store then)
    # was buried by this process's next commit, because the next open looks at the newest version only.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts
    from expunge.orchestrator.lease import StoreLease

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _forget_killed_at(root, "put receipts/0")
    store = ObjectStore(str(root / "store"))
    other = StoreLease(store, owner="another-writer")
    with other.hold("expunge forget"):  # the open finds the store busy and leaves the seal to its holder
        coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    assert chained_receipts(coordinator.store, "req-killed") == []
    coordinator.forget([subjects(ROWS)[5]], request_id="req-next")
    assert [r.model_version_after for _, r in chained_receipts(coordinator.store, "req-killed")] == [2]
    catalog = Catalog(store)
    trail = audit_trail(catalog, catalog.latest(), None, None)
    assert trail.receipts == 2
    assert not trail.broken, trail.broken


@pytest.mark.integration
def test_a_commit_is_refused_while_an_unsealed_erasure_cannot_be_sealed(tmp_path, monkeypatch):
    # The same when the seal fails again before the commit (the store refuses the receipt log):
    # nothing is committed over the unsealed version; the next try seals it and commits.
    from expunge.orchestrator.errors import StorageUnavailableError
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _forget_killed_at(root, "put receipts/0")
    real_put = ObjectStore.put

    def refusing_put(self, key, data):
        if key.startswith("receipts/"):
            raise StorageUnavailableError(f"injected: the store refused {key}")
        return real_put(self, key, data)

    monkeypatch.setattr(ObjectStore, "put", refusing_put)
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    assert coordinator.session.unfinished
    with pytest.raises(StorageUnavailableError, match="injected"):
        coordinator.forget([subjects(ROWS)[5]], request_id="req-next")
    assert coordinator.catalog.latest().version == 2  # nothing committed over it
    monkeypatch.setattr(ObjectStore, "put", real_put)
    receipt = coordinator.forget([subjects(ROWS)[5]], request_id="req-next")
    assert receipt.model_version_after == 3
    assert [r.model_version_after for _, r in chained_receipts(coordinator.store, "req-killed")] == [2]
    assert not coordinator.session.unfinished


@pytest.mark.integration
def test_a_holder_that_takes_its_lapsed_lease_back_seals_what_was_committed_meanwhile(tmp_path):
    # Adversarial review (fourteenth pass): the service's lease lapsed (a stall), a CLI forget took it over,
    # committed and was killed before sealing; the service took its lease back (``reacquire``: a new token,
    # no fresh hold) and its retry committed over the unsealed version, which no later writer looks below.
    from expunge.orchestrator import lease as lease_module
    from expunge.orchestrator.errors import LeaseLostError
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts
    from expunge.shards.config import StorageConfig

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    storage = StorageConfig(uri=str(root / "store"), lease_ttl_s=1.0)
    service = Coordinator(storage, SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    lease = service.session.lease
    lease.acquire("expunge serve (namespace test)")
    try:
        lease_module._REGISTRY[lease._slot].stop.set()  # the holder stalls: its renewals stop
        time.sleep(2.5)  # past its TTL: the next writer takes the lease over
        _forget_killed_at(root, "put receipts/0")
        digest = service.hasher.digest(subjects(ROWS)[5])
        with pytest.raises(LeaseLostError):
            service.erasure.forget_digests([digest], "batch-1", register=False, resume=False)
        assert lease.reacquire("expunge serve (namespace test)")
        receipt = service.erasure.forget_digests([digest], "batch-1", register=False, resume=True)
    finally:
        lease.release()
    assert receipt.model_version_after == 3
    assert [r.model_version_after for _, r in chained_receipts(service.store, "req-killed")] == [2]


@pytest.mark.integration
@pytest.mark.parametrize("job_kind", ["forget", "ingest"])
def test_a_commit_seals_an_erasure_committed_after_this_process_last_read_the_store(job_kind, tmp_path, monkeypatch):
    # Adversarial review (fourteenth pass): the seal check looked at the version this process had read
    # before taking the lease; another writer committed (and was killed) in between, and the commit,
    # which follows the newest version under the lease, went on top of it.
    import pyarrow as pa

    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts
    from expunge.orchestrator.lease import StoreLease

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    real_acquire = StoreLease.acquire
    fired: list[bool] = []

    def acquire(self, purpose, wait_s=0.0):
        if not fired:  # the other writer runs between this process's read and its lease
            fired.append(True)
            _forget_killed_at(root, "put receipts/0")
        return real_acquire(self, purpose, wait_s)

    monkeypatch.setattr(StoreLease, "acquire", acquire)
    if job_kind == "forget":
        coordinator.forget([subjects(ROWS)[5]], request_id="req-next")
    else:
        new = email_rows(users=20, seed=5)
        others = [s for s in subjects(new) if s not in set(subjects(ROWS))][:3]
        coordinator.ingest(new.filter(pc.is_in(new.column("subject_id"), value_set=pa.array(others))), "ing-next")
    assert fired
    assert [r.model_version_after for _, r in chained_receipts(coordinator.store, "req-killed")] == [2]
    catalog = Catalog(ObjectStore(str(root / "store")))
    assert catalog.latest().version == 3
    assert not audit_trail(catalog, catalog.latest(), None, None).broken


@pytest.mark.integration
def test_verify_log_names_an_erasure_buried_under_a_later_commit(tmp_path):
    # Adversarial review (fourteenth pass): a store where a later commit went ahead without sealing an
    # erasure (here: by hand, as an earlier release could) read "intact", with a receipt for 1 of 2 erasures.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _forget_killed_at(root, "put receipts/0")
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.forget([subjects(ROWS)[5]], request_id="req-next")
    store = ObjectStore(str(root / "store"))
    for key in store.list_keys("receipts"):  # what an earlier release left: req-killed never chained
        if "req-killed" in store.get(key).decode():
            store.delete([key])
    catalog = Catalog(store)
    problems = [b.problem for b in audit_trail(catalog, catalog.latest(), None, None).broken]
    assert [p for p in problems if "req-killed" in p and "buried" in p and "version 2" in p], problems


@pytest.mark.integration
def test_an_unsealed_erasure_that_cannot_be_rebuilt_is_named_by_verify_not_left_silent(tmp_path):
    # Adversarial review (fourteenth pass): an ingest-joined erasure of an earlier release (its tombstone entry
    # without the shards' rows) killed before its receipt cannot be rebuilt; later commits went on and it
    # was buried with the trail "intact". The store stays writable, and `verify --log` names it.
    import json as _json

    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.log_audit import audit_trail

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _killed_at_write("put receipts/0", _FORGET_JOINED, [str(root), TEST_KEY.decode(), SUBJECT])
    store = ObjectStore(str(root / "store"))
    for key in store.list_keys("tombstones"):  # as an earlier release wrote it
        entry = _json.loads(store.get(key))
        entry.pop("shard_rows", None)
        store.put(key, _json.dumps(entry).encode())
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    assert coordinator.forget([subjects(ROWS)[5]], request_id="req-next").model_version_after == 3
    catalog = Catalog(store)
    problems = [b.problem for b in audit_trail(catalog, catalog.latest(), None, None).broken]
    assert [p for p in problems if "req-joined" in p and "buried" in p], problems


@pytest.mark.integration
@pytest.mark.parametrize("model", ["mf", "item_stats"])
def test_a_receipt_rebuilt_after_a_kill_says_what_the_run_without_the_kill_said(model, tmp_path):
    # Adversarial review (fourteenth pass): for item_stats (sums changed in place, one checkpoint) the rebuilt
    # receipt said every slice from the first changed one retrained, from scratch; the run said the
    # changed slices, from the final sums.
    from expunge.orchestrator.config import ItemStatsConfig
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts

    config = job(model=ItemStatsConfig(factors=2) if model == "item_stats" else None, shards=2, slices=3)
    outcome = {}
    for case in ("killed", "run"):
        root = tmp_path / case
        Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, config)
        if case == "killed":
            _forget_killed_at(root, "put receipts/0")
            coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
        else:
            coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
            coordinator.forget([SUBJECT, _NOBODY], request_id="req-killed")
        [receipt] = [r for _, r in chained_receipts(coordinator.store, "req-killed")]
        outcome[case] = [
            (s.shard, s.first_affected_slice, s.slices_retrained, s.restarted_from, s.rows_removed)
            for s in receipt.shards
        ]
    assert outcome["killed"] == outcome["run"]


@pytest.mark.integration
def test_a_holder_whose_seal_failed_seals_it_before_its_next_commit(tmp_path, monkeypatch):
    # Adversarial review (fourteenth pass): a process holding the lease (as the service does) whose receipt
    # could not be chained after its commit (pending "receipt log") committed its next erasure over it: the
    # lease token had not changed, so nothing looked; the unsealed erasure was then buried.
    from expunge.orchestrator.erasure import sealing
    from expunge.orchestrator.errors import StorageUnavailableError
    from expunge.orchestrator.evidence.receipt_chain import chained_sequences

    root = tmp_path / "case"
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    real_append = sealing.append_receipt
    refusals = iter([True])

    def append_once_refused(store, receipt):
        if next(refusals, False):
            raise StorageUnavailableError("injected: the receipt log did not answer")
        return real_append(store, receipt)

    monkeypatch.setattr(sealing, "append_receipt", append_once_refused)
    with coordinator.session.lease.hold("expunge serve (namespace test)"):
        first = coordinator.forget([SUBJECT], request_id="b1")
        assert [p.split(":")[0] for p in first.pending] == ["receipt log"]
        coordinator.forget([subjects(ROWS)[5]], request_id="b2")
    store = coordinator.store
    chain = [
        ErasureReceipt.model_validate_json(store.get(f"receipts/chain/{s:08d}.json")) for s in chained_sequences(store)
    ]
    assert [(r.request_id, r.model_version_after) for r in chain] == [("b1", 2), ("b2", 3)]


_FORGET_TICKETED = """
import sys
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
root, key, subject = sys.argv[1:]
coordinator = Coordinator(f"{root}/store", SubjectHasher(key.encode()), None, pool_factory=local_pool)
coordinator.forget([subject], request_id="req-ticketed", ticket="GDPR-2", reason="asked in writing")
"""


@pytest.mark.integration
def test_a_receipt_rebuilt_after_a_kill_keeps_its_ticket_and_reason(tmp_path):
    # New-user review (fourteenth pass): the rebuilt receipt had no ticket, so `verify --request GDPR-2`
    # found nothing (exit 2) for the one request that erased the person.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.receipt_chain import chained_receipts
    from expunge.orchestrator.evidence.references import resolve_request

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _killed_at_write("put receipts/0", _FORGET_TICKETED, [str(root), TEST_KEY.decode(), SUBJECT])
    # Before the next writer, `verify --request` by either reference says it is unsealed, and how to seal it
    # (it said "no request answers to that reference").
    unsealed = Catalog(ObjectStore(str(root / "store")))
    for reference in ("GDPR-2", "req-ticketed"):
        with pytest.raises(
            ConfigError, match="request req-ticketed committed version 2, but its receipt is not sealed"
        ):
            resolve_request(unsealed, SubjectHasher(TEST_KEY), reference)
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    [sealed] = [r for _, r in chained_receipts(coordinator.store, "req-ticketed")]
    assert (sealed.ticket, sealed.reason) == ("GDPR-2", "asked in writing")
    assert resolve_request(Catalog(coordinator.store), coordinator.hasher, "GDPR-2") == "req-ticketed"


def _ingest_again(coordinator: Coordinator, subject: str, request_id: str) -> None:
    """Give a re-admitted ``subject`` its rows back, under new record ids (an ingest)."""
    import pyarrow as pa

    back = ROWS.filter(pc.equal(ROWS.column("subject_id"), subject))
    again = pa.array([f"{r}-again" for r in back.column("record_id").to_pylist()])
    coordinator.ingest(back.set_column(back.schema.get_field_index("record_id"), "record_id", again), request_id)


@pytest.mark.integration
def test_a_request_id_used_again_after_its_subject_was_readmitted_is_refused_not_answered_erased(tmp_path):
    # Adversarial review (fourteenth pass; older): forget S as GDPR-1, readmit S, ingest S's rows again, forget S
    # as GDPR-1 again: the old receipt came back "erased" (exit 0) while the published version served S's rows.

    root = tmp_path / "case"
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    coordinator.forget([SUBJECT], request_id="GDPR-1")
    coordinator.readmit([SUBJECT], "consent given again", request_id="readmit-1")
    _ingest_again(coordinator, SUBJECT, "ing-back")
    with pytest.raises(ConfigError, match="hold data again"):
        coordinator.forget([SUBJECT], request_id="GDPR-1")
    assert coordinator.forget([SUBJECT], request_id="GDPR-9").status == "erased"


@pytest.mark.integration
def test_a_request_whose_by_id_receipt_was_lost_still_resolves_from_the_log(tmp_path):
    # Adversarial review (fourteenth pass): killed between chaining its receipt and writing the by-id copy,
    # `verify --request ID` said the request was "not sealed yet", and no writer ever changed that.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.references import resolve_request

    root = tmp_path / "case"
    Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, CONFIG)
    _killed_at_write("put receipts/requests/req-ticketed", _FORGET_TICKETED, [str(root), TEST_KEY.decode(), SUBJECT])
    catalog = Catalog(ObjectStore(str(root / "store")))
    assert catalog.read_request_receipt("req-ticketed") is None
    assert resolve_request(catalog, SubjectHasher(TEST_KEY), "req-ticketed") == "req-ticketed"
    assert resolve_request(catalog, SubjectHasher(TEST_KEY), "GDPR-2") == "req-ticketed"


@pytest.mark.integration
def test_verify_names_who_had_erased_the_subjects_when_the_request_was_made_not_later(tmp_path):
    # Adversarial review (fourteenth pass): erased by A, found nobody as R, readmitted, re-ingested and erased
    # by C: the report of R named C, which came after it.

    from expunge.orchestrator.evidence.verify import verify_erasure

    root = tmp_path / "case"
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    coordinator.forget([SUBJECT], request_id="GDPR-A")
    assert coordinator.forget([SUBJECT], request_id="GDPR-R").status == "not_found"
    coordinator.readmit([SUBJECT], "consent given again", request_id="readmit-1")
    _ingest_again(coordinator, SUBJECT, "ing-1")
    coordinator.forget([SUBJECT], request_id="GDPR-C")
    coordinator.close()
    report = verify_erasure(str(root / "store"), "GDPR-R", SubjectHasher(TEST_KEY), log_to_mlflow=False)
    assert report.erased_earlier_by == ("GDPR-A",)


@pytest.mark.integration
def test_a_ticket_that_also_names_an_unsealed_request_says_so(tmp_path, caplog):
    # Adversarial review (fourteenth pass): a ticket filed with a sealed request and with a later one killed
    # before its seal resolved to the sealed one without a word about the other.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.references import resolve_request

    root = tmp_path / "case"
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    coordinator.forget([subjects(ROWS)[5]], request_id="req-first", ticket="GDPR-2")
    coordinator.close()
    _killed_at_write("put receipts/0", _FORGET_TICKETED, [str(root), TEST_KEY.decode(), SUBJECT])
    with caplog.at_level(logging.WARNING, logger="expunge"):
        assert (
            resolve_request(Catalog(ObjectStore(str(root / "store"))), SubjectHasher(TEST_KEY), "GDPR-2") == "req-first"
        )
    assert [r for r in caplog.records if "also names request(s) req-ticketed" in r.getMessage()]
    assert not [r for r in caplog.records if "GDPR-2" in r.getMessage()]


@pytest.mark.integration
def test_verify_of_a_service_request_not_sealed_yet_says_so(tmp_path):
    # Adversarial review (fourteenth pass): a request the service accepted (and, killed, left to its restart)
    # had no receipt, and `verify --request` said "check the request id and --storage".
    from expunge.orchestrator.evidence.verify import verify_erasure
    from expunge.orchestrator.receipts import utc_now
    from expunge.orchestrator.service.journal import Journal, JournalEntry

    root = tmp_path / "case"
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    journal = Journal(coordinator.store)
    for request_id in ("idem-accepted", "idem-failed"):
        digests = (coordinator.hasher.digest(SUBJECT),)
        journal.accept(JournalEntry(request_id=request_id, subject_digests=digests, received_at=utc_now()))
    journal.write_failed("idem-failed", "ConfigError: refused")
    store = str(root / "store")
    with pytest.raises(ConfigError, match=r"idem-accepted is known to the service .* no sealed receipt yet"):
        verify_erasure(store, "idem-accepted", coordinator.hasher, log_to_mlflow=False)
    with pytest.raises(ConfigError, match="idem-failed failed before its commit: nothing was erased"):
        verify_erasure(store, "idem-failed", coordinator.hasher, log_to_mlflow=False)
