"""Evidence a saboteur cannot fake: each way that fooled ``verify`` before issue 19 is now caught.

One store is trained and erased once per module (in-process shards, sqlite MLflow); each test
sabotages a copy of it, as someone with write access to the store (not to MLflow, nor to the
Object Lock bucket) would, and checks that verify names what was done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import EvidenceConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.receipt_chain import chain_key
from expunge.orchestrator.evidence.verify import verify_erasure, verify_log
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.journal import Journal, JournalEntry
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.conftest import TEST_KEY
from tests.engine import job

MODEL = "expunge-sabotage"
TICKET = "CASE-2026-7"


@dataclass
class Erased:
    root: Path
    store: Path
    before: Path  # the store just before the erasure
    receipt: ErasureReceipt
    subject: str


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> Erased:
    root = tmp_path_factory.mktemp("sabotage")
    rows = synthetic_ratings(SyntheticRatingsConfig(users=40, items=30, ratings_per_user=8, seed=3))
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="sabotage", model_name=MODEL)
    store = root / "store"
    lineage = Lineage(tracking, str(store))
    coordinator = Coordinator(str(store), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    # A journalled request, as the service writes before it acknowledges one.
    Journal(ObjectStore(str(store))).accept(
        JournalEntry(request_id="req-journalled", subject_digests=("d",), received_at="2026-12-01T00:00:00+00:00")
    )
    shutil.copytree(store, root / "before")
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[7]
    receipt = coordinator.forget([subject], request_id="req-sabotage", ticket=TICKET, reason="Art. 17 request")
    coordinator.close()
    return Erased(root, store, root / "before", receipt, subject)


@pytest.fixture
def copy(erased: Erased, tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(erased.store, target)
    return target


@pytest.fixture
def in_place(erased: Erased, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The module's store itself, restored after the test (MLflow knows the store by its URI, not a copy's)."""
    backup = tmp_path / "backup"
    shutil.copytree(erased.store, backup)
    yield erased.store
    shutil.rmtree(erased.store)
    shutil.copytree(backup, erased.store)


def _verify(store: Path, reference: str = "req-sabotage"):  # type: ignore[no-untyped-def]
    return verify_erasure(str(store), reference, SubjectHasher(TEST_KEY), log_to_mlflow=False)


def _shard_manifest(store: Path, shard: int) -> Path:
    catalog = Catalog(ObjectStore(str(store)))
    latest = catalog.latest()
    assert latest is not None
    return store / f"shards/{shard:04d}/manifests/{latest.shard_versions[shard]:08d}.json"


def test_the_receipt_binds_every_file_of_every_shard_with_its_step(erased):
    state = erased.receipt.state
    assert state is not None
    assert {f.shard for f in state.files} == {0, 1}  # touched and untouched shards alike
    kinds = {(f.shard, f.kind, f.step) for f in state.files}
    assert {(s, "slice", k) for s in (0, 1) for k in (0, 1)} <= kinds
    assert {(s, "checkpoint", k) for s in (0, 1) for k in (0, 1)} <= kinds
    for file in state.files:
        assert hashlib.sha256((erased.store / file.key).read_bytes()).hexdigest() == file.sha256
    report = _verify(erased.store)
    assert report.check("state").status == "passed"
    assert (erased.receipt.ticket, erased.receipt.retrain_cpu_seconds > 0) == (TICKET, True)


def test_a_pre_erasure_checkpoint_moved_into_an_untouched_shard_fails_verify_even_with_its_manifest_rehashed(
    erased, copy
):
    (touched,) = erased.receipt.affected_shards
    untouched = 1 - touched
    # The touched shard's checkpoint from before the erasure: trained on the erased person's rows.
    old = json.loads(_shard_manifest(erased.before, touched).read_text())
    stolen = (erased.before / old["checkpoints"][-1]["key"]).read_bytes()
    manifest_path = _shard_manifest(copy, untouched)
    manifest = json.loads(manifest_path.read_text())
    target = manifest["checkpoints"][-1]
    (copy / target["key"]).write_bytes(stolen)
    target["sha256"] = hashlib.sha256(stolen).hexdigest()  # the manifest rehashed to match
    manifest_path.write_text(json.dumps(manifest, indent=1))

    report = _verify(copy)
    assert report.status == "failed"
    assert report.check("exactness").status == "passed"  # only the touched shard is re-derived
    state = report.check("state")
    assert state.status == "failed"
    assert f"the checkpoint after slice 1 of shard {untouched}" in state.summary
    assert f"the manifest of shard {untouched}" in state.summary
    assert any(b.key == "state" for b in verify_log(str(copy)).broken)


def _reseal(store: Path, sequence: int, **changes: object) -> None:
    """Edit chained receipt #sequence, rewrite every later link and every copy, as a careful saboteur would."""
    data = json.loads((store / chain_key(sequence)).read_text())
    data.update(changes)
    receipt = ErasureReceipt.model_validate(data)
    body = receipt.model_dump_json(indent=1).encode()
    (store / chain_key(sequence)).write_bytes(body)
    (store / f"receipts/requests/{receipt.request_id}.json").write_bytes(body)
    version_receipt = store / f"receipts/{receipt.model_version_after:08d}.json"
    if version_receipt.exists():
        version = json.loads(version_receipt.read_text())
        version.update({k: v for k, v in changes.items() if k in version})
        version_receipt.write_text(json.dumps(version, indent=1))
    previous = hashlib.sha256(body).hexdigest()
    later = sequence + 1
    while (store / chain_key(later)).exists():
        nxt = json.loads((store / chain_key(later)).read_text())
        nxt["previous_receipt_sha256"] = previous
        body = ErasureReceipt.model_validate(nxt).model_dump_json(indent=1).encode()
        (store / chain_key(later)).write_bytes(body)
        (store / f"receipts/requests/{nxt['request_id']}.json").write_bytes(body)
        previous = hashlib.sha256(body).hexdigest()
        later += 1


def _sequence(store: Path, request_id: str) -> int:
    for key in sorted((store / "receipts/chain").iterdir()):
        if json.loads(key.read_text())["request_id"] == request_id:
            return int(key.stem)
    raise AssertionError(request_id)


def test_a_receipt_edited_and_the_chain_resealed_is_reported_as_tampering_by_its_mlflow_anchor(erased, in_place):
    before = verify_log(str(in_place))
    assert before.intact, before.broken
    assert "MLflow anchors" in before.witnesses
    sequence = _sequence(in_place, "req-sabotage")
    _reseal(in_place, sequence, rows_removed=0)

    report = verify_log(str(in_place))
    assert not report.intact
    problems = [b for b in report.broken if b.sequence == sequence]
    assert problems, report.broken
    assert "anchor in MLflow run" in problems[0].problem
    assert "resealed" in problems[0].problem


def test_a_deleted_journal_is_detected_by_the_position_the_receipts_recorded(erased, copy):
    assert erased.receipt.journal_sequence >= 1
    assert verify_log(str(copy)).intact
    shutil.rmtree(copy / "journal")
    report = verify_log(str(copy))
    assert any("journal was deleted or cut short" in b.problem for b in report.broken), report.broken


def test_a_journal_entry_edited_is_detected(erased, copy):
    entry = copy / "journal/requests/req-journalled.json"
    entry.write_text(entry.read_text().replace("2026-12-01", "2026-11-01"))
    report = verify_log(str(copy))
    assert any("journal/requests/req-journalled.json differs" in b.problem for b in report.broken), report.broken


def test_verify_finds_a_request_by_its_ticket(erased):
    assert _verify(erased.store, TICKET).request_id == "req-sabotage"


@pytest.fixture
def locked_bucket(s3_server: str) -> str:
    name = f"expunge-anchors-{hashlib.sha256(str(id(object())).encode()).hexdigest()[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_an_object_lock_anchor_catches_a_resealed_log_and_cannot_be_overwritten(tmp_path, locked_bucket):
    evidence = EvidenceConfig(anchor_uri=f"s3://{locked_bucket}/expunge", anchor_retention_days=1)
    store = tmp_path / "store"
    rows = synthetic_ratings(SyntheticRatingsConfig(users=20, items=15, ratings_per_user=5, seed=4))
    coordinator = Coordinator(str(store), SubjectHasher(TEST_KEY), None, pool_factory=local_pool, evidence=evidence)
    coordinator.train(rows, job(shards=2, slices=1))
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[2]
    receipt = coordinator.forget([subject], request_id="req-locked")
    coordinator.close()
    assert receipt.chain_sequence == 1
    report = verify_log(str(store), evidence=evidence)
    assert report.intact, report.broken
    assert "S3 Object Lock anchors" in report.witnesses

    client = boto3.client("s3")
    key = "expunge/anchors/00000001.json"
    assert client.head_object(Bucket=locked_bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
    versions = client.list_object_versions(Bucket=locked_bucket, Prefix=key)["Versions"]
    with pytest.raises(client.exceptions.ClientError):  # compliance mode: not even the owner deletes it
        client.delete_object(Bucket=locked_bucket, Key=key, VersionId=versions[0]["VersionId"])

    _reseal(store, 1, rows_removed=0)
    client.put_object(Bucket=locked_bucket, Key=key, Body=b'{"forged": true}')  # a new version over the anchor
    report = verify_log(str(store), evidence=evidence)
    problems = " | ".join(b.problem for b in report.broken)
    assert "differs from its anchor in Object Lock anchor" in problems
    assert "written again with other content" in problems


# ----- found by the adversarial review of issue 19 -----------------------------------------------------------
def _swap_checkpoints_and_rehash(store: Path, shard: int) -> None:
    """Swap a shard's two checkpoint files, and rewrite its manifest's hashes to match."""
    path = _shard_manifest(store, shard)
    manifest = json.loads(path.read_text())
    first, second = manifest["checkpoints"]
    a, b = (store / first["key"]).read_bytes(), (store / second["key"]).read_bytes()
    (store / first["key"]).write_bytes(b)
    (store / second["key"]).write_bytes(a)
    first["sha256"], second["sha256"] = hashlib.sha256(b).hexdigest(), hashlib.sha256(a).hexdigest()
    path.write_text(json.dumps(manifest, indent=1))


def test_a_receipt_appended_by_a_saboteur_binds_nothing(erased, copy):
    from expunge.orchestrator.evidence.receipt_chain import append_receipt
    from expunge.orchestrator.evidence.state_binding import bind_state

    (touched,) = erased.receipt.affected_shards
    _swap_checkpoints_and_rehash(copy, 1 - touched)
    catalog = Catalog(ObjectStore(str(copy)))
    latest = catalog.latest()
    assert latest is not None
    forged = erased.receipt.model_copy(update={"request_id": "req-maint", "state": bind_state(catalog, latest)})
    append_receipt(ObjectStore(str(copy)), forged)  # a well-formed link that binds the tampered state

    state = _verify(copy).check("state")
    assert state.status == "failed"  # the version's own request's receipt is the binding, not the newest one
    assert f"shard {1 - touched}" in state.summary


def test_an_honest_commit_after_tampering_does_not_launder_it(tmp_path):
    store = tmp_path / "store"
    rows = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=6, seed=8))
    coordinator = Coordinator(str(store), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    people = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    first = coordinator.forget([people[0]], request_id="req-first")
    (touched,) = first.affected_shards
    coordinator.close()
    _swap_checkpoints_and_rehash(store, 1 - touched)  # tampered between two commits
    coordinator = Coordinator(str(store), SubjectHasher(TEST_KEY), None, pool_factory=local_pool)
    index = coordinator.placement_index().home_cells()
    hasher = SubjectHasher(TEST_KEY)
    same_shard = next(p for p in people[1:] if index[hasher.digest(p)].shard == touched)
    second = coordinator.forget([same_shard], request_id="req-second")  # the tampered shard is carried over
    coordinator.close()
    assert second.state is not None
    assert second.state.carried_mismatches  # recorded at the commit
    # The CPU baseline of the last full training is carried from version to version, like its wall time.
    assert second.full_retrain_cpu_seconds == first.full_retrain_cpu_seconds > 0
    report = verify_erasure(str(store), "req-second", hasher, log_to_mlflow=False)
    assert report.check("state").status == "failed"
    assert "changed between the two commits" in report.check("state").summary


def test_removing_the_registry_binding_from_the_store_fails_verify(erased, in_place):
    path = in_place / "ensemble" / f"{erased.receipt.model_version_after:08d}.json"
    manifest = json.loads(path.read_text())
    manifest["registry"] = None
    path.write_text(json.dumps(manifest, indent=1))
    report = _verify(in_place)
    assert report.check("registry").status == "failed"
    assert "names no registry" in report.check("registry").summary
    assert any("registry binding was removed" in b.problem for b in verify_log(str(in_place)).broken)


def test_a_version_forged_as_a_training_fails_the_state_check(erased, in_place):
    latest = erased.receipt.model_version_after
    manifest = json.loads((in_place / "ensemble" / f"{latest:08d}.json").read_text())
    manifest.update({"version": latest + 1, "parent_version": latest, "kind": "train", "request_id": None})
    (in_place / "ensemble" / f"{latest + 1:08d}.json").write_text(json.dumps(manifest, indent=1))
    state = _verify(in_place).check("state")
    assert state.status == "failed"
    assert "MLflow holds no model version of it" in state.summary


def test_an_anchor_bucket_without_object_lock_never_fails_an_erasure_and_is_reported(tmp_path, s3_bucket):
    evidence = EvidenceConfig(anchor_uri=f"s3://{s3_bucket}/anchors")
    store = tmp_path / "store"
    rows = synthetic_ratings(SyntheticRatingsConfig(users=20, items=15, ratings_per_user=5, seed=4))
    coordinator = Coordinator(str(store), SubjectHasher(TEST_KEY), None, pool_factory=local_pool, evidence=evidence)
    coordinator.train(rows, job(shards=2, slices=1))
    receipt = coordinator.forget([sorted(set(rows.column(SUBJECT_ID).to_pylist()))[1]], request_id="req-nolock")
    coordinator.close()
    assert receipt.status == "erased"  # committed and sealed: the anchor write is evidence, not the erasure
    assert receipt.chain_sequence == 1
    report = verify_log(str(store), evidence=evidence)
    assert any("no Object Lock configuration" in b.problem for b in report.broken), report.broken
