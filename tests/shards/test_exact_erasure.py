"""Exactness, isolation and slice economy, driven in-process through the Coordinator."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import MFConfig, MLPConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.pipelines.datasets import synthetic_ratings, synthetic_tabular
from expunge.shards.rows import SUBJECT_ID
from tests.engine import from_scratch, job, store_snapshot, subject_in_slice, without

RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=60, items=40, ratings_per_user=8, seed=3))
TABULAR = synthetic_tabular(subjects=60, rows_per_subject=4, features=6, classes=3, seed=3)
MODELS = {
    "mf": (MFConfig(embedding_dim=4), RATINGS),
    "mlp": (MLPConfig(num_features=6, num_classes=3, hidden=(8,)), TABULAR),
}


def _trained(tmp_path, hasher, model_name, placement="balanced"):
    model, rows = MODELS[model_name]
    config = job(model, placement=placement)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, config)
    return coordinator, config, rows


@pytest.mark.parametrize("model_name", ["mf", "mlp"])
@pytest.mark.parametrize("subject_slice", [0, 2, 3])
def test_erasure_equals_training_from_scratch_without_the_subject(tmp_path, hasher, model_name, subject_slice):
    coordinator, config, rows = _trained(tmp_path, hasher, model_name)
    subject = subject_in_slice(coordinator, hasher, rows.column(SUBJECT_ID).to_pylist(), subject_slice)
    receipt = coordinator.forget([subject])
    reference = from_scratch(tmp_path, coordinator, without(rows, [subject]), config, hasher)
    equal = constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors())
    assert equal == dict.fromkeys(range(3), True)
    assert receipt.status == "erased"
    assert receipt.rows_removed == sum(1 for s in rows.column(SUBJECT_ID).to_pylist() if s == subject)


@pytest.mark.parametrize("model_name", ["mf", "mlp"])
def test_hash_placement_is_exact_without_pinning_the_placement(tmp_path, hasher, model_name):
    coordinator, config, rows = _trained(tmp_path, hasher, model_name, placement="hash")
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[5]
    coordinator.forget([subject])
    reference = from_scratch(tmp_path, coordinator, without(rows, [subject]), config, hasher, pin_placement=False)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())


def test_a_perturbed_reference_is_caught(tmp_path, hasher):
    """The exactness check itself must fail when the models differ (one extra row removed)."""
    coordinator, config, rows = _trained(tmp_path, hasher, "mf")
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    coordinator.forget([subjects[0]])
    reference = from_scratch(tmp_path, coordinator, without(rows, subjects[:2]), config, hasher)
    assert not all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())


def test_only_slices_from_the_subjects_slice_on_are_retrained(tmp_path, hasher):
    coordinator, _, rows = _trained(tmp_path, hasher, "mf")
    subject = subject_in_slice(coordinator, hasher, rows.column(SUBJECT_ID).to_pylist(), 2)
    home = coordinator.placement_index().home_cells()[hasher.digest(subject)]
    before = coordinator.pool.shards[home.shard].manifest  # type: ignore[attr-defined]
    receipt = coordinator.forget([subject])
    (retrain,) = receipt.shards
    assert retrain.shard == home.shard
    assert retrain.first_affected_slice == 2
    assert retrain.slices_retrained == (2, 3)
    assert retrain.restarted_from == before.checkpoints[1].key
    after = coordinator.pool.shards[home.shard].manifest  # type: ignore[attr-defined]
    assert after.checkpoints[:2] == before.checkpoints[:2]  # steps 1..k-1 reused as they were
    assert all(a.key != b.key for a, b in zip(after.checkpoints[2:], before.checkpoints[2:], strict=True))


def test_subjects_sharing_a_shard_cost_one_retrain_from_the_earliest_slice(tmp_path, hasher):
    coordinator, config, rows = _trained(tmp_path, hasher, "mf")
    homes = coordinator.placement_index().home_cells()
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    shard0 = [s for s in subjects if homes[hasher.digest(s)].shard == 0]
    late = next(s for s in shard0 if homes[hasher.digest(s)].slice == 3)
    early = next(s for s in shard0 if homes[hasher.digest(s)].slice == 1)
    receipt = coordinator.forget([late, early])
    assert [(s.shard, s.first_affected_slice, s.slices_retrained) for s in receipt.shards] == [(0, 1, (1, 2, 3))]
    assert coordinator.pool.shards[0].calls.count("erase") == 1  # type: ignore[attr-defined]
    reference = from_scratch(tmp_path, coordinator, without(rows, [late, early]), config, hasher)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())


def test_unaffected_shards_get_no_call_and_keep_their_files(tmp_path, hasher):
    coordinator, _, rows = _trained(tmp_path, hasher, "mf")
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[0]
    home = coordinator.placement_index().home_cells()[hasher.digest(subject)].shard
    others = [s for s in range(3) if s != home]
    snapshot = {s: store_snapshot(tmp_path / "store" / "shards" / f"{s:04d}") for s in others}
    calls = {s: list(coordinator.pool.shards[s].calls) for s in others}  # type: ignore[attr-defined]
    receipt = coordinator.forget([subject])
    assert receipt.affected_shards == [home]
    assert sorted(receipt.untouched_shards) == others
    for s in others:
        assert coordinator.pool.shards[s].calls == calls[s]  # type: ignore[attr-defined]
        assert store_snapshot(tmp_path / "store" / "shards" / f"{s:04d}") == snapshot[s]


def test_unknown_subject_gets_a_not_found_receipt_and_nothing_changes(tmp_path, hasher):
    coordinator, _, _ = _trained(tmp_path, hasher, "mf")
    before = store_snapshot(tmp_path / "store")
    receipt = coordinator.forget(["nobody-by-this-name"])
    assert receipt.status == "not_found"
    assert receipt.not_found_digests == (hasher.digest("nobody-by-this-name"),)
    assert receipt.model_version_before == receipt.model_version_after == 1
    assert receipt.shards == ()
    after = store_snapshot(tmp_path / "store")
    # Only the request's receipt is added (the audit trail shows every request: the receipt log and
    # its by-id copy); no data changed.
    # The receipt is the request's only write (the lease records beside it say which process wrote it).
    written = {k for k in set(after) - set(before) if not k.startswith("lease/")}
    assert written == {f"receipts/requests/{receipt.request_id}.json", "receipts/chain/00000001.json"}
    assert {k: v for k, v in after.items() if k in before} == before


def test_superseded_objects_holding_the_subject_are_deleted(tmp_path, hasher):
    coordinator, _, rows = _trained(tmp_path, hasher, "mf")
    subject = subject_in_slice(coordinator, hasher, rows.column(SUBJECT_ID).to_pylist(), 1)
    receipt = coordinator.forget([subject])
    assert receipt.deleted_objects
    assert not any((tmp_path / "store" / key).exists() for key in receipt.deleted_objects)
    import pyarrow.parquet as pq

    for path in (tmp_path / "store" / "shards").rglob("*.parquet"):
        assert subject not in pq.read_table(path).column(SUBJECT_ID).to_pylist()


def test_receipt_never_holds_the_raw_subject_id(tmp_path, hasher):
    coordinator, _, rows = _trained(tmp_path, hasher, "mf")
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[3]
    receipt = coordinator.forget([subject])
    assert subject not in receipt.model_dump_json()
    assert receipt.subject_digests == (hasher.digest(subject),)


def test_bad_training_rows_raise_one_typed_error_and_write_nothing(tmp_path, hasher):
    import pyarrow as pa

    from expunge.orchestrator.errors import DataValidationError

    bad = pa.table({"record_id": ["a", "a"], "subject_id": ["x", None], "item_id": [1, 2], "rating": [3.0, None]})
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    with pytest.raises(DataValidationError) as caught:
        coordinator.train(bad, job())
    assert len(caught.value.problems) == 3
    assert not (tmp_path / "store").exists()


def test_row_placement_spreads_a_subject_and_still_erases_exactly(tmp_path, hasher):
    coordinator, config, rows = _trained(tmp_path, hasher, "mlp", placement="row")
    cells = coordinator.placement_index().cells()
    subject = next(
        s
        for s in sorted(set(rows.column(SUBJECT_ID).to_pylist()))
        if len({c.shard for c in cells[hasher.digest(s)]}) > 1
    )
    receipt = coordinator.forget([subject])
    assert len(receipt.shards) > 1  # one request, several shards, each from its own first slice
    reference = from_scratch(tmp_path, coordinator, without(rows, [subject]), config, hasher, pin_placement=False)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())


def test_same_inputs_give_the_same_checkpoint_keys(tmp_path, hasher):
    model, rows = MODELS["mf"]
    keys = []
    for name in ("one", "two"):
        coordinator = Coordinator(str(tmp_path / name), hasher, pool_factory=local_pool)
        coordinator.train(rows, job(model))
        keys.append(sorted(p.name for p in (tmp_path / name).rglob("*.pt")))
    assert keys[0] == keys[1]
    assert len(keys[0]) == 3 * 4  # a checkpoint after every slice step of every shard
    changed = Coordinator(str(tmp_path / "three"), hasher, pool_factory=local_pool)
    changed.train(rows, job(model).model_copy(update={"training": job(model).training.model_copy(update={"seed": 1})}))
    assert not set(keys[0]) & {p.name for p in (tmp_path / "three").rglob("*.pt")}


def test_a_different_digest_key_is_refused_instead_of_matching_nobody(tmp_path, hasher):
    from expunge.orchestrator.digests import SubjectHasher
    from expunge.orchestrator.errors import ConfigError

    _, _, rows = _trained(tmp_path, hasher, "mf")
    before = store_snapshot(tmp_path / "store")
    other = Coordinator(
        str(tmp_path / "store"), SubjectHasher(b"another-key-0123456789abcdef"), pool_factory=local_pool
    )
    with pytest.raises(ConfigError, match="digest key differs"):
        other.forget([rows.column(SUBJECT_ID)[0].as_py()])
    assert store_snapshot(tmp_path / "store") == before


def test_retraining_keeps_known_subjects_in_their_cells(tmp_path, hasher):
    import pyarrow as pa

    coordinator, config, rows = _trained(tmp_path, hasher, "mf")
    before = coordinator.placement_index().home_cells()
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[7]
    extra = pa.table(
        {
            "record_id": [f"new-{i}" for i in range(30)],
            "subject_id": [subject] * 30,  # a heavy newcomer would move under a fresh balance
            "item_id": pa.array(list(range(30)), pa.int64()),
            "rating": pa.array([4.0] * 30, pa.float32()),
        }
    )
    coordinator.train(pa.concat_tables([rows, extra.cast(rows.schema)]), config)
    after = coordinator.placement_index()
    assert after.home_cells() == before
    assert after.rows()[hasher.digest(subject)] == 30 + rows.column(SUBJECT_ID).to_pylist().count(subject)
