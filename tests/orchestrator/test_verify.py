"""``expunge verify``: passes on an exact erasure, and each check catches its own sabotage.

One erasure (in-process shards, sqlite MLflow) is made per module; store sabotage happens on a
copy of the store, registry sabotage is undone after its test.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.membership import MembershipAudit, audit_key
from expunge.orchestrator.evidence.receipt_chain import chain_key
from expunge.orchestrator.evidence.verify import verify_erasure, verify_log
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.registry.artifacts import ArtifactEraser
from expunge.orchestrator.registry.checks import remaining_artifact_objects
from expunge.pipelines import verify as verify_recipe
from expunge.pipelines.datasets import split_rows, synthetic_ratings
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import decode_checkpoint, encode_checkpoint
from tests.conftest import TEST_KEY
from tests.engine import job

MODEL = "expunge-verify"
REQUEST = "GDPR-2026-0042"


@dataclass
class Erasure:
    root: Path
    store: Path  # the live store after the erasure
    before: Path  # a copy of the store taken just before the erasure
    kept_v1: Path  # a copy of registry version 1's files (the pre-erasure model)
    v1_location: Path  # where version 1's files were (purged by the erasure)
    subject: str
    receipt: ErasureReceipt
    lineage: Lineage


def _local(location: str) -> Path:
    parsed = urlparse(location)
    return Path(url2pathname(parsed.path) if parsed.scheme == "file" else location)


@pytest.fixture(scope="module")
def erasure(tmp_path_factory: pytest.TempPathFactory) -> Erasure:
    root = tmp_path_factory.mktemp("verify")
    rows, held_out = split_rows(
        synthetic_ratings(SyntheticRatingsConfig(users=40, items=30, ratings_per_user=8, seed=1)), 0.2, 0
    )
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="verify", model_name=MODEL)
    lineage = Lineage(tracking, str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    v1_location = _local(str(lineage.client.get_model_version(MODEL, "1").source))
    shutil.copytree(v1_location, root / "kept-v1")
    shutil.copytree(root / "store", root / "before")
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[5]
    receipt = coordinator.forget([subject], request_id=REQUEST, audit=MembershipAudit(held_out))
    coordinator.close()
    return Erasure(root, root / "store", root / "before", root / "kept-v1", v1_location, subject, receipt, lineage)


@pytest.fixture
def store_copy(erasure: Erasure, tmp_path: Path) -> Path:
    """A copy of the erased store to sabotage (its manifest still names the module's registry)."""
    copy = tmp_path / "store"
    shutil.copytree(erasure.store, copy)
    return copy


def _verify(store: Path, erasure: Erasure, subject: str | None = None):  # type: ignore[no-untyped-def]
    return verify_erasure(str(store), REQUEST, SubjectHasher(TEST_KEY), subject or erasure.subject, log_to_mlflow=False)


def _statuses(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.status for c in report.checks}


# ----- it passes, and says so where people look --------------------------------------------------------
def test_an_exact_erasure_passes_every_check_and_the_report_reaches_its_mlflow_run(erasure):
    report = verify_erasure(str(erasure.store), REQUEST, SubjectHasher(TEST_KEY), erasure.subject)
    assert _statuses(report) == dict.fromkeys(
        ("exactness", "state", "storage", "registry", "membership_audit", "receipt_log"), "passed"
    )
    assert report.passed
    assert report.raw_id_checked
    exactness = report.check("exactness").details["shards"]
    assert [s["shard"] for s in exactness] == erasure.receipt.affected_shards
    assert all(s["checkpoints_compared"] == 2 and s["tensors_compared"] > 0 for s in exactness)
    assert "weights and optimizer state" in report.check("exactness").summary
    assert report.audit is not None
    assert report.audit.after == report.audit.from_scratch
    (run_id,) = report.mlflow_runs
    client = erasure.lineage.client
    assert client.get_run(run_id).data.tags["expunge.verification"] == "passed"
    assert {a.path for a in client.list_artifacts(run_id, "verification")} == {
        "verification/verify-report.md",
        "verification/verify-report.json",
    }
    markdown = report.to_markdown()
    assert f"request `{REQUEST}`: PASSED" in markdown
    assert "| Exactness | ✅ passed |" in markdown
    assert erasure.subject not in markdown + report.model_dump_json()  # digests only, never the raw id


def test_without_the_raw_id_the_scan_is_by_digest_and_the_report_says_so(erasure, monkeypatch):
    monkeypatch.chdir(erasure.root)  # the store named by a relative path: still its MLflow run
    report = verify_erasure("store", REQUEST, SubjectHasher(TEST_KEY), None)
    assert report.passed
    assert not report.raw_id_checked
    assert "keyed digest only" in report.to_markdown()
    assert len(report.mlflow_runs) == 1


def test_a_request_that_found_nobody_verifies_with_nothing_to_rederive(erasure, store_copy):
    coordinator = Coordinator(str(store_copy), SubjectHasher(TEST_KEY), pool_factory=local_pool)
    coordinator.forget(["nobody-by-this-name"], request_id="GDPR-miss")
    report = verify_erasure(str(store_copy), "GDPR-miss", SubjectHasher(TEST_KEY), log_to_mlflow=False)
    assert report.passed
    assert _statuses(report) == {
        "exactness": "skipped",
        "state": "passed",  # the live version, bound by the erasure before: unchanged
        "storage": "passed",
        "registry": "skipped",
        "membership_audit": "skipped",
        "receipt_log": "passed",
    }


@pytest.mark.parametrize(
    ("request_id", "subject", "message"),
    [
        ("GDPR-unknown", None, "no request of .* answers to that reference.*`expunge ingest`.*--config"),
        (REQUEST, "someone-else", "does not name a subject"),
    ],
)
def test_bad_input_is_refused(erasure, request_id, subject, message):
    with pytest.raises(ConfigError, match=message):
        verify_erasure(str(erasure.store), request_id, SubjectHasher(TEST_KEY), subject, log_to_mlflow=False)


# ----- every check can fail ----------------------------------------------------------------------------
def _live_checkpoint(store: Path, shard: int) -> str:
    catalog = Catalog(ObjectStore(str(store)))
    manifest = catalog.latest()
    assert manifest is not None
    return catalog.shard_manifest(shard, manifest.shard_versions[shard]).checkpoints[-1].key


def test_one_perturbed_weight_fails_exactness(erasure, store_copy):
    (shard,) = erasure.receipt.affected_shards
    key = _live_checkpoint(store_copy, shard)
    payload = decode_checkpoint((store_copy / key).read_bytes())
    payload["model"]["item_bias"][0] += 1e-6
    (store_copy / key).write_bytes(encode_checkpoint(payload))
    report = _verify(store_copy, erasure)
    assert _statuses(report)["exactness"] == "failed"
    assert "model.item_bias" in report.check("exactness").summary
    assert not report.passed


def test_one_row_of_the_subject_left_in_a_slice_fails_storage(erasure, store_copy):
    digest = SubjectHasher(TEST_KEY).digest(erasure.subject)
    old = ObjectStore(str(erasure.before))
    catalog = Catalog(old)
    manifest = catalog.latest()
    assert manifest is not None
    (cell,) = catalog.read_placement(manifest.placement_key).cells()[digest]
    entry = catalog.shard_manifest(cell.shard, manifest.shard_versions[cell.shard]).slices[cell.slice]
    table = pq.read_table(io.BytesIO(old.get(entry.key)))
    one_row = table.filter(pc.equal(table.column(SUBJECT_DIGEST), digest)).slice(0, 1)
    live = Catalog(ObjectStore(str(store_copy)))
    latest = live.latest()
    assert latest is not None
    target = live.shard_manifest(cell.shard, latest.shard_versions[cell.shard]).slices[cell.slice].key
    kept = pq.read_table(store_copy / target)
    pq.write_table(pa.concat_tables([kept, one_row.select(kept.column_names)]), store_copy / target)
    report = _verify(store_copy, erasure)
    assert _statuses(report)["storage"] == "failed"
    assert "rows in" in report.check("storage").summary


def test_one_old_checkpoint_kept_fails_storage(erasure, store_copy):
    deleted = [k for k in erasure.receipt.deleted_objects if k.endswith(".pt")]
    assert deleted
    shutil.copy2(erasure.before / deleted[0], store_copy / deleted[0])
    report = _verify(store_copy, erasure)
    assert _statuses(report)["storage"] == "failed"
    assert deleted[0] in report.check("storage").summary


def test_one_old_model_artifact_kept_fails_registry(erasure):
    assert not list(erasure.v1_location.rglob("*.pt"))  # the purge deleted the weights (its notice stays)
    shutil.copytree(erasure.kept_v1, erasure.v1_location, dirs_exist_ok=True)
    try:
        report = _verify(erasure.store, erasure)
    finally:
        shutil.rmtree(erasure.v1_location)
    assert _statuses(report)["registry"] == "failed"
    (v1,) = report.check("registry").details["versions"]
    assert v1["remaining_objects"] > 0
    assert v1["loadable"]
    assert "version 1" in report.check("registry").summary


def test_one_edited_receipt_fails_the_receipt_log(erasure, store_copy):
    store = ObjectStore(str(store_copy))
    (sequence,) = [n for n in range(1, 5) if store.exists(chain_key(n))]
    edited = json.loads(store.get(chain_key(sequence)))
    edited["rows_removed"] += 1
    store.put(chain_key(sequence), json.dumps(edited, indent=1).encode())
    report = _verify(store_copy, erasure)
    assert _statuses(report)["receipt_log"] == "failed"
    assert f"receipt #{sequence}" in report.check("receipt_log").summary
    assert not verify_log(str(store_copy)).intact


def test_an_edited_audit_record_fails_the_membership_audit(erasure, store_copy):
    store = ObjectStore(str(store_copy))
    record = json.loads(store.get(audit_key(REQUEST)))
    record["before"]["loss"]["auc"] = 0.5  # hide what the attack could see before
    store.put(audit_key(REQUEST), json.dumps(record).encode())
    report = _verify(store_copy, erasure)
    assert _statuses(report)["membership_audit"] == "failed"
    assert "not the one the receipt names" in report.check("membership_audit").summary


def test_a_kept_s3_object_version_counts_as_a_remaining_artifact(s3_versioned_bucket):
    """On a versioned bucket, deleting the current object leaves its bytes in an older version."""
    location = f"s3://{s3_versioned_bucket}/artifacts/1/models/m-1/artifacts"
    store = ObjectStore(StorageConfig(uri=location))
    store.put("MLmodel", b"flavors: {}")
    store.fs.rm(f"{store.root}/MLmodel")  # what `mlflow gc` does: a delete marker on top
    eraser = ArtifactEraser()
    assert remaining_artifact_objects(location, f"s3://{s3_versioned_bucket}/artifacts", eraser) == 1
    store.delete(["MLmodel"])  # every version, as the purge does
    assert remaining_artifact_objects(location, f"s3://{s3_versioned_bucket}/artifacts", eraser) == 0


# ----- the program -------------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(verify_recipe.main)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_the_program_exits_0_1_2_and_writes_both_reports(erasure, store_copy, tmp_path, monkeypatch):
    monkeypatch.delenv("EXPUNGE_SUBJECT_KEY", raising=False)
    (tmp_path / "subject.key").write_text(TEST_KEY.decode())
    common = ("--workdir", str(tmp_path), "--storage", str(store_copy), "--no-record")
    code, output = _cli(*common, "--request", REQUEST)
    assert code == 0, output
    assert (tmp_path / f"verify-{REQUEST}.md").read_text().startswith("# Erasure verification")
    assert json.loads((tmp_path / f"verify-{REQUEST}.json").read_text())["status"] == "passed"
    assert _cli(*common, "--log")[0] == 0
    assert _cli(*common, "--request", "GDPR-unknown")[0] == 2
    assert _cli(*common)[0] == 2  # neither --request nor --log
    old_placement = next((erasure.before / "placement").iterdir())  # it names the erased subject
    shutil.copy2(old_placement, store_copy / "placement" / old_placement.name)
    code, output = _cli(*common, "--request", REQUEST, "--json")
    assert code == 1
    assert json.loads(output[output.index("{") :])["status"] == "failed"


# ----- `expunge scan` checks the registry side too (issue 7, item 8) ---------------------------------
def _scan(store: Path, erasure: Erasure):  # type: ignore[no-untyped-def]
    from expunge.orchestrator.config import StorageConfig
    from expunge.pipelines.scan import run as scan

    return scan(StorageConfig(uri=str(store)), erasure.subject, hasher=SubjectHasher(TEST_KEY))


def test_scan_checks_the_registry_the_store_records(erasure):
    report = _scan(erasure.store, erasure)
    assert report.clean, report.findings


def test_scan_finds_a_kept_file_of_a_version_that_held_the_subject(erasure):
    shutil.copytree(erasure.kept_v1, erasure.v1_location, dirs_exist_ok=True)
    try:
        report = _scan(erasure.store, erasure)
    finally:
        shutil.rmtree(erasure.v1_location)
    (finding,) = [f for f in report.findings if f.kind == "registry-version"]
    assert finding.key == f"models:/{MODEL}/1"
    assert "stored file(s) left" in finding.detail


def test_a_deleted_audit_record_fails_the_membership_audit(erasure, store_copy):
    store = ObjectStore(str(store_copy))
    store.delete([audit_key(REQUEST)])
    report = _verify(store_copy, erasure)
    assert _statuses(report)["membership_audit"] == "failed"
    assert not report.passed


def test_exactness_compares_bits_not_values():
    import torch

    from expunge.orchestrator.evidence.exactness import tensors_equal

    assert not tensors_equal(torch.tensor([0.0]), torch.tensor([-0.0]))  # equal values, different bits
    assert tensors_equal(torch.tensor([float("nan")]), torch.tensor([float("nan")]))  # same bits


def test_the_exactness_summary_names_what_a_statistics_model_compares(tmp_path):
    """item_stats has no optimizer; verify said it compared "weights and optimizer state" (new-user review)."""
    from expunge.orchestrator.config import ItemStatsConfig
    from expunge.orchestrator.evidence.verify import _exactness
    from tests.engine import job

    coordinator = Coordinator(str(tmp_path / "store"), SubjectHasher(TEST_KEY), pool_factory=local_pool)
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=8, ratings_per_user=4, seed=2))
    coordinator.train(rows, job(model=ItemStatsConfig(factors=2), shards=2, slices=2))
    receipt = coordinator.forget([rows.column(SUBJECT_ID)[0].as_py()])
    assert coordinator.manifest is not None
    result = _exactness(coordinator.catalog, receipt, coordinator.manifest.version)
    assert result.status == "passed"
    assert "(sufficient statistics)" in result.summary
    assert "optimizer" not in result.summary
