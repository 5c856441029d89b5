"""A CLI ingest without a cluster retrains few shards in its own process: Ray never starts (as `expunge forget`).

The in-process runs go through the ``expunge`` program's entry point in this process with
``init_ray`` replaced by one that fails the test, so a Ray start cannot go unnoticed; the
result is re-derived from scratch on the recorded slices, bit for bit (the definition of an
exact ingest, docs/exactness.md). ``python -m expunge.pipelines.ingest`` runs once as the
program does, in a fresh process with RAY_ADDRESS unset.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import ErasureConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ClusterUnavailableError
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.session import in_process_rule
from expunge.orchestrator.training.placement import cell_of_key
from expunge.pipelines import ingest as ingest_recipe
from expunge.pipelines.cli import main
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import job

KEY = "3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f"
HASHER = SubjectHasher(KEY.encode())
RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=12, ratings_per_user=4, seed=5))
KNOWN = [f"user-{u}" for u in range(20)]
CONFIG = job(shards=3, slices=2)


class _RayWasStarted(Exception):
    pass


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store trained on the first 20 people (in-process shards), its job config and the key; the current folder."""
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    known = pc.is_in(RATINGS.column(SUBJECT_ID), value_set=pa.array(KNOWN))
    Coordinator(str(tmp_path / "store"), HASHER, pool_factory=local_pool).train(RATINGS.filter(known), CONFIG)
    (tmp_path / "job.yaml").write_text(f"storage: {{uri: '{tmp_path / 'store'}'}}\ntracking: {{enabled: false}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp_path
    for name, logger in list(logging.root.manager.loggerDict.items()):  # the job set logger levels (init_logging)
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _batch(workdir: Path, subjects: list[str]) -> str:
    rows = RATINGS.filter(pc.is_in(RATINGS.column(SUBJECT_ID), value_set=pa.array(subjects)))
    pq.write_table(rows, workdir / "batch.parquet")
    return "batch.parquet"


def _shard_of_new_people(workdir: Path) -> dict[int, list[str]]:
    """New people (not trained on) by the shard the keyed hash sends them to."""
    manifest = Coordinator(str(workdir / "store"), HASHER, pool_factory=local_pool).require_manifest()
    by_shard: dict[int, list[str]] = {}
    for user in range(20, 30):
        subject = f"user-{user}"
        shard = cell_of_key(HASHER.digest(subject), manifest.sharding.shards, manifest.sharding.slices).shard
        by_shard.setdefault(shard, []).append(subject)
    return by_shard


def _no_ray_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray must not start in this run; a cluster this test process may have joined is not one to use."""

    def init_ray(*_args: object) -> None:
        raise _RayWasStarted

    monkeypatch.setattr(ingest_recipe, "init_ray", init_ray)
    monkeypatch.setattr(ingest_recipe, "on_a_cluster", lambda: False)


def _expunge(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(args)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_an_ingest_into_few_shards_without_a_cluster_runs_here_and_is_exact(workdir, monkeypatch, capsys, caplog):
    _no_ray_here(monkeypatch)
    by_shard = _shard_of_new_people(workdir)
    shard, people = next(iter(sorted(by_shard.items())))
    code, out, err = _expunge(["ingest", "--config", "job.yaml", "--data", _batch(workdir, people), "-v"], capsys)
    assert code == 0, err[-3000:]
    receipt = json.loads(out)
    assert receipt["status"] == "ingested"
    assert [s["shard"] for s in receipt["shards"]] == [shard]
    assert "1 shard(s) to retrain: in this process, without Ray" in caplog.text
    assert "starting Ray" not in err

    store = Coordinator(str(workdir / "store"), HASHER, pool_factory=local_pool)
    manifest = store.require_manifest()
    assert manifest.kind == "ingest"
    found = rederive_shards(store.catalog, manifest, range(manifest.sharding.shards))
    assert {s: r.result.exact for s, r in found.items()} == dict.fromkeys(range(CONFIG.sharding.shards), True)


def test_an_ingest_into_more_shards_than_the_bound_starts_ray_and_says_why(workdir, monkeypatch, capsys, caplog):
    def init_ray(*_args: object) -> None:  # Ray does not start here: the job's exit says so (4)
        raise ClusterUnavailableError("starting Ray on this machine", "test: no Ray")

    monkeypatch.setattr(ingest_recipe, "init_ray", init_ray)
    monkeypatch.setattr(ingest_recipe, "on_a_cluster", lambda: False)
    people = [p for group in _shard_of_new_people(workdir).values() for p in group]
    args = ["ingest", "--config", "job.yaml", "--data", _batch(workdir, people), "--in-process-max-shards", "1", "-v"]
    code, _, err = _expunge(args, capsys)
    assert code == 4, err[-3000:]
    assert "starting Ray on this machine failed (test: no Ray)" in err
    assert "3 shards to retrain, more than erasure.in_process_max_shards (1)" in caplog.text  # why Ray was started
    assert Coordinator(str(workdir / "store"), HASHER, pool_factory=local_pool).require_manifest().version == 1


def test_a_batch_with_nothing_new_never_starts_ray(workdir, monkeypatch, capsys):
    _no_ray_here(monkeypatch)
    code, out, err = _expunge(["ingest", "--config", "job.yaml", "--data", _batch(workdir, KNOWN[:3])], capsys)
    assert code == 0, err[-3000:]
    assert json.loads(out)["status"] == "nothing_new"


def test_rows_of_an_erased_subject_are_refused_in_the_summary_not_in_a_warning(workdir, monkeypatch, capsys, caplog):
    # Review: "refused N row(s) of erased subject(s)" printed as a WARNING log line without -v. Refusing
    # them is the designed behaviour (erased people stay erased): the job's summary line says it.
    _no_ray_here(monkeypatch)
    erased = Coordinator(str(workdir / "store"), HASHER, pool_factory=local_pool)
    erased.forget(["user-0"])
    erased.close()
    people = next(iter(_shard_of_new_people(workdir).values()))
    caplog.set_level(logging.DEBUG, logger="expunge")  # every record the job lets through is seen (not the level)

    code, out, err = _expunge(
        ["ingest", "--config", "job.yaml", "--data", _batch(workdir, ["user-0", *people])], capsys
    )

    assert code == 0, err[-3000:]
    receipt = json.loads(out)
    assert (receipt["rows_refused_erased"], receipt["subjects_refused_erased"]) == (4, 1)
    assert "0 already stored, 4 refused (of 1 erased subject(s))" in err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    code, _, err = _expunge(["ingest", "--config", "job.yaml", "--data", _batch(workdir, ["user-0"]), "-v"], capsys)
    assert code == 0, err[-3000:]
    assert "nothing new in 4 row(s) (0 already stored, 4 refused (of 1 erased subject(s)))" in err
    refused = [r for r in caplog.records if "refused 4 row(s) of 1 erased subject(s)" in r.getMessage()]
    assert [r.levelname for r in refused] == ["INFO"]  # with -v, the step is logged too, as information


def test_the_bound_counts_each_shard_at_its_share_of_the_last_training(workdir):
    manifest = Coordinator(str(workdir / "store"), HASHER, pool_factory=local_pool).require_manifest()
    rule = in_process_rule(ErasureConfig(in_process_max_shards=2, in_process_max_cpu_s=7.5), manifest)
    assert (rule.max_shards, rule.max_cpu_s) == (2, 7.5)
    assert rule.shard_cpu_s == pytest.approx(manifest.train_cpu_seconds / 3)


def test_ingest_help_offers_the_in_process_bound(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # the option's name in full (80 columns cut it)
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert "--in-process-max-shards" in capsys.readouterr().out


@pytest.mark.integration
def test_python_m_ingest_without_a_cluster_never_starts_ray(workdir):
    people = next(iter(_shard_of_new_people(workdir).values()))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.ingest", "--config", "job.yaml", "--data", _batch(workdir, people)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "ingested"
    assert "starting Ray" not in done.stderr


def test_an_ingest_takes_one_lease_token_for_recovery_and_commit(workdir, monkeypatch, capsys, caplog):
    # As `expunge forget` (tests/pipelines/test_forget_open_log.py): the recovery on open joins the job's lease.
    _no_ray_here(monkeypatch)
    people = next(iter(_shard_of_new_people(workdir).values()))  # before the debris: opening a store clears it
    store = workdir / "store"
    before = max(int(p.name.split(".")[0]) for p in (store / "lease").iterdir())
    debris = store / "shards" / "0000" / "slices" / "0009-left-by-a-killed-writer.parquet"
    debris.write_bytes(b"half a slice")
    os.utime(debris, (1.0e9, 1.0e9))  # older than the published version: no live writer's
    code, _, err = _expunge(["ingest", "--config", "job.yaml", "--data", _batch(workdir, people), "-v"], capsys)
    assert code == 0, err[-3000:]
    assert max(int(p.name.split(".")[0]) for p in (store / "lease").iterdir()) == before + 1
    assert not debris.exists()
    assert sum("debris of an interrupted or losing writer" in r.getMessage() for r in caplog.records) == 1
