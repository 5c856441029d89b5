"""Format 5 (statistics without optimizer state, each tensor narrowed exactly): every bit comes back.

Decoded tensors keep their dtype, shape and bits (-0.0, NaN payloads, int64 extremes included); damaged
or truncated bytes are a typed ``StorageCorruptError``; checkpoints of formats 1-4 still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards import checkpoint_format
from expunge.shards.checkpoint_format import (
    _MAGIC,
    _to_lanes,
    decode_checkpoint,
    encode_checkpoint,
    same_checkpoint,
)
from expunge.shards.config import ItemStatsConfig, MFConfig, TrainingConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.models import model_for
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.training import TrainedState, load_checkpoint, serialize_state, train_steps

MAGIC_5 = b"EXPUNGE-CKPT-5\n"
FIELDS_5 = struct.Struct("<QQQQ")  # the lengths of the tensor bytes, the header, the fast lanes, the fast frame
HEAD_5 = len(MAGIC_5) + FIELDS_5.size + 32  # magic, four lengths, sha256


def _item_stats() -> tuple[object, dict]:
    rows = synthetic_ratings(SyntheticRatingsConfig(users=60, items=40, ratings_per_user=9, seed=3))
    rows = rows.append_column(SUBJECT_DIGEST, pc.cast(rows.column(SUBJECT_ID), pa.string()))
    model = model_for(ItemStatsConfig(num_items=40))
    state = model.contribution(rows)
    data = serialize_state(model, TrainedState(state, None, 3), ["a", "b", "c"])
    return model, {"data": data, "state": state}


def _bits(tensor: torch.Tensor) -> tuple[torch.dtype, tuple[int, ...], bytes]:
    return tensor.dtype, tuple(tensor.shape), tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(left: object, right: object) -> bool:
    """Equal types all the way down, tensors bit for bit (dtype, shape, bytes)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, torch.Tensor):
        return _bits(left) == _bits(right)  # type: ignore[arg-type]
    if isinstance(left, dict):
        if isinstance(left, OrderedDict) and getattr(left, "_metadata", None) != getattr(right, "_metadata", None):
            return False
        return list(left) == list(right) and all(_same(left[k], right[k]) for k in left)  # type: ignore[index]
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))  # type: ignore[arg-type]
    return left == right


def _statistics(**tensors: torch.Tensor) -> dict:
    model: OrderedDict[str, torch.Tensor] = OrderedDict(tensors)
    model._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    return {"model": model, "optimizer": None, "layout": {"subjects": ["s1", "s2"]}, "steps_done": 2, "lineage": ["a"]}


def _format_3(payload: dict) -> bytes:
    """What ``encode_checkpoint`` wrote for 8-byte statistics before format 5: torch.save, 8 lanes, zstd 1."""
    plain = io.BytesIO()
    torch.save(payload, plain)
    packed = pa.Codec("zstd", compression_level=1).compress(_to_lanes(plain.getvalue(), 8), asbytes=True)
    fields = bytes([8]) + len(plain.getvalue()).to_bytes(8, "little")
    return b"EXPUNGE-CKPT-3\n" + fields + hashlib.sha256(fields + packed).digest() + packed


def _format_2(payload: dict) -> bytes:
    plain = io.BytesIO()
    torch.save(payload, plain)
    packed = pa.Codec("zstd", compression_level=1).compress(_to_lanes(plain.getvalue(), 4), asbytes=True)
    size = len(plain.getvalue()).to_bytes(8, "little")
    return _MAGIC + size + hashlib.sha256(size + packed).digest() + packed


def _high_frame(data: bytes) -> tuple[tuple[int, ...], bytes]:
    """The four lengths of format 5 bytes and their second frame, decompressed (high lanes, then the header)."""
    fields = FIELDS_5.unpack(data[len(MAGIC_5) : len(MAGIC_5) + FIELDS_5.size])
    size, header_size, low_size, packed_low_size = fields
    high = pa.Codec("zstd").decompress(
        data[HEAD_5 + packed_low_size :], decompressed_size=size - low_size + header_size, asbytes=True
    )
    return fields, high


def _parts(data: bytes) -> list[list]:
    (size, _, low_size, _), high = _high_frame(data)
    return json.loads(high[size - low_size :])["parts"]


def test_an_item_stats_checkpoint_is_format_5_and_loads_bit_for_bit():
    model, made = _item_stats()
    data, state = made["data"], made["state"]
    assert data.startswith(MAGIC_5)
    loaded = load_checkpoint(model, data)  # type: ignore[arg-type]
    assert loaded.optimizer_state is None
    assert loaded.steps_done == 3
    live = state.state_dict()
    assert all(_bits(loaded.module.state_dict()[k]) == _bits(v) for k, v in live.items())
    payload = decode_checkpoint(data)
    assert payload["lineage"] == ["a", "b", "c"]
    assert payload["layout"] == model.layout(state)
    assert payload["model"]._metadata == live._metadata  # type: ignore[attr-defined]
    assert encode_checkpoint(payload) == data  # deterministic: the same payload, the same bytes
    assert len(data) < len(_format_3(payload))
    kinds = dict(zip(live, (p[0] for p in _parts(data)), strict=True))
    assert kinds["pair_index"] == "delta"
    assert kinds["pair_product"] == "grid"
    assert kinds["pair_count"] == "int"


def test_checkpoints_of_every_older_format_still_read_bit_for_bit():
    _, made = _item_stats()
    payload = decode_checkpoint(made["data"])
    plain = io.BytesIO()
    torch.save(payload, plain)
    for older in (plain.getvalue(), _format_2(payload), _format_3(payload)):  # formats 1, 2, 3
        assert _same(decode_checkpoint(older), payload)


def test_a_gradient_model_checkpoint_stays_format_4_byte_for_byte():
    config = TrainingConfig(model=MFConfig(embedding_dim=4, num_items=20), epochs=2, batch_size=8)
    model = model_for(config.model)
    rows = synthetic_ratings(SyntheticRatingsConfig(users=10, items=20, ratings_per_user=5, seed=0))
    rows = rows.append_column(SUBJECT_DIGEST, pc.cast(rows.column(SUBJECT_ID), pa.string()))
    stored: list[bytes] = []
    train_steps(model, config, 0, [rows], None, lambda _s, data: stored.append(data), lineage=["a"])
    assert stored[0].startswith(b"EXPUNGE-CKPT-4\n")
    payload = decode_checkpoint(stored[0])
    assert encode_checkpoint(payload) == stored[0]
    assert checkpoint_format._encode_raw(payload) == stored[0]  # what format 4 wrote before format 5


_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.integers(-(2**40), 2**40).map(lambda n: n / 2**20),  # on a grid, as item_stats sums are
    st.sampled_from([0.0, -0.0, 2.0**-60, 2.0**-61, 2.0**62, -(2.0**63), 2.0**63, 5e-324, -5e-324]),
)
_INTS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-300, 300),
    st.sampled_from([-(2**63), 2**63 - 1, 0, -1, 127, 128, -129, 32767, 32768, 2**31, -(2**31) - 1]),
)


@st.composite
def _tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.sampled_from([(), (0,), (1,), (7,), (3, 5), (40,)]))
    count = int(np.prod(shape))
    if draw(st.booleans()):
        values = draw(st.lists(_FLOATS, min_size=count, max_size=count))
        tensor = torch.tensor(values, dtype=torch.float64).reshape(shape)
        if draw(st.booleans()):  # NaN payloads and signs: the bits, not the values, must come back
            bits = tensor.view(torch.int64)
            bits[(torch.arange(count) % 3 == 0).reshape(shape)] = draw(st.sampled_from([-1, 0x7FF0000000000001]))
        return tensor
    values = draw(st.lists(_INTS, min_size=count, max_size=count))
    if draw(st.booleans()):
        values.sort()  # ascending: an index
    return torch.tensor(values, dtype=torch.int64).reshape(shape)


@settings(max_examples=300, deadline=None)
@given(tensors=st.lists(_tensors(), min_size=1, max_size=5))
def test_any_8_byte_statistics_come_back_bit_for_bit(tensors):
    payload = _statistics(**{f"t{i}": t for i, t in enumerate(tensors)})
    data = encode_checkpoint(payload)
    assert data.startswith(MAGIC_5)
    assert _same(decode_checkpoint(data), payload)


def test_negative_zeros_beside_a_grid_come_back_and_too_many_keep_the_tensor_raw():
    few = torch.tensor([0.5, -0.0, 0.25, -0.0, 0.0, -1.75], dtype=torch.float64)
    many = torch.zeros(10_000, dtype=torch.float64).neg_()  # 5000 -0.0: more than a grid keeps beside it
    many[::2] = 0.5
    data = encode_checkpoint(_statistics(few=few, many=many))
    assert [p[0] for p in _parts(data)] == ["grid", "raw"]
    assert _parts(data)[0][2] == [2, [1, 3]]  # 2**-2 grid; -0.0 at indices 1 and 3
    back = decode_checkpoint(data)["model"]
    assert _bits(back["few"]) == _bits(few)
    assert _bits(back["many"]) == _bits(many)


def test_a_grid_the_first_values_do_not_show_is_found_on_the_whole_tensor():
    values = torch.ones(10_000, dtype=torch.float64)
    values[-1] = 2.0**-33  # past the sample the encoder looks at first
    data = encode_checkpoint(_statistics(v=values))
    assert _parts(data)[0][:3] == ["grid", "int64", [33, []]]
    assert _bits(decode_checkpoint(data)["model"]["v"]) == _bits(values)


def test_int64_values_whose_differences_overflow_stay_plain_and_an_ascending_index_is_differenced():
    values = torch.tensor([-(2**63), 2**63 - 1, -(2**63), 0, 2**63 - 1], dtype=torch.int64)
    ascending = torch.arange(0, 10**6, 3, dtype=torch.int64) + 2**40
    data = encode_checkpoint(_statistics(values=values, ascending=ascending))
    assert [p[:2] for p in _parts(data)] == [["int", "int64"], ["delta", "int8"]]
    back = decode_checkpoint(data)["model"]
    assert _bits(back["values"]) == _bits(values)
    assert _bits(back["ascending"]) == _bits(ascending)


def test_a_payload_format_5_cannot_hold_keeps_format_3():
    strided = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()  # not contiguous
    data = encode_checkpoint(_statistics(w=strided))
    assert data.startswith(b"EXPUNGE-CKPT-3\n")
    assert _bits(decode_checkpoint(data)["model"]["w"]) == _bits(strided)


def test_float32_statistics_keep_format_2():
    data = encode_checkpoint(_statistics(w=torch.ones(3)))
    assert data.startswith(b"EXPUNGE-CKPT-2\n")


def test_a_flipped_bit_anywhere_is_a_typed_error_never_other_sums():
    _, made = _item_stats()
    data = made["data"]
    for offset in sorted({*range(HEAD_5 + 2), *range(0, len(data), max(1, len(data) // 400)), len(data) - 1}):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        with pytest.raises(StorageCorruptError, match="Restore it from backup"):
            decode_checkpoint(bytes(damaged))


@pytest.mark.parametrize("length", [0, 1, len(MAGIC_5), len(MAGIC_5) + 8, HEAD_5 - 1, HEAD_5, HEAD_5 + 10, -1])
def test_truncated_bytes_are_a_typed_error(length):
    _, made = _item_stats()
    data = made["data"]
    with pytest.raises(StorageCorruptError):
        decode_checkpoint(data[: length if length >= 0 else len(data) - 1])


def test_a_reader_older_than_format_5_fails_typed_on_its_bytes(monkeypatch):
    _, made = _item_stats()
    monkeypatch.setattr(checkpoint_format, "_MAGIC_PACKED", b"a magic no bytes start with")
    with pytest.raises(StorageCorruptError, match="Restore it from backup"):
        decode_checkpoint(made["data"])


def _forged(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """``data`` with its header edited by ``edit`` and a digest that matches again (a careful forger)."""
    (size, _, low_size, packed_low_size), high = _high_frame(data)
    header = json.loads(high[size - low_size :])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    packed_high = pa.Codec("zstd", compression_level=1).compress(high[: size - low_size] + text, asbytes=True)
    fields = FIELDS_5.pack(size, len(text), low_size, packed_low_size)
    packed = data[HEAD_5 : HEAD_5 + packed_low_size] + packed_high
    return MAGIC_5 + fields + hashlib.sha256(fields + packed).digest() + packed


def _set(path: tuple, value: object):  # type: ignore[no-untyped-def]
    def edit(header: dict) -> None:
        node = header["parts"]
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _set((0, 0), "zigzag"),  # a kind format 5 does not write
        _set((0, 1), "int4"),  # a stored dtype it does not write
        _set((0, 1), "int64"),  # wider than its bytes
        lambda header: header["parts"][5].__setitem__(1, "int8"),  # narrower (an int32 grid): bytes left over
        _set((3, 2), 2**63),  # a first value outside int64
        _set((3, 2), None),  # no first value
        _set((5, 2), [61, []]),  # a grid finer than 2**-60
        _set((5, 2), [20, [10**9]]),  # a -0.0 past the tensor
        _set((5, 2), [2.5, []]),  # not an integer grid
        _set((0, 0), "grid"),  # a grid for an int64 tensor
        _set((0, 0), "raw"),  # raw bytes that name a stored dtype
        lambda header: header["parts"].pop(),  # a part missing
    ],
)
def test_a_header_that_does_not_fit_its_bytes_is_a_typed_error_even_with_a_valid_digest(edit):
    _, made = _item_stats()
    with pytest.raises(StorageCorruptError):
        decode_checkpoint(_forged(made["data"], edit))


@pytest.mark.parametrize("field", [0, 1, 2, 3])
@pytest.mark.parametrize("change", [-1, 1, 2**40])
def test_lengths_that_do_not_fit_the_frames_are_a_typed_error_even_with_a_valid_digest(field, change):
    _, made = _item_stats()
    data = made["data"]
    fields = list(FIELDS_5.unpack(data[len(MAGIC_5) : len(MAGIC_5) + FIELDS_5.size]))
    fields[field] = max(0, fields[field] + change)
    packed_fields = FIELDS_5.pack(*fields)
    packed = data[HEAD_5:]
    forged = MAGIC_5 + packed_fields + hashlib.sha256(packed_fields + packed).digest() + packed
    with pytest.raises(StorageCorruptError):
        decode_checkpoint(forged)


def test_same_checkpoint_tells_the_same_state_in_another_format_from_another_state():
    _, made = _item_stats()
    data = made["data"]
    payload = decode_checkpoint(data)
    assert same_checkpoint(_format_3(payload), data)  # what a store written before format 5 holds
    assert same_checkpoint(_format_2(payload), data)
    other = decode_checkpoint(data)
    other["model"]["pair_product"][0] = -other["model"]["pair_product"][0]
    assert not same_checkpoint(encode_checkpoint(other), data)
    signed_zero = _statistics(z=torch.tensor([0.0], dtype=torch.float64))
    negative_zero = _statistics(z=torch.tensor([-0.0], dtype=torch.float64))
    assert not same_checkpoint(encode_checkpoint(signed_zero), encode_checkpoint(negative_zero))  # bits, not ==
    assert not same_checkpoint(data[:-1], data)  # damaged: never the same
    renamed = decode_checkpoint(data)
    renamed["lineage"] = ["a", "b", "x"]
    assert not same_checkpoint(encode_checkpoint(renamed), data)
