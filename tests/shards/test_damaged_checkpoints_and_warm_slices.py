"""Adversarial review of the service cuts: checkpoint formats under damaged bytes, the warm slice cache under failed updates."""

from __future__ import annotations

import hashlib
import io
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from expunge.shards.checkpoint_format import _MAGIC, _to_lanes, encode_checkpoint
from expunge.shards.config import ItemStatsConfig, TrainingConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.models.item_stats import ItemStatsModel
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard
from expunge.shards.store import ObjectStore
from expunge.shards.training import load_checkpoint

MODEL = ItemStatsModel(ItemStatsConfig(num_items=6, factors=2, neighbours=3))


def _payload() -> tuple[dict, dict[str, bytes]]:
    rows = pa.table(
        {
            RECORD_ID: ["a", "b", "c", "d", "e"],
            SUBJECT_DIGEST: ["x", "x", "y", "y", "y"],
            ITEM_ID: pa.array([0, 1, 1, 2, 3], pa.int64()),
            RATING: pa.array([1, 2, 3, 4, 5], pa.float32()),
        }
    )
    state = MODEL.accumulate(MODEL.empty(), rows)
    payload = {"model": state.state_dict(), "optimizer": None, "layout": MODEL.layout(state), "steps_done": 1}
    return payload, {k: v.numpy().tobytes() for k, v in state.state_dict().items()}


def _formats(payload: dict) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    f1 = buffer.getvalue()
    packed = pa.Codec("zstd", compression_level=1).compress(_to_lanes(f1, 4), asbytes=True)
    size = len(f1).to_bytes(8, "little")
    f2 = _MAGIC + size + hashlib.sha256(size + packed).digest() + packed
    packed = pa.Codec("zstd", compression_level=1).compress(_to_lanes(f1, 8), asbytes=True)
    fields = bytes([8]) + size  # what encode_checkpoint wrote for 8-byte statistics before format 5
    f3 = b"EXPUNGE-CKPT-3\n" + fields + hashlib.sha256(fields + packed).digest() + packed
    f5 = encode_checkpoint(payload)
    assert f5.startswith(b"EXPUNGE-CKPT-5\n")
    return {"1": f1, "2": f2, "3": f3, "5": f5}


def _flip_outcomes(data: bytes, reference: dict[str, bytes]) -> dict[str, int]:
    outcomes = {"typed": 0, "same": 0, "other_weights": 0, "untyped": 0}
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 1
        try:
            state = load_checkpoint(MODEL, bytes(damaged)).module
        except StorageCorruptError:
            outcomes["typed"] += 1
            continue
        except Exception:
            outcomes["untyped"] += 1
            continue
        got = {k: v.numpy().tobytes() for k, v in state.state_dict().items()}
        outcomes["same" if got == reference else "other_weights"] += 1
    return outcomes


@pytest.mark.parametrize("fmt", ["2", "3", "5"])
def test_a_flipped_byte_of_format_2_3_or_5_is_a_typed_error(fmt):
    payload, reference = _payload()
    outcomes = _flip_outcomes(_formats(payload)[fmt], reference)
    assert outcomes["other_weights"] == outcomes["untyped"] == 0, outcomes


def test_a_flipped_byte_of_format_1_is_never_an_untyped_error():
    """Format 1 (before checkpoints had a checksum) cannot tell every damaged byte: about 10 % of single-bit
    flips load as other sums, which is why formats 2, 3 and 5 carry a sha256. But a layout that no longer fits
    the model is a storage fault, typed: it was a bare RuntimeError from load_state_dict (adversarial review)."""
    payload, reference = _payload()
    outcomes = _flip_outcomes(_formats(payload)["1"], reference)
    assert outcomes["untyped"] == 0, outcomes
    assert outcomes["typed"] > 0


def test_the_slice_cache_survives_failed_updates_and_stays_the_published_parquet(tmp_path, monkeypatch):
    rng = random.Random(1)
    config = ItemStatsConfig(num_items=12, factors=2, neighbours=4)
    training = TrainingConfig(model=config, epochs=1, batch_size=32)

    def rows(subjects: list[tuple[str, list[int]]], start: int) -> pa.Table:
        cells = [(s, i) for s, items in subjects for i in items]
        return pa.table(
            {
                RECORD_ID: [f"r{start + n:05d}" for n in range(len(cells))],
                SUBJECT_ID: [s for s, _ in cells],
                SUBJECT_DIGEST: ["d" + s for s, _ in cells],
                ITEM_ID: pa.array([i for _, i in cells], pa.int64()),
                RATING: pa.array([float(rng.choice([1, 2, 3, 4, 5])) for _ in cells], pa.float32()),
            }
        )

    slices = [rows([(f"u{k}{j}", rng.sample(range(12), 4)) for j in range(4)], 100 * k) for k in range(3)]
    shard = Shard(0, str(tmp_path / "a"), training, config)
    shard.train(slices)
    shard.erase(["du00"], 0, "warm")  # every slice loaded and kept
    original = ObjectStore.create_exclusive

    def refuse(self, key, data):
        raise OSError("injected: the manifest write failed")

    monkeypatch.setattr(ObjectStore, "create_exclusive", refuse)
    with pytest.raises(OSError):
        shard.erase(["du11"], 0, "fails")
    monkeypatch.setattr(ObjectStore, "create_exclusive", original)
    shard.update(["du22"], {1: rows([("u13", [0, 1])], 900)}, "after")
    published = {(e.key, e.sha256) for e in shard.manifest.slices}
    for key, table in shard._slice_cache.items():
        assert key in published
        assert pq.read_table(io.BytesIO(shard.store.get(key[0]))).equals(table)
    reference = Shard(0, str(tmp_path / "b"), training, config)
    reference.train([pq.read_table(io.BytesIO(shard.store.get(e.key))) for e in shard.manifest.slices])
    ours, theirs = shard.final_state().module.state_dict(), reference.final_state().module.state_dict()
    assert {k: v.numpy().tobytes() for k, v in ours.items()} == {k: v.numpy().tobytes() for k, v in theirs.items()}
    assert "du11" in shard.final_state().module.subjects  # the failed erasure changed nothing
