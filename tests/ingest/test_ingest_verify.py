"""`expunge verify --request <ingest>`: the receipt, the shard versions it made, its shards re-derived bit for bit.

One store (in-process shards, tracking off) is trained on 20 people and given a batch of 10 new
ones per module; each test sabotages a copy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import typer
from typer.testing import CliRunner

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.ingest_verify import verify_ingest
from expunge.orchestrator.receipts import IngestReceipt
from expunge.pipelines import verify as verify_recipe
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import decode_checkpoint, encode_checkpoint
from tests.conftest import TEST_KEY
from tests.engine import job

REQUEST = "daily-2026-12-05"
HASHER = SubjectHasher(TEST_KEY)
RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=12, ratings_per_user=4, seed=9))
KNOWN = pc.is_in(RATINGS.column(SUBJECT_ID), value_set=pa.array([f"user-{u}" for u in range(20)]))


@dataclass(frozen=True)
class Ingested:
    store: Path
    receipt: IngestReceipt


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    root = tmp_path_factory.mktemp("ingest-verify")
    coordinator = Coordinator(str(root / "store"), HASHER, pool_factory=local_pool)
    coordinator.train(RATINGS.filter(KNOWN), job(shards=3, slices=2))
    receipt = coordinator.ingest(RATINGS.filter(pc.invert(KNOWN)), request_id=REQUEST)
    coordinator.close()
    assert receipt.status == "ingested"
    assert len(receipt.shards) >= 2
    return Ingested(root / "store", receipt)


@pytest.fixture
def store_copy(ingested: Ingested, tmp_path: Path) -> Path:
    shutil.copytree(ingested.store, tmp_path / "store")
    return tmp_path / "store"


def _statuses(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.status for c in report.checks}


def test_an_ingest_verifies_its_receipt_shard_versions_and_retrained_shards(ingested):
    report = verify_ingest(str(ingested.store), REQUEST, HASHER)
    assert report.passed
    assert _statuses(report) == dict.fromkeys(("ingest_receipt", "shard_versions", "exactness"), "passed")
    assert report.touched_shards == tuple(ingested.receipt.touched_shards)
    exactness = report.check("exactness")
    assert "exactly as the ingest left them" in exactness.summary
    assert [s["shard"] for s in exactness.details["shards"]] == ingested.receipt.touched_shards
    assert "none has changed since" in report.check("shard_versions").summary
    assert report.to_markdown().startswith(f"# Ingest verification: request `{REQUEST}`: PASSED")


def test_after_a_later_erasure_the_shards_are_past_the_ingest_and_still_exact(ingested, store_copy):
    coordinator = Coordinator(str(store_copy), HASHER, pool_factory=local_pool)
    index = coordinator.placement_index().home_cells()
    shard = ingested.receipt.touched_shards[0]
    people = sorted({str(s) for s in RATINGS.column(SUBJECT_ID).to_pylist()})
    subject = next(p for p in people if (cell := index.get(HASHER.digest(p))) is not None and cell.shard == shard)
    coordinator.forget([subject])
    coordinator.close()

    report = verify_ingest(str(store_copy), REQUEST, HASHER)
    assert report.passed, report.to_markdown()
    assert f"later commits moved shard {shard} on" in report.check("shard_versions").summary
    assert "as published now" in report.check("exactness").summary


def test_one_perturbed_weight_of_a_retrained_shard_fails_exactness(ingested, store_copy):
    catalog = Catalog(ObjectStore(str(store_copy)))
    latest = catalog.latest()
    assert latest is not None
    shard = ingested.receipt.touched_shards[-1]
    key = catalog.shard_manifest(shard, latest.shard_versions[shard]).checkpoints[-1].key
    payload = decode_checkpoint((store_copy / key).read_bytes())
    payload["model"]["item_bias"][0] += 1e-6
    (store_copy / key).write_bytes(encode_checkpoint(payload))

    report = verify_ingest(str(store_copy), REQUEST, HASHER)
    assert _statuses(report)["exactness"] == "failed"
    assert f"shard {shard} differs" in report.check("exactness").summary
    assert "model.item_bias" in report.check("exactness").summary
    assert not report.passed


def test_a_receipt_naming_another_version_fails_and_nothing_more_is_claimed(ingested, store_copy):
    edited = ingested.receipt.model_copy(update={"model_version_after": 1})  # the training's version
    (store_copy / "receipts" / "ingests" / f"{REQUEST}.json").write_text(edited.model_dump_json())
    report = verify_ingest(str(store_copy), REQUEST, HASHER)
    assert _statuses(report) == {"ingest_receipt": "failed", "shard_versions": "skipped", "exactness": "skipped"}
    assert "published by train" in report.check("ingest_receipt").summary


def test_a_shard_rolled_back_before_the_ingest_fails_the_shard_versions(ingested, store_copy):
    catalog = Catalog(ObjectStore(str(store_copy)))
    latest = catalog.latest()
    assert latest is not None
    shard = ingested.receipt.touched_shards[0]
    before = catalog.read(1).shard_versions[shard]
    versions = list(latest.shard_versions)
    versions[shard] = before
    forged = latest.model_copy(update={"version": latest.version + 1, "shard_versions": tuple(versions)})
    (store_copy / "ensemble" / f"{forged.version:08d}.json").write_text(forged.model_dump_json())
    assert Catalog(ObjectStore(str(store_copy))).latest() == forged

    report = verify_ingest(str(store_copy), REQUEST, HASHER)
    assert _statuses(report)["shard_versions"] == "failed"
    assert f"shard {shard} is published at version {before}" in report.check("shard_versions").summary


def test_a_batch_with_nothing_new_verifies_with_nothing_to_rederive(ingested, store_copy):
    coordinator = Coordinator(str(store_copy), HASHER, pool_factory=local_pool)
    again = coordinator.ingest(RATINGS.filter(pc.invert(KNOWN)), request_id="daily-2026-12-06")
    coordinator.close()
    assert again.status == "nothing_new"
    report = verify_ingest(str(store_copy), "daily-2026-12-06", HASHER)
    assert report.passed
    assert _statuses(report) == {"ingest_receipt": "passed", "shard_versions": "skipped", "exactness": "skipped"}


# ----- the program -------------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(verify_recipe.main)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_the_program_verifies_an_ingest_and_exits_0_1_2(ingested, store_copy, tmp_path, monkeypatch):
    monkeypatch.delenv("EXPUNGE_SUBJECT_KEY", raising=False)
    (tmp_path / "subject.key").write_text(TEST_KEY.decode())  # the test key is short: read as the demo's
    common = ("--workdir", str(tmp_path), "--storage", str(store_copy), "--out", str(tmp_path / "out"), "--no-record")
    code, output = _cli(*common, "--request", REQUEST)
    assert code == 0, output
    assert "# Ingest verification" in output
    assert json.loads((tmp_path / "out" / f"verify-{REQUEST}.json").read_text())["status"] == "passed"
    code, output = _cli(*common, "--request", REQUEST, "--audit")
    assert code == 2
    assert "apply to erasures" in output
    (store_copy / "receipts" / "ingests" / f"{REQUEST}.json").write_text(
        ingested.receipt.model_copy(update={"model_version_after": 9}).model_dump_json()
    )
    code, output = _cli(*common, "--request", REQUEST, "--json")
    assert code == 1
    assert json.loads(output[output.index("{") :])["status"] == "failed"
