"""`expunge ingest` tells what it did (issue 22): its progress lines, its help, and a `nothing_new` receipt.

The job runs through the ``expunge`` program's entry point in this process with its shards in
this process too (``local_pool``; Ray is never started), against a store trained once with
MLflow lineage in a SQLite file.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import Lineage
from expunge.pipelines import ingest as ingest_job
from expunge.pipelines.cli import main
from expunge.pipelines.datasets import synthetic_ratings
from tests.engine import job

KEY = "5e2a8c4f6b0d2e4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a"
RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=16, items=10, ratings_per_user=4, seed=3))
TRAINED = RATINGS.slice(0, 48)  # the first 12 people
LATER = RATINGS.slice(48)  # 4 new people


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingest-outcome")
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="outcome", model_name="outcome")
    lineage = Lineage(tracking, str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY.encode()), lineage, pool_factory=local_pool)
    coordinator.train(TRAINED, job(shards=2, slices=2))
    coordinator.close()
    (root / "job.yaml").write_text(
        "sharding: {shards: 2, slices: 2}\n"
        f"storage: {{uri: '{root / 'store'}'}}\n"
        f"tracking: {{uri: '{tracking.uri}', experiment: outcome, model_name: outcome}}\n"
    )
    pq.write_table(TRAINED.slice(0, 6), root / "stored.parquet")
    pq.write_table(LATER, root / "later.parquet")
    return root


@pytest.fixture
def in_process(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ingest job with shards in this process; the current folder is the trained store's."""
    levels = {n: g.level for n, g in logging.root.manager.loggerDict.items() if isinstance(g, logging.Logger)}
    monkeypatch.chdir(trained)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    monkeypatch.setattr(ingest_job, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(ingest_job, "alive_node_count", lambda: 1)
    monkeypatch.setattr(ingest_job, "Coordinator", functools.partial(Coordinator, pool_factory=local_pool))
    yield trained
    for name, logger in list(logging.root.manager.loggerDict.items()):  # the job sets levels for its process
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _expunge(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(args)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_progress_says_what_the_ingest_did_and_nothing_new_names_the_registry_version(in_process, capsys):
    """A batch already stored said "retraining the shards" and left registry_version_before empty."""
    code, out, err = _expunge(["ingest", "--config", "job.yaml", "--data", "stored.parquet"], capsys)

    assert code == 0, err
    receipt = json.loads(out)
    assert receipt["status"] == "nothing_new"
    assert "retrain" not in err.replace("no shard retrained", "")  # nothing retrained, nothing claimed
    assert "nothing new in 6 row(s) (6 already stored, 0 refused (erased subjects)): no shard retrained" in err
    # The registry holds version 1 (the training): the receipt says so, before and after (nothing published).
    assert receipt["registry_version_before"] == receipt["registry_version_after"] == "1"
    assert receipt["model_version_before"] == receipt["model_version_after"] == 1

    code, out, err = _expunge(["ingest", "--config", "job.yaml", "--data", "later.parquet"], capsys)
    assert code == 0, err
    receipt = json.loads(out)
    assert receipt["status"] == "ingested"
    assert f"added {len(LATER)} row(s) (0 already stored, 0 refused (erased subjects)) to shard(s)" in err
    assert "version 1 -> 2" in err
    assert (receipt["registry_version_before"], receipt["registry_version_after"]) == ("1", "2")

    code, out, err = _expunge(["ingest", "--config", "job.yaml", "--data", "later.parquet"], capsys)
    assert code == 0, err
    receipt = json.loads(out)
    assert receipt["status"] == "nothing_new"
    assert receipt["registry_version_before"] == receipt["registry_version_after"] == "2"
    assert "version 2 stays" in err


def test_the_help_wraps_its_sentences_naturally(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TERMINAL_WIDTH", "200")
    code, out, _ = _expunge(["ingest", "--help"], capsys)

    assert code == 0
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert any("(same record id, same subject) are left out" in line for line in lines), out
    assert any("Prints the IngestReceipt (JSON, with the source) on stdout" in line for line in lines), out
