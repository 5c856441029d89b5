"""The receipt log's anchors on MLflow runs, written by ``Lineage.anchor_receipt`` and read back by
``Lineage.chain_anchors`` and ``AuditView.chain_anchors``, against a real ``mlflow server``."""

from __future__ import annotations

import hashlib
import socket
import uuid

import pytest
from mlflow import MlflowClient

from expunge.orchestrator.catalog import RegistryBinding
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import TrackingUnreachable
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.registry.chain_anchors import ChainAnchor, ChainAnchors
from expunge.orchestrator.registry.checks import AuditView
from tests.engine import job
from tests.lineage._support import email_rows

pytestmark = pytest.mark.integration

ROWS = email_rows(users=12, seed=8)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_anchors_tag_every_run_of_the_request_in_this_store_and_read_back(mlflow_server, tmp_path, hasher, monkeypatch):
    name = f"anchors-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{mlflow_server.bucket}/artifacts")
    tracking = TrackingConfig(
        uri=mlflow_server.uri, backend_store_uri=mlflow_server.backend_store_uri, experiment=name, model_name=name
    )
    store = str(tmp_path / "store")
    lineage = Lineage(tracking, store)
    # Trained without the registry: runs of requests are what anchors need, no model version.
    coordinator = Coordinator(store, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=1, slices=1))
    manifest = coordinator.manifest
    assert manifest is not None
    digest = hasher.digest("nobody@example.org")
    for request in ("req-1", "req-2", "req-2"):  # req-2 recorded twice: one run (recording is idempotent)
        missed = ErasureReceipt(
            request_id=request, status="not_found", subject_digests=(digest,), not_found_digests=(digest,)
        )
        lineage.record_request(missed, manifest)
    client = lineage.client
    # A second run of req-2 in this store (e.g. one an older Expunge recorded twice): both runs are anchored.
    client.create_run(lineage.experiment_id, tags={"expunge.request_id": "req-2", "expunge.storage": store})
    # A run of the same request id for another store in the same experiment: never tagged, never read.
    stranger = client.create_run(
        lineage.experiment_id, tags={"expunge.request_id": "req-1", "expunge.storage": str(tmp_path / "other")}
    ).info.run_id

    def runs_of(request: str) -> list[str]:
        found = client.search_runs([lineage.experiment_id], f"tags.`expunge.request_id` = '{request}'")
        return sorted(r.info.run_id for r in found if r.info.run_id != stranger)

    first, second = _sha("receipt 1"), _sha("receipt 2")
    assert lineage.anchor_receipt("req-1", 1, first, None) == runs_of("req-1")
    assert sorted(lineage.anchor_receipt("req-2", 2, second, first)) == runs_of("req-2")
    assert len(runs_of("req-2")) == 2
    assert lineage.anchor_receipt("req-unknown", 3, _sha("receipt 3"), second) == []

    tags = client.get_run(runs_of("req-1")[0]).data.tags
    assert (tags["expunge.chain.sequence"], tags["expunge.chain.receipt_sha256"]) == ("1", first)
    assert tags["expunge.chain.previous_sha256"] == "none"
    assert "expunge.chain.sequence" not in client.get_run(stranger).data.tags

    expected = [
        ChainAnchor(
            run_id=runs_of("req-1")[0], request_id="req-1", sequence=1, receipt_sha256=first, previous_sha256=None
        )
    ]
    expected += [
        ChainAnchor(run_id=run, request_id="req-2", sequence=2, receipt_sha256=second, previous_sha256=first)
        for run in runs_of("req-2")
    ]
    assert lineage.chain_anchors() == expected
    binding = RegistryBinding(tracking_uri=mlflow_server.uri, experiment=name, model_name=name, alias="production")
    assert AuditView(binding, store).chain_anchors() == expected
    with pytest.raises(ValueError, match="frozen"):
        expected[0].sequence = 5  # type: ignore[misc]

    # A hand-edited anchor that no longer parses is left out (a receipt without a valid anchor is reported).
    client.set_tag(runs_of("req-1")[0], "expunge.chain.sequence", "one")
    assert lineage.chain_anchors() == expected[1:]

    with pytest.raises(ValueError, match="sha256"):
        lineage.anchor_receipt("req-1", 1, "not-a-digest", None)
    with pytest.raises(ValueError, match="starts at 1"):
        lineage.anchor_receipt("req-1", 0, first, None)


def test_a_tracking_server_that_does_not_answer_is_reported_as_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    uri = f"http://127.0.0.1:{port}"
    anchors = ChainAnchors(MlflowClient(uri), uri, "1", str(tmp_path / "store"))
    with pytest.raises(TrackingUnreachable, match=f"127.0.0.1:{port}"):
        anchors.anchor("req-1", 1, _sha("receipt 1"), None)
    with pytest.raises(TrackingUnreachable, match=f"127.0.0.1:{port}"):
        anchors.read()
