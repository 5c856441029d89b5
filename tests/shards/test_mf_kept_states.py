"""An MF shard keeps the checkpoint states it trained: its erasures restart from them, read no checkpoint, stay exact."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from expunge.orchestrator.config import MFConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards import shard as shard_module
from expunge.shards.config import TrainingConfig
from expunge.shards.models import model_for
from expunge.shards.models.mf import MatrixFactorization
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard
from expunge.shards.store import ObjectStore
from expunge.shards.training import load_checkpoint, restore_snapshot, snapshot_state, train_steps
from tests.engine import from_scratch, job, without

RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=30, ratings_per_user=6, seed=7))
CONFIG = MFConfig(embedding_dim=4)


def _bits(state) -> str:
    digest = hashlib.sha256()
    for name, tensor in state.module.state_dict().items():
        digest.update(name.encode() + tensor.numpy().tobytes())
    for index, values in sorted(state.optimizer_state["state"].items()):
        for name, tensor in sorted(values.items()):
            digest.update(f"{index}.{name}".encode() + tensor.numpy().tobytes())
    digest.update(repr(state.optimizer_state["param_groups"]).encode())
    return digest.hexdigest()


@pytest.fixture
def checkpoint_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = ObjectStore.get

    def get(self, key, *args, **kwargs):
        if "/checkpoints/" in key:
            reads.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(ObjectStore, "get", get)
    return reads


@pytest.mark.parametrize("budget", [64 * 2**20, 0])
def test_an_mf_shard_restarts_from_the_states_it_kept_and_stays_exact(
    tmp_path, hasher, checkpoint_reads, monkeypatch, budget
):
    monkeypatch.setattr(shard_module, "_STATE_CACHE_BYTES", budget)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    config = job(CONFIG, shards=2, slices=4)
    coordinator.train(RATINGS, config)
    subjects = sorted(set(RATINGS.column(SUBJECT_ID).to_pylist()))[:6]
    restarts = 0
    for subject in subjects:  # several restarts from one kept state: restoring must leave it as it was
        receipt = coordinator.forget([subject])
        restarts += sum(1 for s in receipt.shards if s.first_affected_slice > 0)
    assert restarts >= 2
    assert (checkpoint_reads == []) == (budget > 0)  # without room, every restart reads its checkpoint
    reference = from_scratch(tmp_path, coordinator, without(RATINGS, subjects), config, hasher)
    assert constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()) == {0: True, 1: True}
    for shard in range(2):  # and the checkpoints written after a kept restart are the bytes a training writes
        ours = coordinator.catalog.shard_manifest(shard, coordinator.require_manifest().shard_versions[shard])
        theirs = reference.catalog.shard_manifest(shard, reference.require_manifest().shard_versions[shard])
        assert [c.sha256 for c in ours.checkpoints] == [c.sha256 for c in theirs.checkpoints]


def test_a_restored_snapshot_is_the_decoded_checkpoint_and_training_on_it_leaves_the_snapshot_as_it_was():
    rows = RATINGS.append_column(SUBJECT_DIGEST, RATINGS.column(SUBJECT_ID))
    slices = [rows.slice(0, 80), rows.slice(80, 80), rows.slice(160, 80)]
    training = TrainingConfig(model=CONFIG.model_copy(update={"num_items": 30}), epochs=3, batch_size=16)
    model = model_for(training.model)
    saved: dict[int, bytes] = {}
    snapshots = {}
    train_steps(
        model,  # type: ignore[arg-type]
        training,
        0,
        slices,
        None,
        saved.__setitem__,
        on_state=lambda step, state: snapshots.__setitem__(step, snapshot_state(model, state)),  # type: ignore[arg-type]
    )
    decoded = load_checkpoint(model, saved[1])  # type: ignore[arg-type]
    restored = restore_snapshot(model, snapshots[1])  # type: ignore[arg-type]
    assert _bits(restored) == _bits(decoded)
    before = {k: v.clone() for k, v in snapshots[1].model.items()}
    moments = [t.clone() for s in snapshots[1].optimizer["state"].values() for t in s.values()]
    again = train_steps(model, training, 0, slices, restored, lambda _s, _d: None)  # type: ignore[arg-type]
    from_decoded = train_steps(model, training, 0, slices, decoded, lambda _s, _d: None)  # type: ignore[arg-type]
    assert _bits(again) == _bits(from_decoded)
    assert all(torch.equal(before[k], v) for k, v in snapshots[1].model.items())
    after = [t for s in snapshots[1].optimizer["state"].values() for t in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))
    assert _bits(restore_snapshot(model, snapshots[1])) == _bits(load_checkpoint(model, saved[1]))  # type: ignore[arg-type]


def test_an_erasure_encodes_only_the_slices_from_the_first_changed_one_and_matches_a_cold_shard(tmp_path, monkeypatch):
    rows = RATINGS.append_column(SUBJECT_DIGEST, RATINGS.column(SUBJECT_ID))
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    slices = [rows.filter(pc.is_in(rows.column(SUBJECT_ID), pa.array(subjects[k::4]))) for k in range(4)]
    training = TrainingConfig(model=CONFIG.model_copy(update={"num_items": 30}), epochs=3, batch_size=16)
    warm = Shard(0, str(tmp_path / "store"), training, training.model)
    warm.train(slices)
    cold = Shard(0, str(tmp_path / "store"), training, training.model, warm.manifest.version)
    encoded: list[int] = []
    encode = MatrixFactorization.encode
    monkeypatch.setattr(
        MatrixFactorization, "encode", lambda self, m, table: encoded.append(len(table)) or encode(self, m, table)
    )
    warm.erase([subjects[2]], 2, "warm")
    assert encoded == [len(slices[2]) - 6, len(slices[3])]  # the changed slice and the one after it
    encoded.clear()
    cold.store = ObjectStore(str(tmp_path / "other"))  # the same erasure from the stored state, into another store
    for key in warm.store.list_keys("shards"):
        cold.store.put(key, warm.store.get(key))
    cold.adopt(cold.manifest.version)
    cold.erase([subjects[2]], 2, "cold")
    assert len(encoded) == 4  # nothing kept: every slice of the prefix
    ours, theirs = warm.tensors(), cold.tensors()
    assert ours["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in ours["model"])
    assert _bits(warm.final_state()) == _bits(cold.final_state())


def test_an_ingest_restarts_from_the_final_state_it_holds_and_matches_a_cold_shard(tmp_path, checkpoint_reads):
    rows = RATINGS.append_column(SUBJECT_DIGEST, RATINGS.column(SUBJECT_ID))
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    cells = [rows.filter(pc.is_in(rows.column(SUBJECT_ID), pa.array(subjects[k::4]))) for k in range(4)]
    training = TrainingConfig(model=CONFIG.model_copy(update={"num_items": 30}), epochs=3, batch_size=16)
    results = []
    for name in ("warm", "cold"):
        shard = Shard(0, str(tmp_path / name), training, training.model)
        shard.train(cells[:3])
        if name == "cold":
            shard = Shard(0, str(tmp_path / name), training, training.model, shard.manifest.version)
        shard.ingest({3: cells[3]}, "tail", tail_epochs=2)
        results.append((shard, list(checkpoint_reads)))
        checkpoint_reads.clear()
    (warm, warm_reads), (cold, cold_reads) = results
    assert warm_reads == []  # restarted from the state its training ended with
    assert len(cold_reads) == 1
    assert _bits(warm.final_state()) == _bits(cold.final_state())
    assert [c.sha256 for c in warm.manifest.checkpoints] == [c.sha256 for c in cold.manifest.checkpoints]
