"""`expunge train` and `expunge readmit` take one lease token per job (review: they took two, as forget did).

Opening a trained store finishes what an interrupted writer left (the purge) under the write
lease, with purpose "recovery"; the job then took the lease again, so each run took two tokens
and tidied the lease history twice. `forget` and `ingest` hold one lease for the whole job
(tests/pipelines/test_forget_open_log.py, test_ingest_in_process.py); so do these two now.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.lease import StoreLease
from expunge.pipelines.cli import main
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.store import ObjectStore
from tests.engine import job

KEY = "4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d"
HASHER = SubjectHasher(KEY.encode())
SYNTHETIC = SyntheticRatingsConfig(users=12, items=8, ratings_per_user=4, seed=2)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A trained store (tracking off) with one erased subject and an earlier job's lease record; the current folder."""
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    coordinator = Coordinator(str(tmp_path / "store"), HASHER, pool_factory=local_pool)
    coordinator.train(synthetic_ratings(SYNTHETIC), job(shards=2, slices=2))
    coordinator.forget(["user-3"])
    coordinator.close()
    with StoreLease(ObjectStore(str(tmp_path / "store"))).hold("an earlier job"):
        pass
    (tmp_path / "job.yaml").write_text(
        "data: {source: synthetic, synthetic: {users: 12, items: 8, ratings_per_user: 4, seed: 2}, "
        "erased_subjects: drop}\n"
        "sharding: {shards: 2, slices: 2}\n"
        "training: {model: {kind: mf, embedding_dim: 4}, epochs: 1, batch_size: 32, cpus_per_shard: 0.5}\n"
        f"storage: {{uri: '{tmp_path / 'store'}'}}\n"
        "tracking: {enabled: false}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    yield tmp_path
    for name, logger in list(logging.root.manager.loggerDict.items()):  # the job set logger levels (init_logging)
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _tokens(store: Path) -> set[int]:
    return {int(p.name.split(".")[0]) for p in (store / "lease").iterdir()}


def _debris(store: Path) -> Path:
    """A half-written slice a killed writer left: opening the store deletes it, under the lease ("recovery")."""
    debris = store / "shards" / "0001" / "slices" / "0009-left-by-a-killed-writer.parquet"
    debris.write_bytes(b"half a slice")
    os.utime(debris, (1.0e9, 1.0e9))  # older than the published version: no live writer's
    return debris


def _expunge(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(args)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def _said_once(caplog: pytest.LogCaptureFixture) -> None:
    messages = [r.getMessage() for r in caplog.records]
    assert sum("tidying the lease history" in m for m in messages) == 1
    assert not any("recovery)" in m for m in messages)
    assert sum("debris of an interrupted or losing writer" in m for m in messages) == 1


def test_a_readmission_takes_one_lease_token_for_recovery_and_commit(workdir, capsys, caplog):
    store = workdir / "store"
    before = max(_tokens(store))
    debris = _debris(store)

    args = ["readmit", "--config", "job.yaml", "--subject", "user-3", "--reason", "consent ticket 4711", "-v"]
    code, out, err = _expunge(args, capsys)

    assert code == 0, err
    assert json.loads(out) == {"subjects": 1, "tombstones_lifted": 1}
    assert max(_tokens(store)) == before + 1  # one lease token for the job: recovery and re-admission share it
    assert not debris.exists()
    _said_once(caplog)


@pytest.mark.integration
def test_a_training_of_a_trained_store_takes_one_lease_token_for_recovery_and_commit(
    workdir, ray_cluster, capsys, caplog
):
    store = workdir / "store"
    before = max(_tokens(store))
    debris = _debris(store)

    code, out, err = _expunge(["train", "--config", "job.yaml", "-v"], capsys)

    assert code == 0, err
    assert json.loads(out)["ensemble_version"] == 3  # trained, erased, trained again
    assert max(_tokens(store)) == before + 1  # one lease token for the job: recovery and training share it
    assert not debris.exists()
    _said_once(caplog)


@pytest.mark.integration
def test_a_first_training_with_bad_settings_still_writes_nothing(tmp_path, ray_cluster, monkeypatch, capsys):
    # The job's lease is taken only on a trained store: a new store is written only once its settings pass.
    (tmp_path / "job.yaml").write_text(
        "data: {source: synthetic, synthetic: {users: 12, items: 8, ratings_per_user: 4, seed: 2}}\n"
        "sharding: {shards: 2, slices: 2, placement: row}\n"
        "training: {model: {kind: item_stats}, cpus_per_shard: 0.5}\n"
        f"storage: {{uri: '{tmp_path / 'store'}'}}\n"
        "tracking: {enabled: false}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)

    code, _, err = _expunge(["train", "--config", "job.yaml"], capsys)

    assert code == 2, err
    assert "sufficient-statistics model" in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("reason", "subject", "said"),
    [("  ", "user-3", "needs a reason"), ("consent ticket 4711", None, "at least one subject")],
)
def test_a_readmission_with_bad_input_writes_no_lease_record(workdir, capsys, reason, subject, said):
    """Bad input gets one typed error and changes nothing: not even a lease record."""
    store = workdir / "store"
    before = _tokens(store)
    args = ["readmit", "--config", "job.yaml", "--reason", reason, *(["--subject", subject] if subject else [])]

    code, _, err = _expunge(args, capsys)

    assert code == 2, err
    assert said in err
    assert _tokens(store) == before
