"""Ingest through the engine (in-process shards): exact against training from scratch on the recorded slices."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from expunge.orchestrator.config import IngestConfig, ItemStatsConfig, MFConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, DataValidationError, PersonalDataInTextError
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import RECORD_ID, SUBJECT_ID
from tests.conftest import TEST_KEY
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=20, ratings_per_user=6, seed=5))


def _split(rows: pa.Table, first: int) -> tuple[pa.Table, pa.Table]:
    """The first ``first`` subjects' rows, and the rest with record ids kept."""
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    early = pc.is_in(rows.column(SUBJECT_ID), value_set=pa.array(subjects[:first]))
    return rows.filter(early), rows.filter(pc.invert(early))


def _exact(coordinator: Coordinator) -> dict[int, bool]:
    manifest = coordinator.require_manifest()
    found = rederive_shards(coordinator.catalog, manifest, range(manifest.sharding.shards))
    return {s: r.result.exact for s, r in found.items()}


@pytest.mark.parametrize("model", [MFConfig(embedding_dim=4), ItemStatsConfig(factors=2)], ids=["mf", "item_stats"])
def test_ingest_then_forget_is_exact(tmp_path, model) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    known = sorted(set(initial.column(SUBJECT_ID).to_pylist()))[:3]
    # A batch: new subjects' rows, and new rows of known subjects (fresh record ids).
    extra = initial.filter(pc.is_in(initial.column(SUBJECT_ID), value_set=pa.array(known))).slice(0, 6)
    extra = extra.set_column(0, RECORD_ID, pa.array([f"new-{i}" for i in range(len(extra))]))
    initial = initial.filter(pc.invert(pc.is_in(initial.column(RECORD_ID), value_set=extra.column(RECORD_ID))))
    coordinator.train(initial, job(model=model, shards=2, slices=3))
    receipt = coordinator.ingest(pa.concat_tables([later, extra.cast(later.schema)]), settings=IngestConfig())
    assert receipt.status == "ingested"
    assert receipt.rows_added == len(later) + len(extra)
    assert all(_exact(coordinator).values())
    again = coordinator.ingest(later)
    assert again.status == "nothing_new"
    assert again.rows_already_stored == len(later)
    coordinator.forget([known[0]])
    assert all(_exact(coordinator).values())
    refused = coordinator.ingest(extra)
    assert refused.rows_refused_erased >= 1


def test_bad_batch_lists_every_problem_and_writes_nothing(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    bad = pa.table(
        {
            RECORD_ID: ["a", "a", "b"],
            SUBJECT_ID: ["u1", None, "u2"],
            "item_id": pa.array([1, 2, 3], pa.int64()),
            "rating": pa.array([1.0, float("nan"), 3.0], pa.float32()),
        }
    )
    before = sorted(p.name for p in (tmp_path / "store").rglob("*"))
    with pytest.raises(DataValidationError) as raised:
        coordinator.ingest(bad)
    assert len(raised.value.problems) >= 3
    assert sorted(p.name for p in (tmp_path / "store").rglob("*")) == before


@pytest.mark.parametrize("model", [MFConfig(embedding_dim=4), ItemStatsConfig(factors=2)], ids=["mf", "item_stats"])
def test_an_ingest_joining_an_erasure_retrains_each_shard_once(tmp_path, model) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    coordinator.train(initial, job(model=model, shards=2, slices=3))
    erased = sorted(set(initial.column(SUBJECT_ID).to_pylist()))[:2]
    digests = [hasher.digest(s) for s in erased]
    # The batch also holds a new row of a subject erased in the same commit: it must be refused.
    doomed = initial.filter(pc.equal(initial.column(SUBJECT_ID), erased[0])).slice(0, 1)
    doomed = doomed.set_column(0, RECORD_ID, pa.array(["late-row"]))
    batch = pa.concat_tables([later, doomed.cast(later.schema)])
    prepared = coordinator.prepare_ingest(batch, erasing=digests)
    shards = coordinator.pool.shards  # type: ignore[attr-defined]
    calls_before = {s: list(shard.calls) for s, shard in shards.items()}
    receipt = coordinator.forget_digests(digests, ingest=prepared)
    new_calls = {s: shard.calls[len(calls_before[s]) :] for s, shard in shards.items()}
    assert any("ingest" in calls for calls in new_calls.values())
    assert all(calls.count("ingest") <= 1 and "erase" not in calls for calls in new_calls.values())
    assert receipt.rows_removed > 0
    added = prepared.receipt
    assert added is not None
    assert added.rows_added == len(later)
    assert added.rows_refused_erased == 1
    assert coordinator.require_manifest().rows == len(initial) - receipt.rows_removed + len(later)
    assert all(_exact(coordinator).values())


def test_request_ids_are_never_reused_and_never_name_a_subject(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    coordinator.train(initial, job(shards=2, slices=2))
    subject = later.column(SUBJECT_ID)[0].as_py()
    with pytest.raises(PersonalDataInTextError):
        coordinator.ingest(later, request_id=f"batch-of-{subject}")
    first = coordinator.ingest(later.slice(0, 10), request_id="daily-1")
    assert coordinator.ingest(later.slice(0, 10), request_id="daily-1") == first  # a retry: the same receipt
    with pytest.raises(ConfigError, match="already used"):
        coordinator.ingest(later.slice(10, 10), request_id="daily-1")
    assert coordinator.require_manifest().version == 2


def test_errors_name_duplicate_record_ids_by_position_never_by_value(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    duplicated = ROWS.slice(0, 2).set_column(0, RECORD_ID, pa.array(["user-7:42:881250949"] * 2))
    with pytest.raises(DataValidationError) as raised:
        coordinator.ingest(duplicated)
    assert "user-7" not in str(raised.value)
    assert "rows 0 and 1" in str(raised.value)


def test_the_stored_records_are_carried_over_an_erasure_not_read_again(tmp_path, monkeypatch) -> None:
    import expunge.orchestrator.ingest.ingester as ingester

    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    coordinator.train(initial, job(shards=2, slices=2))
    coordinator.ingest(later.slice(0, 10))
    coordinator.forget([initial.column(SUBJECT_ID)[0].as_py()])
    reads = []
    real = ingester.stored_records
    monkeypatch.setattr(ingester, "stored_records", lambda *a: reads.append(1) or real(*a))
    again = coordinator.ingest(later.slice(0, 20))  # half already stored: found without reading the slices
    assert reads == []
    assert (again.rows_already_stored, again.rows_added) == (10, 10)


def test_batches_take_the_stored_types_and_extra_columns_are_refused(tmp_path) -> None:
    """A float64 rating column (as pandas writes it) joins float32 slices; item_stats erasures still work."""
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    coordinator.train(initial, job(model=ItemStatsConfig(factors=2), shards=2, slices=2))
    doubles = later.set_column(3, "rating", later.column("rating").cast(pa.float64()))
    with pytest.raises(DataValidationError, match="not stored by this store"):
        coordinator.ingest(doubles.append_column("email", pa.array(["x@example.org"] * len(doubles))))
    coordinator.ingest(doubles)
    known = sorted(set(initial.column(SUBJECT_ID).to_pylist()))[0]
    assert coordinator.forget([known, later.column(SUBJECT_ID)[0].as_py()]).status == "erased"
    assert all(_exact(coordinator).values())


def test_a_readmitted_persons_rows_are_added_again(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    coordinator.train(initial, job(shards=2, slices=2))
    person = later.column(SUBJECT_ID)[0].as_py()
    theirs = later.filter(pc.equal(later.column(SUBJECT_ID), person))
    coordinator.ingest(theirs)
    coordinator.forget([person])
    coordinator.readmit([person], reason="new consent given")
    again = coordinator.ingest(theirs)
    assert (again.rows_added, again.rows_already_stored) == (len(theirs), 0)


def test_a_request_id_naming_a_stored_person_is_refused(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    initial, later = _split(ROWS, 30)
    coordinator.train(initial, job(shards=2, slices=2))
    stored = initial.column(SUBJECT_ID)[0].as_py()
    with pytest.raises(PersonalDataInTextError, match="holds or erased") as refused:
        coordinator.ingest(later, request_id=f"batch-for-{stored}")
    assert "one of its parts" in str(refused.value)  # says why a date's 12 or 05 can be refused (new-user review)
    assert stored not in str(refused.value)
    assert coordinator.ingest(later, request_id="daily-20261203").status == "ingested"
