"""A deferred ``Lineage`` opens MLflow on first use, and reconciles before anything else, exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import TrackingUnreachable
from expunge.orchestrator.registry import Lineage
from expunge.pipelines._runtime import connecting_beside
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows

ROWS = email_rows(users=8)


def _tracking(root: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="deferred", model_name="expunge-deferred")


@pytest.fixture
def reconciles(monkeypatch) -> list[int]:
    """Counts every reconcile pass (``Lineage._reconcile``), whoever starts it."""
    calls: list[int] = []
    original = Lineage._reconcile

    def counted(self: Lineage) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(Lineage, "_reconcile", counted)
    return calls


def _trained_without_mlflow(root: Path) -> str:
    """A store published with tracking off: MLflow lags it, so a reconcile has a version to record."""
    store = str(root / "store")
    Coordinator(store, SubjectHasher(TEST_KEY), None, pool_factory=local_pool).train(ROWS, job(shards=2, slices=2))
    return store


def test_a_deferred_lineage_touches_nothing_until_first_use(tmp_path, reconciles):
    lineage = Lineage(_tracking(tmp_path), str(tmp_path / "store"), deferred=True)

    assert not lineage.is_open
    assert not (tmp_path / "mlflow.db").exists()
    assert reconciles == []
    assert lineage.tracking.model_name == "expunge-deferred"  # known without connecting


def test_the_first_use_reconciles_before_answering(tmp_path, reconciles):
    store = _trained_without_mlflow(tmp_path)
    lineage = Lineage(_tracking(tmp_path), store, deferred=True)

    version = lineage.current_version()  # a read: the reconcile records the published version first

    assert version == "1"
    assert lineage.recorded_ensemble_version() == 1
    assert lineage.is_open
    assert len(reconciles) == 1


def test_reconcile_as_the_first_use_runs_once(tmp_path, reconciles):
    store = _trained_without_mlflow(tmp_path)
    deferred = Lineage(_tracking(tmp_path / "a"), store, deferred=True)
    deferred.reconcile()
    assert len(reconciles) == 1  # opening and the call are one pass

    reconciles.clear()
    eager = Lineage(_tracking(tmp_path / "b"), store)
    eager.reconcile()
    assert len(reconciles) == 2  # the constructor's, then the call's (unchanged)


def test_connect_opens_mlflow_but_the_first_use_still_reconciles_first(tmp_path, reconciles):
    store = _trained_without_mlflow(tmp_path)
    lineage = Lineage(_tracking(tmp_path), store, deferred=True)

    assert lineage.connect() is lineage
    assert (tmp_path / "mlflow.db").exists()
    assert reconciles == []
    assert not lineage.is_open

    assert lineage.current_version() == "1"
    assert len(reconciles) == 1


def test_a_failed_first_reconcile_is_tried_again_at_the_next_use(tmp_path, monkeypatch):
    store = _trained_without_mlflow(tmp_path)
    original = Lineage._reconcile
    attempts: list[int] = []

    def flaky(self: Lineage) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise TrackingUnreachable("sqlite://", "database is locked")
        original(self)

    monkeypatch.setattr(Lineage, "_reconcile", flaky)
    lineage = Lineage(_tracking(tmp_path), store, deferred=True)

    with pytest.raises(TrackingUnreachable):
        lineage.current_version()
    assert not lineage.is_open
    assert lineage.current_version() == "1"  # never used unreconciled
    assert len(attempts) == 2


def test_threads_meeting_a_deferred_lineage_reconcile_it_once(tmp_path, reconciles):
    store = _trained_without_mlflow(tmp_path)
    lineage = Lineage(_tracking(tmp_path), store, deferred=True)
    start = threading.Barrier(4)
    seen: list[str | None] = []

    def use() -> None:
        start.wait()
        seen.append(lineage.current_version())

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert seen == ["1"] * 4
    assert len(reconciles) == 1


def test_an_unreachable_server_is_reported_at_first_use_of_a_deferred_lineage(tmp_path):
    tracking = TrackingConfig(uri="http://127.0.0.1:9", backend_store_uri=f"sqlite:///{tmp_path / 'x.db'}")
    lineage = Lineage(tracking, str(tmp_path / "store"), deferred=True)  # nothing raised yet
    with pytest.raises(TrackingUnreachable):
        lineage.open()


class _Connecting:
    """Stands in for a deferred Lineage in ``connecting_beside``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.is_open = False
        self.thread: str | None = None

    def connect(self) -> _Connecting:
        self.thread = threading.current_thread().name
        if self.error is not None:
            raise self.error
        return self


def test_connecting_beside_connects_in_another_thread():
    lineage = _Connecting()
    with connecting_beside(lineage):  # type: ignore[arg-type]
        pass
    assert lineage.thread is not None
    assert lineage.thread != threading.current_thread().name


def test_connecting_beside_raises_the_connect_error_after_the_block():
    done: list[int] = []
    with pytest.raises(TrackingUnreachable), connecting_beside(_Connecting(TrackingUnreachable("http://x", "down"))):  # type: ignore[arg-type]
        done.append(1)
    assert done == [1]  # the block (Ray start) ran first, as before


def test_the_blocks_own_error_wins_over_the_connect_error():
    with pytest.raises(KeyError), connecting_beside(_Connecting(TrackingUnreachable("http://x", "down"))):  # type: ignore[arg-type]
        raise KeyError("ray did not start")
