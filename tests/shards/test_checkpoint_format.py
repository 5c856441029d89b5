"""Stored checkpoints: compressed, yet weights and Adam state come back bit for bit; older formats still read."""

from __future__ import annotations

import hashlib
import io
import json
import struct

import pyarrow as pa
import pytest
import torch

from expunge.orchestrator.evidence.exactness import same_bits
from expunge.shards import checkpoint_format
from expunge.shards.checkpoint_format import _MAGIC, _to_lanes, decode_checkpoint, encode_checkpoint
from expunge.shards.config import MFConfig, TrainingConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.models import model_for
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST
from expunge.shards.training import load_checkpoint, train_steps


def _slices() -> list[pa.Table]:
    tables = []
    for step in range(3):
        subjects = [f"{step:02d}{u:062d}" for u in range(6)]
        rows = [(s, (i * 7 + n) % 30, 1.0 + (i + n) % 5) for n, s in enumerate(subjects) for i in range(5)]
        digests, items, ratings = zip(*rows, strict=True)
        tables.append(
            pa.table(
                {
                    SUBJECT_DIGEST: list(digests),
                    ITEM_ID: pa.array(items, pa.int64()),
                    RATING: pa.array(ratings, pa.float32()),
                }
            )
        )
    return tables


@pytest.fixture(scope="module")
def trained() -> tuple[object, list[bytes], object]:
    model = model_for(MFConfig(embedding_dim=4, num_items=30))
    config = TrainingConfig(model=MFConfig(embedding_dim=4, num_items=30), epochs=3, batch_size=8)
    stored: list[bytes] = []
    state = train_steps(
        model, config, 0, _slices(), None, lambda _step, data: stored.append(data), lineage=["a", "b", "c"]
    )
    return model, stored, state


def _tensors(payload: dict) -> dict[str, torch.Tensor]:
    found = {f"model.{k}": v for k, v in payload["model"].items()}
    for index, state in payload["optimizer"]["state"].items():
        found |= {f"optimizer.{index}.{k}": v for k, v in state.items()}
    return found


def test_the_stored_checkpoint_gives_back_the_live_weights_and_adam_state_bit_for_bit(trained):
    model, stored, state = trained
    payload = decode_checkpoint(stored[-1])
    live = _tensors({"model": state.module.state_dict(), "optimizer": state.optimizer_state})
    restored = _tensors(payload)
    assert restored.keys() == live.keys()
    assert all(same_bits(restored[name], live[name]) for name in live)
    assert payload["lineage"] == ["a", "b", "c"]  # scans read the slices a checkpoint was trained on
    assert payload["steps_done"] == 3
    again = load_checkpoint(model, stored[-1])
    assert all(same_bits(again.module.state_dict()[k], v) for k, v in state.module.state_dict().items())


def test_encoding_is_deterministic_and_smaller_than_torch_save(trained):
    _, stored, _ = trained
    for data in stored:
        payload = decode_checkpoint(data)
        assert encode_checkpoint(payload) == data  # same payload, same bytes (checkpoint keys are content-named)
        plain = io.BytesIO()
        torch.save(payload, plain)
        assert len(data) < len(plain.getvalue())


def test_checkpoints_written_before_compression_still_load(trained):
    _, stored, _ = trained
    payload = decode_checkpoint(stored[1])
    plain = io.BytesIO()
    torch.save(payload, plain)  # format 1: the plain torch.save zip
    old = decode_checkpoint(plain.getvalue())
    assert all(same_bits(old_tensor, _tensors(payload)[name]) for name, old_tensor in _tensors(old).items())


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a checkpoint"])
def test_damaged_bytes_raise_a_storage_error_that_says_what_to_do(trained, damage):
    _, stored, _ = trained
    with pytest.raises(StorageCorruptError, match="Restore it from backup"):
        decode_checkpoint(damage(stored[0]))


def test_a_flipped_byte_anywhere_is_a_typed_error_never_other_weights(trained):
    _, stored, _ = trained
    data = stored[0]
    for offset in range(0, len(data), max(1, len(data) // 300)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        with pytest.raises(StorageCorruptError):
            decode_checkpoint(bytes(damaged))


def _same_values(left: object, right: object) -> bool:
    """Equal types all the way down (a tuple stays a tuple, an int key an int), tensors bit for bit."""
    if type(left) is not type(right):
        return False
    if isinstance(left, torch.Tensor):
        return same_bits(left, right)
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same_values(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(_same_values(a, b) for a, b in zip(left, right, strict=True))
    return left == right


def _format_2(payload: dict) -> bytes:
    """What ``encode_checkpoint`` wrote for a gradient model before format 4: torch.save bytes, 4 lanes, zstd."""
    plain = io.BytesIO()
    torch.save(payload, plain)
    packed = pa.Codec("zstd", compression_level=1).compress(_to_lanes(plain.getvalue(), 4), asbytes=True)
    size = len(plain.getvalue()).to_bytes(8, "little")
    return _MAGIC + size + hashlib.sha256(size + packed).digest() + packed


def test_a_gradient_model_checkpoint_is_format_4_and_gives_back_the_payload_format_2_did(trained):
    _, stored, _ = trained
    for data in stored:
        assert data.startswith(b"EXPUNGE-CKPT-4\n")
        payload = decode_checkpoint(data)
        old = decode_checkpoint(_format_2(payload))  # a store written before format 4 still reads
        assert _same_values(payload, old)
        assert isinstance(payload["optimizer"]["param_groups"][0]["betas"], tuple)
        assert payload["model"]._metadata == old["model"]._metadata  # the state dict's module versions
    assert len(stored[-1]) < len(_format_2(decode_checkpoint(stored[-1])))


def test_a_reader_older_than_format_4_fails_typed_on_its_bytes(trained, monkeypatch):
    _, stored, _ = trained
    monkeypatch.setattr(checkpoint_format, "_MAGIC_RAW", b"a magic no bytes start with")  # the reader before format 4
    with pytest.raises(StorageCorruptError, match="Restore it from backup"):
        decode_checkpoint(stored[-1])


def test_a_payload_format_4_cannot_hold_exactly_keeps_format_2():
    strided = torch.arange(12.0).reshape(3, 4).t()  # not contiguous: format 4 keeps no strides
    payload = {"model": {"w": strided}, "optimizer": {"state": {}}, "layout": {}, "steps_done": 1}
    data = encode_checkpoint(payload)
    assert data.startswith(b"EXPUNGE-CKPT-2\n")
    assert same_bits(decode_checkpoint(data)["model"]["w"], strided)


def test_a_format_4_header_that_does_not_fit_its_bytes_is_a_typed_error_even_with_a_valid_digest(trained):
    _, stored, _ = trained
    start = len(b"EXPUNGE-CKPT-4\n")
    lanes = stored[0][start]
    header_size, blob_size, low_size = struct.unpack("<QQQ", stored[0][start + 1 : start + 25])
    width = blob_size // lanes
    high = pa.Codec("zstd").decompress(
        stored[0][start + 57 + low_size :], decompressed_size=width + header_size, asbytes=True
    )
    header = json.loads(high[width:])
    header["places"][-1] = blob_size  # the last tensor placed past the end of the bytes
    forged = json.dumps(header, separators=(",", ":")).encode()
    packed_high = pa.Codec("zstd", compression_level=1).compress(high[:width] + forged, asbytes=True)
    fields = bytes([lanes]) + struct.pack("<QQQ", len(forged), blob_size, low_size)
    packed = stored[0][start + 57 : start + 57 + low_size] + packed_high
    data = stored[0][:start] + fields + hashlib.sha256(fields + packed).digest() + packed
    with pytest.raises(StorageCorruptError, match="does not fit its bytes"):
        decode_checkpoint(data)
