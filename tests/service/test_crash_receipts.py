"""Receipts rebuilt from durable facts: a service killed at a step of the erasure path answers as if it had not been.

One batch of three coalesced requests (two subjects found, one not) runs in a process that is
killed (``os._exit``) at a chosen store write. A new service on the store finishes the batch;
every request's receipt then says what a run without the crash said: found or not found, rows
removed, shards retrained and from which slice, the version published (issue 18, deliverable 3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from expunge.orchestrator.config import JobConfig, ServiceConfig, StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.service.core import ErasureService
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.conftest import TEST_KEY
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=12, ratings_per_user=5, seed=21))
FOUND = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
REQUESTS = [[FOUND[0]], ["nobody-here"], [FOUND[7], FOUND[11]]]
ROOT = Path(__file__).resolve().parents[2]

_RUN = """
import sys
from expunge.orchestrator.config import JobConfig
from expunge.orchestrator.coordinator import local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.service.core import ErasureService
import json
config = JobConfig.model_validate_json(sys.argv[1])
service = ErasureService(config, SubjectHasher(sys.argv[2].encode()), None, pool_factory=local_pool, warm=False)
ids = [service.submit(subjects, idempotency_key=f"K-{i}") for i, subjects in enumerate(json.loads(sys.argv[3]))]
for request_id in ids:
    service.wait(request_id, "committed", timeout=120)
service.close()
"""


def _config(root: Path) -> JobConfig:
    return job(shards=3, slices=3).model_copy(
        update={
            "storage": StorageConfig(uri=str(root)),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(window_ms=1500),  # the three submissions fall in one window
        }
    )


def _run(root: Path, **fault: str) -> subprocess.CompletedProcess[str]:
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT), **fault}
    return subprocess.run(
        [sys.executable, "-c", _RUN, _config(root).model_dump_json(), TEST_KEY.decode(), json.dumps(REQUESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _facts(receipt: ErasureReceipt) -> tuple:
    return (
        receipt.status,
        receipt.subject_digests,
        receipt.not_found_digests,
        receipt.rows_removed,
        tuple(
            (s.shard, s.first_affected_slice, s.slices_retrained, s.restarted_from, s.rows_removed)
            for s in receipt.shards
        ),
        receipt.untouched_shards,
        receipt.model_version_before,
        receipt.model_version_after,
    )


def _receipts(root: Path, hasher) -> list[tuple]:
    """Start a service on the store (finishing what a crash left), re-submit the keys, read every receipt."""
    service = ErasureService(_config(root), hasher, None, pool_factory=local_pool, warm=False)
    try:
        ids = [service.submit(s, idempotency_key=f"K-{i}") for i, s in enumerate(REQUESTS)]
        return [_facts(service.wait(i, "committed", timeout=120).receipt) for i in ids]
    finally:
        service.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash-receipts") / "store"
    config = _config(root)
    from expunge.orchestrator.digests import SubjectHasher

    Coordinator(config.storage, SubjectHasher(TEST_KEY), pool_factory=local_pool).train(ROWS, config)
    return root


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> list[tuple]:
    root = tmp_path_factory.mktemp("reference") / "store"
    shutil.copytree(template, root)
    result = _run(root)
    assert result.returncode == 0, result.stderr[-3000:]
    from expunge.orchestrator.digests import SubjectHasher

    facts = _receipts(root, SubjectHasher(TEST_KEY))
    assert [f[0] for f in facts] == ["erased", "not_found", "erased"]
    assert all(f[3] > 0 for f in (facts[0], facts[2]))
    return facts


@pytest.mark.parametrize(
    ("match", "at"),
    [
        ("put journal/batches/", "1"),  # the batch recorded, nothing retrained
        ("create ensemble/", "1"),  # retrained, not yet published
        ("put receipts/0", "1"),  # committed and purged: the per-version receipt lost
        ("create receipts/chain", "1"),  # the receipt log not yet appended
        ("put journal/committed/", "2"),  # the first request's committed record written, the others not
    ],
)
def test_receipts_after_a_crash_match_a_run_without_it(template, reference, tmp_path, hasher, match, at):
    root = tmp_path / "store"
    shutil.copytree(template, root)
    crashed = _run(root, EXPUNGE_FAULT_AT_WRITE=at, EXPUNGE_FAULT_MATCH=match, EXPUNGE_FAULT_MODE="kill")
    assert crashed.returncode == 137, crashed.stderr[-3000:]  # it did crash at that write
    assert _receipts(root, hasher) == reference
