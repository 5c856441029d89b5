"""Fault injection at every storage write of training and erasure: old state or new, never a mix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.evidence.scan import scan_store
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import FaultPlan, InjectedFault, ObjectStore
from tests.conftest import TEST_KEY
from tests.engine import from_scratch, job, subject_in_slice, without

ROOT = Path(__file__).resolve().parents[2]
ROWS = synthetic_ratings(SyntheticRatingsConfig(users=24, items=15, ratings_per_user=5, seed=11))
CONFIG = job(shards=2, slices=2)


def _count_writes(monkeypatch, action) -> int:
    monkeypatch.setenv("EXPUNGE_FAULT_AT_WRITE", str(10**9))  # counting only
    FaultPlan.reset()
    action()
    monkeypatch.delenv("EXPUNGE_FAULT_AT_WRITE")
    return FaultPlan.writes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained store (template), the subject to erase, and both acceptable end states."""
    from expunge.orchestrator.digests import SubjectHasher

    hasher = SubjectHasher(TEST_KEY)
    base = tmp_path_factory.mktemp("crash")
    coordinator = Coordinator(str(base / "template"), hasher, pool_factory=local_pool)
    coordinator.train(ROWS, CONFIG)
    subject = subject_in_slice(coordinator, hasher, sorted(set(ROWS.column(SUBJECT_ID).to_pylist())), 0)
    old = coordinator.constituent_tensors()
    new = from_scratch(base, coordinator, without(ROWS, [subject]), CONFIG, hasher).constituent_tensors()
    return base / "template", subject, old, new


def _assert_old_or_new(store_dir: Path, hasher, subject: str, old, new) -> int:
    """Reopen the store like a restarted process: it must hold exactly the old or the new state."""
    reopened = Coordinator(str(store_dir), hasher, pool_factory=local_pool)
    assert reopened.manifest is not None
    tensors = reopened.constituent_tensors()
    expected = old if reopened.manifest.version == 1 else new
    assert all(constituents_equal(tensors, expected).values()), f"mixed state at v{reopened.manifest.version}"
    return reopened.manifest.version


def _retry_and_check(store_dir: Path, hasher, subject: str, new) -> None:
    retried = Coordinator(str(store_dir), hasher, pool_factory=local_pool)
    retried.forget([subject])
    assert all(constituents_equal(retried.constituent_tensors(), new).values())
    assert scan_store(ObjectStore(str(store_dir)), subject, hasher.digest(subject)).clean


def test_training_survives_a_fault_at_every_write(tmp_path, hasher, monkeypatch):
    reference = Coordinator(str(tmp_path / "reference"), hasher, pool_factory=local_pool)
    writes = _count_writes(monkeypatch, lambda: reference.train(ROWS, CONFIG))
    assert writes >= 2 * (2 * 2 + 1) + 2  # slices + checkpoints + manifest per shard, placement, ensemble
    expected = reference.constituent_tensors()
    for at in range(1, writes + 1):
        store_dir = tmp_path / f"at-{at}"
        monkeypatch.setenv("EXPUNGE_FAULT_AT_WRITE", str(at))
        FaultPlan.reset()
        with pytest.raises(InjectedFault):
            Coordinator(str(store_dir), hasher, pool_factory=local_pool).train(ROWS, CONFIG)
        monkeypatch.delenv("EXPUNGE_FAULT_AT_WRITE")
        restarted = Coordinator(str(store_dir), hasher, pool_factory=local_pool)
        assert restarted.manifest is None  # nothing was published: the old (empty) state
        restarted.train(ROWS, CONFIG)
        assert all(constituents_equal(restarted.constituent_tensors(), expected).values())


def test_erasure_survives_an_injected_error_at_every_write(trained, tmp_path, hasher, monkeypatch):
    template, subject, old, new = trained
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    coordinator = Coordinator(str(probe), hasher, pool_factory=local_pool)
    writes = _count_writes(monkeypatch, lambda: coordinator.forget([subject]))
    assert writes >= 5
    seen_versions = set()
    for at in range(1, writes + 1):
        store_dir = tmp_path / f"at-{at}"
        shutil.copytree(template, store_dir)
        monkeypatch.setenv("EXPUNGE_FAULT_AT_WRITE", str(at))
        FaultPlan.reset()
        try:
            receipt = Coordinator(str(store_dir), hasher, pool_factory=local_pool).forget([subject])
        except InjectedFault:
            pass  # before the commit point: nothing changed
        else:
            # After the commit point the request is never reported failed: the step is named pending.
            assert receipt.status == "erased"
            assert any("InjectedFault" in p for p in receipt.pending), receipt.pending
        monkeypatch.delenv("EXPUNGE_FAULT_AT_WRITE")
        seen_versions.add(_assert_old_or_new(store_dir, hasher, subject, old, new))
        _retry_and_check(store_dir, hasher, subject, new)
    assert seen_versions == {1, 2}  # faults hit both before and after the commit point


_KILL_SCRIPT = """
import sys
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
Coordinator(sys.argv[1], SubjectHasher(sys.argv[2].encode()), pool_factory=local_pool).forget([sys.argv[3]])
"""


@pytest.mark.integration
def test_erasure_survives_a_killed_process_at_every_write(trained, tmp_path, hasher, monkeypatch):
    template, subject, old, new = trained
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    writes = _count_writes(
        monkeypatch, lambda: Coordinator(str(probe), hasher, pool_factory=local_pool).forget([subject])
    )
    for at in range(1, writes + 1):
        store_dir = tmp_path / f"kill-{at}"
        shutil.copytree(template, store_dir)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPUNGE_FAULT_AT_WRITE": str(at), "EXPUNGE_FAULT_MODE": "kill"}
        result = subprocess.run(
            [sys.executable, "-c", _KILL_SCRIPT, str(store_dir), TEST_KEY.decode(), subject],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 137, result.stderr[-2000:]
        _assert_old_or_new(store_dir, hasher, subject, old, new)
        _retry_and_check(store_dir, hasher, subject, new)
