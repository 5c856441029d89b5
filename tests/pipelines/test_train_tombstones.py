"""`expunge train` on data that still holds an erased person counts all of that person's rows.

Issue 18: the refusal counted only the held-out rows (21 of a person's 258), and a drop left the
held-out ones out of ``erased_rows_dropped``.
"""

from __future__ import annotations

import logging

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import (
    DataConfig,
    JobConfig,
    MFConfig,
    ShardingConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ErasedSubjectsInDataError
from expunge.pipelines import train
from expunge.pipelines.datasets import split_rows, synthetic_ratings
from expunge.shards.rows import SUBJECT_ID

KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"
SYNTHETIC = SyntheticRatingsConfig(users=24, items=30, ratings_per_user=20, seed=3)


def _job(tmp_path, data: DataConfig) -> JobConfig:
    return JobConfig(
        data=data,
        sharding=ShardingConfig(shards=2, slices=2),
        training=TrainingConfig(model=MFConfig(embedding_dim=4), epochs=1, batch_size=32, cpus_per_shard=0.5),
        storage=StorageConfig(uri=str(tmp_path / "store")),
        tracking=TrackingConfig(enabled=False),
    )


def _data(tmp_path, source: str, policy: str) -> DataConfig:
    if source == "synthetic":
        return DataConfig(source="synthetic", synthetic=SYNTHETIC, test_fraction=0.3, erased_subjects=policy)
    path = tmp_path / "ratings.parquet"
    if not path.exists():
        pq.write_table(synthetic_ratings(SYNTHETIC), path)
    return DataConfig(source="parquet", path=str(path), test_fraction=0.3, erased_subjects=policy)


def _erase_someone_held_out_and_trained(job: JobConfig) -> tuple[int, int]:
    """Train the store, erase a subject with rows on both sides of the split; returns their (trained, held-out) rows."""
    train_rows, test_rows = split_rows(synthetic_ratings(SYNTHETIC), job.data.test_fraction, job.data.split_seed)
    held_out = set(test_rows.column(SUBJECT_ID).to_pylist())
    subject = next(s for s in sorted(set(train_rows.column(SUBJECT_ID).to_pylist())) if s in held_out)
    coordinator = Coordinator(job.storage, SubjectHasher(KEY.encode()), pool_factory=local_pool)
    coordinator.train(train_rows, job)
    coordinator.forget([subject])
    coordinator.close()
    count = [int(pc.sum(pc.equal(t.column(SUBJECT_ID), subject)).as_py()) for t in (train_rows, test_rows)]
    return count[0], count[1]


@pytest.mark.parametrize("source", ["synthetic", "parquet"])
def test_a_refusal_counts_every_row_of_the_erased_person(tmp_path, monkeypatch, ray_cluster, source, caplog):
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    job = _job(tmp_path, _data(tmp_path, source, "refuse"))
    trained, held_out = _erase_someone_held_out_and_trained(job)

    with caplog.at_level(logging.WARNING), pytest.raises(ErasedSubjectsInDataError) as refused:
        train.run(job)

    # The refusal is the only word: no warning that the rows were left out and training went on.
    assert "out of the evaluation" not in caplog.text
    assert held_out > 0
    assert refused.value.rows == trained + held_out == SYNTHETIC.ratings_per_user
    assert refused.value.subjects == 1


def test_a_drop_reports_every_row_of_the_erased_person(tmp_path, monkeypatch, ray_cluster):
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    job = _job(tmp_path, _data(tmp_path, "synthetic", "drop"))
    trained, held_out = _erase_someone_held_out_and_trained(job)

    summary = train.run(job)

    assert summary["erased_rows_dropped"] == trained + held_out == SYNTHETIC.ratings_per_user
    assert summary["rows"] == len(split_rows(synthetic_ratings(SYNTHETIC), 0.3)[0]) - trained


def test_an_evaluation_failing_after_the_commit_does_not_fail_the_training(tmp_path, monkeypatch, ray_cluster):
    # Twelfth-pass note: ``evaluate`` ran after the commit, and its failure failed the job (non-zero
    # exit) although the version stood. It is reported beside the version now.
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    job = _job(tmp_path, _data(tmp_path, "synthetic", "drop"))

    def broken(self, rows):
        raise RuntimeError("the model could not be loaded for prediction")

    monkeypatch.setattr(Coordinator, "predict", broken)
    summary = train.run(job)
    assert summary["ensemble_version"] == 1
    assert summary["evaluation_error"] == "RuntimeError: the model could not be loaded for prediction"
    assert "test_rmse" not in summary
