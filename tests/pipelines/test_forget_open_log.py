"""`expunge forget -v` says once, plainly, what opening the store deleted (review: it said it twice).

Opening the store finishes what an interrupted writer left (the purge), under the write lease;
the erasure then took the lease again. Each acquisition tidied old lease records, so a plain
``forget -v`` logged "deleted 2 object version(s)" twice before any work, the first under the
lease's "recovery" purpose. Now the job takes one lease token for its whole run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.lease import StoreLease
from expunge.pipelines import forget as forget_recipe
from expunge.pipelines.cli import main
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.store import ObjectStore
from tests.engine import job

KEY = "9e1c3a5f7b9d1e3a5c7f9b1d3e5a7c9f1b3d5e7a9c1f3b5d7e9a1c3f5b7d9e1a"
HASHER = SubjectHasher(KEY.encode())


class _RayWasStarted(Exception):
    pass


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A trained store (tracking off) with one earlier job's lease record, its job config and key; the current folder."""
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=8, ratings_per_user=4, seed=2))
    Coordinator(str(tmp_path / "store"), HASHER, pool_factory=local_pool).train(rows, job(shards=2, slices=2))
    with StoreLease(ObjectStore(str(tmp_path / "store"))).hold("an earlier job"):
        pass
    (tmp_path / "job.yaml").write_text(f"storage: {{uri: '{tmp_path / 'store'}'}}\ntracking: {{enabled: false}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def init_ray(*_args: object) -> None:
        raise _RayWasStarted

    monkeypatch.setattr(forget_recipe, "init_ray", init_ray)  # one shard: it retrains here
    monkeypatch.setattr("expunge.orchestrator.session.on_a_cluster", lambda: False)  # read by forget.opened
    yield tmp_path
    for name, logger in list(logging.root.manager.loggerDict.items()):  # the job set logger levels (init_logging)
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _tokens(store: Path) -> set[int]:
    return {int(p.name.split(".")[0]) for p in (store / "lease").iterdir()}


def _forget(capsys: pytest.CaptureFixture[str]) -> int:
    with pytest.raises(SystemExit) as ended:
        main(["forget", "--config", "job.yaml", "--subject", "user-3", "-v"])
    capsys.readouterr()
    return int(ended.value.code or 0)


def test_opening_the_store_deletes_debris_once_and_says_why(workdir, capsys, caplog):
    store = workdir / "store"
    before = max(_tokens(store))
    debris = store / "shards" / "0001" / "slices" / "0009-left-by-a-killed-writer.parquet"
    debris.write_bytes(b"half a slice")
    old = time.time() - 3600  # older than the published version: no live writer's
    os.utime(debris, (old, old))

    assert _forget(capsys) == 0
    assert max(_tokens(store)) == before + 1  # one lease token for the job: recovery and erasure share it
    messages = [r.getMessage() for r in caplog.records]
    assert sum("deleted 2 object version(s)" in m for m in messages) == 1  # the older lease records, once
    assert sum("tidying the lease history" in m for m in messages) == 1
    assert not any("recovery)" in m for m in messages)
    recovered = [m for m in messages if "debris of an interrupted or losing writer" in m]
    assert len(recovered) == 1
    assert "1 key(s) no version published" in recovered[0]
    assert not debris.exists()
