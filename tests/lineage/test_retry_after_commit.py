"""A retry of a request that committed before a crash answers with its erasure once, never as a miss."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.receipt_chain import chained_receipts, walk_chain
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.registry.faults import FAULT_AT_MLFLOW
from expunge.shards.store import InjectedFault
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows(users=16)
SUBJECT = subjects(ROWS)[3]


def _open(root) -> Coordinator:
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="retry", model_name="expunge-retry")
    return Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), Lineage(tracking, str(root / "store")), local_pool)


@pytest.mark.parametrize("step", ["alias.move", "run.end"])
def test_a_retry_after_a_crash_past_the_commit_returns_the_erasure(tmp_path, monkeypatch, step):
    _open(tmp_path).train(ROWS, job(shards=2, slices=2))
    monkeypatch.setenv(FAULT_AT_MLFLOW, step)
    monkeypatch.setenv("EXPUNGE_FAULT_MODE", "raise")
    # MLflow fails after the store commit: the request is erased all the same, its registration pending.
    first = _open(tmp_path).forget([SUBJECT], request_id="GDPR-7")
    assert first.status == "erased"
    assert [p.split(":")[0] for p in first.pending] == ["registration"]
    assert InjectedFault.__name__ in first.pending[0]
    monkeypatch.delenv(FAULT_AT_MLFLOW)

    coordinator = _open(tmp_path)  # a restarted job
    receipt = coordinator.forget([SUBJECT], request_id="GDPR-7")
    assert receipt.status == "erased"
    assert receipt.rows_removed == ROWS.column("subject_id").to_pylist().count(SUBJECT)
    assert [r.status for _, r in chained_receipts(coordinator.store, "GDPR-7")] == ["erased"]
    assert walk_chain(coordinator.store).intact
    again = coordinator.forget([SUBJECT], request_id="GDPR-7")  # idempotent: the same receipt, no second entry
    assert again.rows_removed == receipt.rows_removed
    assert len(chained_receipts(coordinator.store, "GDPR-7")) == 1


def test_a_request_id_reused_for_other_subjects_is_refused(tmp_path):
    coordinator = _open(tmp_path)
    coordinator.train(ROWS, job(shards=2, slices=2))
    coordinator.forget([SUBJECT], request_id="GDPR-8")
    with pytest.raises(ConfigError, match="already erased other subjects"):
        coordinator.forget([subjects(ROWS)[5]], request_id="GDPR-8")


def test_an_mlflow_error_of_its_own_kind_after_the_commit_leaves_the_registration_pending(tmp_path, monkeypatch):
    # MLflow raises MlflowException (not an Expunge error) when its server goes away mid-registration:
    # the erasure is committed all the same, never reported as a bug (exit 5) or a failure.
    from mlflow.exceptions import MlflowException

    _open(tmp_path).train(ROWS, job(shards=2, slices=2))

    def down(*args, **kwargs):
        raise MlflowException("API request failed: connection refused")

    monkeypatch.setattr(Lineage, "record_erasure", down)
    receipt = _open(tmp_path).forget([SUBJECT], request_id="GDPR-9")
    assert receipt.status == "erased"
    assert receipt.pending[0].startswith("registration: MlflowException")
    monkeypatch.undo()
    again = _open(tmp_path)  # the next writer reconciles MLflow with the store on open
    assert again.lineage.current_version() == "2"
