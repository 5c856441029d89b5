"""The registration thread yields to the ready solve's GIL-bound phases, and a not-found run is written once."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from expunge.orchestrator.config import ItemStatsConfig, JobConfig, ServiceConfig, StorageConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.registry.runs import RunRecorder
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.registrar import Registrar
from expunge.orchestrator.serving import ready
from expunge.orchestrator.serving.solve_gate import SolveGate
from tests.engine import job
from tests.service.test_restart_not_found_runs import ROWS, _not_found_runs, _trained


def _waiter(gate: SolveGate) -> tuple[threading.Thread, list[float]]:
    waited: list[float] = []
    thread = threading.Thread(target=lambda: waited.append(gate.yield_to_solve()))
    thread.start()
    return thread, waited


def test_an_idle_gate_lets_the_caller_through_without_waiting():
    gate = SolveGate()
    assert gate.yield_to_solve() == 0.0
    assert (gate.waits, gate.held, gate.waiting) == (0, False, 0)


def test_a_caller_waits_while_the_solve_holds_the_gate_and_goes_on_when_it_ends():
    gate = SolveGate(max_wait_s=600)
    release = threading.Event()

    def solve() -> None:
        with gate.hold(), gate.hold():  # holds nest: the gate opens when the last one ends
            release.wait(60)

    solver = threading.Thread(target=solve)
    solver.start()
    while not gate.held:
        threading.Event().wait(0.001)
    caller, waited = _waiter(gate)
    while gate.waiting == 0:
        threading.Event().wait(0.001)
    assert caller.is_alive()  # held: the caller is still at the gate
    release.set()
    solver.join(60)
    caller.join(60)
    assert not caller.is_alive()
    assert waited
    assert gate.waits == 1
    assert not gate.held


def test_a_caller_never_waits_longer_than_max_wait_s_so_a_held_gate_only_delays_it():
    gate = SolveGate(max_wait_s=0.01)
    with gate.hold():
        caller, waited = _waiter(gate)
        caller.join(60)  # returns while the gate is still held
        assert not caller.is_alive()
        assert gate.held
    assert len(waited) == 1
    assert gate.waits == 1


def test_a_negative_max_wait_is_refused():
    with pytest.raises(ValueError, match=r"max_wait_s must be >= 0"):
        SolveGate(max_wait_s=-1)


def _statistics_job(tmp_path: Path) -> JobConfig:
    return job(model=ItemStatsConfig(), shards=2, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(tmp_path / "store")),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(window_ms=0),
        }
    )


def test_the_ready_solve_holds_the_gate_while_it_decodes_and_sums_and_not_while_it_fits(
    tmp_path: Path, hasher, monkeypatch
):
    config = _statistics_job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    seen: dict[str, list[bool]] = {"decode": [], "fit": []}
    gate = SolveGate()
    real_load = ready.load_checkpoint

    def load(*args, **kwargs):
        seen["decode"].append(gate.held)
        return real_load(*args, **kwargs)

    def fit(model, states):
        seen["fit"].append(gate.held)
        return ready.StatisticsEnsemble(model, states)

    monkeypatch.setattr(ready, "load_checkpoint", load)
    fits = ready.ReadyFits(coordinator.store, solve=fit, gate=gate)
    try:
        fits.request(coordinator.require_manifest())
        assert fits.wait(coordinator.require_manifest().version, timeout=120)
    finally:
        fits.close()
    assert seen["decode"]
    assert all(seen["decode"])
    assert seen["fit"] == [False]
    assert not gate.held


def _registration_at_the_held_gate(
    tmp_path: Path, hasher
) -> tuple[ErasureService, SolveGate, str, JobConfig, Callable[[], None]]:
    """A service with one not-found request committed and its registration waiting at the held gate.

    ``max_wait_s`` is 600, so it waits until the returned ``release`` (idempotent) lets the gate go.
    """
    store, tracking, config = _trained(tmp_path, hasher)
    service = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
    gate = service.readiness.gate
    gate.max_wait_s = 600
    hold = gate.hold()
    hold.__enter__()
    released: list[bool] = []

    def release() -> None:
        if not released:
            released.append(True)
            hold.__exit__(None, None, None)

    request_id = service.submit(["nobody-here"])
    service.wait(request_id, "committed", timeout=120)
    for _ in range(30_000):  # the registration reaches the gate and waits there
        if gate.waiting:
            break
        threading.Event().wait(0.001)
    return service, gate, request_id, config, release


def test_registration_waits_at_the_gate_while_the_solve_holds_it(tmp_path: Path, hasher):
    service, gate, request_id, config, release = _registration_at_the_held_gate(tmp_path, hasher)
    try:
        assert gate.waiting == 1
        assert service.status(request_id).stage == "committed"
        release()
        status = service.wait(request_id, "registered", timeout=120)
        assert status.stage == "registered"
        assert gate.waits >= 1
        # and it runs registration_nice_increment (default 19) nicer than the thread that started it
        registrar = service.registrar._thread.native_id
        assert registrar is not None
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + config.service.registration_nice_increment)
        assert os.getpriority(os.PRIO_PROCESS, registrar) == expected
    finally:
        release()
        service.close()


def test_a_registration_retried_after_a_later_failure_writes_each_not_found_run_once(
    tmp_path: Path, hasher, monkeypatch
):
    """Review: without the idempotency search a retried registration wrote the first request's run again."""
    store, tracking, config = _trained(tmp_path, hasher)
    searched: list[str] = []
    real_search = RunRecorder._not_found_run
    monkeypatch.setattr(RunRecorder, "_not_found_run", lambda self, rid: searched.append(rid) or real_search(self, rid))
    real_record, failed = Lineage.record_request, []

    def second_fails_once(self, receipt, *args, **kwargs):
        if len(calls) == 1 and not failed:
            failed.append(receipt.request_id)
            raise RuntimeError("the tracking database is locked")
        calls.append(receipt.request_id)
        return real_record(self, receipt, *args, **kwargs)

    calls: list[str] = []
    monkeypatch.setattr(Lineage, "record_request", second_fails_once)
    start = Registrar.start
    monkeypatch.setattr(Registrar, "start", lambda self: None)  # both commits wait for one registration
    service = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
    try:
        first, second = service.submit(["nobody-here"]), service.submit(["nobody-there"])
        for request_id in (first, second):
            service.wait(request_id, "committed", timeout=120)
        assert service.journaling.drain(timeout=120)
        start(service.registrar)
        for request_id in (first, second):
            assert service.wait(request_id, "registered", timeout=120).stage == "registered"
    finally:
        service.close()
    assert failed  # the fault was hit after the first request's run was written
    # Committed by this process: no idempotency search, except for the one whose round failed
    # before it was recorded (its run might have landed: an answer lost); the recorded one is skipped.
    assert searched == failed
    for request_id in (first, second):
        assert len(_not_found_runs(tracking, request_id)) == 1, request_id


def test_a_registration_waiting_at_the_gate_does_not_hold_the_lock_a_repair_on_the_commit_worker_needs(
    tmp_path: Path, hasher
):
    """Review: it waited inside ``FollowUp.registering``, which ``repair`` takes while holding the coordinator."""
    service, gate, _, _, release = _registration_at_the_held_gate(tmp_path, hasher)
    try:
        assert gate.waiting == 1
        with service._work:  # what FollowUp.repair does on the commit worker
            got = service.follow.registering.acquire(timeout=30)
            if got:
                service.follow.registering.release()
        assert got
    finally:
        release()
        service.close()


def test_a_run_written_before_its_answer_was_lost_is_found_by_the_retry_not_written_again(
    tmp_path: Path, hasher, monkeypatch
):
    """Review: a round that failed after MLflow finished the run retried without the search (a second run)."""
    store, tracking, config = _trained(tmp_path, hasher)
    real, lost = RunRecorder.record_not_found, []

    def answer_lost_once(self, receipt, *args, **kwargs):
        run_id = real(self, receipt, *args, **kwargs)  # written and FINISHED on the tracking server
        if not lost:
            lost.append(run_id)
            raise ConnectionError("read timed out (the server applied the write)")
        return run_id

    monkeypatch.setattr(RunRecorder, "record_not_found", answer_lost_once)
    service = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit(["nobody-here"])
        assert service.wait(request_id, "registered", timeout=120).stage == "registered"
    finally:
        service.close()
    assert lost
    finished = [r for r in _not_found_runs(tracking, request_id) if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == lost
