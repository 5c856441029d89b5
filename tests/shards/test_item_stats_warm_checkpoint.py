"""item_stats checkpoints in format 5 (each tensor narrowed exactly); format 2 and 3 ones still read bit for bit."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.config import ItemStatsConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.models import model_for
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.training import TrainedState, decode_checkpoint, encode_checkpoint, serialize_state

ITEMS = 30


def _payload() -> dict:
    rows = synthetic_ratings(SyntheticRatingsConfig(users=40, items=ITEMS, ratings_per_user=6, seed=2))
    rows = rows.append_column(SUBJECT_DIGEST, pc.cast(rows.column(SUBJECT_ID), pa.string()))
    model = model_for(ItemStatsConfig(num_items=ITEMS))
    state = model.contribution(rows)
    return decode_checkpoint(serialize_state(model, TrainedState(state, None, 2), ["a", "b"]))


def _format_2(payload: dict) -> bytes:
    """What ``encode_checkpoint`` wrote before format 3: torch.save bytes, 4 byte lanes, zstd level 1."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    raw = buffer.getvalue()
    whole = len(raw) // 4 * 4
    lanes = np.frombuffer(raw, dtype=np.uint8, count=whole).reshape(-1, 4).T.tobytes() + raw[whole:]
    packed = pa.Codec("zstd", compression_level=1).compress(lanes, asbytes=True)
    size = len(raw).to_bytes(8, "little")
    return b"EXPUNGE-CKPT-2\n" + size + hashlib.sha256(size + packed).digest() + packed


def _same(left: dict, right: dict) -> bool:
    return (
        left["layout"] == right["layout"]
        and all(
            left["model"][k].dtype == right["model"][k].dtype
            and left["model"][k].numpy().tobytes() == right["model"][k].numpy().tobytes()
            for k in left["model"]
        )
        and left["model"].keys() == right["model"].keys()
    )


def _format_3(payload: dict) -> bytes:
    """What ``encode_checkpoint`` wrote for 8-byte statistics before format 5: torch.save bytes, 8 byte lanes, zstd 1."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    raw = buffer.getvalue()
    whole = len(raw) // 8 * 8
    lanes = np.frombuffer(raw, dtype=np.uint8, count=whole).reshape(-1, 8).T.tobytes() + raw[whole:]
    packed = pa.Codec("zstd", compression_level=1).compress(lanes, asbytes=True)
    fields = bytes([8]) + len(raw).to_bytes(8, "little")
    return b"EXPUNGE-CKPT-3\n" + fields + hashlib.sha256(fields + packed).digest() + packed


def test_statistics_are_written_in_format_5_and_read_back_bit_for_bit():
    payload = _payload()
    data = encode_checkpoint(payload)
    assert data.startswith(b"EXPUNGE-CKPT-5\n")
    assert len(data) < len(_format_3(payload)) < len(_format_2(payload))  # what narrowing and wider lanes are for
    again = decode_checkpoint(data)
    assert _same(again, payload)
    assert encode_checkpoint(again) == data  # same payload, same bytes (checkpoint keys are content-named)


def test_format_2_and_3_statistics_checkpoints_still_read_bit_for_bit():
    payload = _payload()
    assert _same(decode_checkpoint(_format_2(payload)), payload)
    assert _same(decode_checkpoint(_format_3(payload)), payload)


def test_weights_with_optimizer_state_are_format_4_and_float32_statistics_keep_format_2():
    payload = {
        "model": {"w": torch.ones(3, dtype=torch.float64)},
        "optimizer": {"state": {}},
        "layout": {},
        "steps_done": 1,
    }
    assert encode_checkpoint(payload).startswith(b"EXPUNGE-CKPT-4\n")  # a gradient model's (issue 22)
    float32 = {"model": {"w": torch.ones(3)}, "optimizer": None, "layout": {}, "steps_done": 1}
    assert encode_checkpoint(float32).startswith(b"EXPUNGE-CKPT-2\n")


@pytest.mark.parametrize("position", [15, 23, 31, 50, -1])  # the two lengths, the digest, the data
def test_a_flipped_bit_anywhere_in_format_5_is_a_typed_error(position):
    damaged = bytearray(encode_checkpoint(_payload()))
    damaged[position] ^= 0x01
    with pytest.raises(StorageCorruptError):
        decode_checkpoint(bytes(damaged))
