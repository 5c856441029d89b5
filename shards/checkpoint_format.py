"""Stored checkpoint bytes: formats 1-5, encoded and decoded losslessly (weights and Adam state bit for bit).

``encode_checkpoint`` writes format 4 for a gradient model's payload (raw tensor bytes and a JSON
header), format 5 for 8-byte statistics without optimizer state (each tensor narrowed exactly
before compression), format 2 otherwise; ``decode_checkpoint`` reads every format. Each format is
described beside its magic below.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from expunge.shards.errors import StorageCorruptError

__all__ = ["decode_checkpoint", "encode_checkpoint", "same_checkpoint"]

#: Stored checkpoint format 2: this magic, the length of the ``torch.save`` bytes (8 bytes,
#: little-endian), the sha256 of the length and the compressed bytes (32 bytes; checked before
#: anything is decompressed, so a flipped bit is a typed error, never other weights), then the
#: ``torch.save`` bytes split into 4 byte lanes (byte 0 of every 4-byte word, then byte 1, ...;
#: float32 exponents line up) and compressed with zstd. Lossless: decoding gives the
#: ``torch.save`` bytes back, so weights and Adam state load bit for bit. Format 1 (the plain
#: ``torch.save`` zip, written before issue 12) is still read; it has no checksum.
#:
#: Format 3 (issue 22) is format 2 with the lane width in one byte after the magic (covered by
#: the sha256 too): 8 lanes for a payload of 8-byte tensors only and no optimizer state (the
#: int64 / float64 sums of a statistics model, e.g. ``item_stats``), where 4 lanes split each
#: value's high and low halves apart. About 2x less encoding time and 15% fewer bytes on
#: item_stats's shard sums; gradient models (float32 weights, Adam state) kept format 2, byte
#: for byte, until format 4. Every format is read.
#:
#: Format 4 (issue 22) holds a gradient model's payload (one with optimizer state) without
#: ``torch.save``: this magic; the lane width (1 byte) and the lengths of the header, of the tensor
#: bytes and of the first zstd frame (8 bytes each, little-endian); the sha256 of those and of both
#: frames (32 bytes); then two zstd frames. Every tensor's bytes, each at a multiple of 8, are split
#: into byte lanes; the first frame holds the low lanes (fast level: mantissa bytes barely compress),
#: the second the high lane (float32 exponents) and the header (JSON: the payload with each tensor
#: replaced by its dtype and shape; tuples, non-string keys and a state dict's ``_metadata`` tagged,
#: so they come back as they went in; each tensor's place). About 2x cheaper to write and 3x cheaper
#: to read than format 2 on an MF shard (a shard's erasure writes one per retrained slice, the
#: monolith one in all), and no larger. A payload it cannot hold exactly (a tensor subclass, a
#: non-CPU or strided tensor, another Python type) keeps format 2. A reader older than format 4 takes
#: its bytes for format 1 and fails typed (StorageCorruptError).
_MAGIC = b"EXPUNGE-CKPT-2\n"
_MAGIC_LANES = b"EXPUNGE-CKPT-3\n"
_MAGIC_RAW = b"EXPUNGE-CKPT-4\n"
#: Format 5 holds a payload without optimizer state whose tensors are all 8 bytes wide (the int64 /
#: float64 sums of a statistics model, e.g. ``item_stats``; format 3 held them before) without
#: ``torch.save``: this magic; the lengths of the tensor bytes, of the header, of the fast lanes and
#: of the first zstd frame (8 bytes each, little-endian); the sha256 of those and of both frames (32
#: bytes; checked before anything is decompressed); then two zstd frames: the fast lanes (level -3),
#: then the other lanes followed by the header (level 1). The header is format 4's (JSON: the payload
#: with each tensor replaced by its dtype and shape) with, in place of the tensors' places, each
#: tensor's part ``[kind, stored dtype, parameter]``, in tensor order. Each part's stored values are
#: split into byte lanes (byte 0 of every value, then byte 1, ...); a ``grid`` or ``raw`` part's lanes
#: but its top one are fast lanes (mantissa-like bytes that barely compress), in the first frame in
#: part order; every other lane is in the second, in part order. Kinds, each exact by construction or
#: checked bit for bit when written:
#:   ``raw``: the tensor's own bytes (any dtype; stored dtype and parameter null);
#:   ``int``: an int64 tensor's values in the narrowest of int8/16/32/64 that holds them all;
#:   ``delta``: an int64 tensor's first differences (0, then each value minus the one before; written
#:     only where none overflows int64) narrowed so; parameter: the first value; decoding puts it in
#:     place of the 0 and takes the cumulative sum (an ascending index: pair_index, subject_offsets);
#:   ``grid``: a float64 tensor whose values are all integers times 2**-k (0 <= k <= 60), as those
#:     integers narrowed so and zigzag-coded (``(n << 1) ^ (n >> width - 1)``: a small magnitude of
#:     either sign keeps its high bytes 0); parameter ``[k, [indices of -0.0]]``; decoding is
#:     ``float64(n) * 2**-k``, then -0.0 at those indices. The encoder decodes it and keeps it only
#:     when every value comes back bit for bit (NaN, infinities, a value off every grid: ``raw``).
#: On a 1/8 ML-100K item_stats shard: about 14% fewer bytes than format 3, and 2-3x less CPU to
#: write and 2-3x less to read (dev/perf/item_stats_checkpoint.py prints both side by side).
#: A reader older than format 5 takes its bytes for format 1 and fails typed (StorageCorruptError).
_MAGIC_PACKED = b"EXPUNGE-CKPT-5\n"
_ZSTD_LEVEL = 1  # level 3 saves 4% on item_stats sums (2 MB) and costs 3x the time (56 ms vs 18 ms per shard)
#: Format 4's low byte lanes (float mantissas, near-random but for zeros): level -3 gives within 1% of
#: level 1's bytes there in 40% of its time (MF shard checkpoint: 0.27 vs 0.67 ms for 3 lanes of 180 KB).
_ZSTD_LOW_LANES = -3
_LANES = 4
_WIDE_LANES = 8


def _to_lanes(raw: bytes, lanes: int = _LANES) -> bytes:
    whole = len(raw) // lanes * lanes
    words = np.frombuffer(raw, dtype=np.uint8, count=whole).reshape(-1, lanes)
    return words.T.tobytes() + raw[whole:]


def _from_lanes(shuffled: bytes, lanes: int = _LANES) -> bytes:
    whole = len(shuffled) // lanes * lanes
    grid = np.frombuffer(shuffled, dtype=np.uint8, count=whole).reshape(lanes, -1)
    return grid.T.tobytes() + shuffled[whole:]


def _lane_width(payload: dict[str, Any]) -> int:
    """8 for a payload whose tensors are all 8 bytes wide and which has no optimizer state, else 4."""
    model = payload.get("model")
    if payload.get("optimizer") is not None or not isinstance(model, dict) or not model:
        return _LANES
    wide = all(isinstance(t, torch.Tensor) and t.element_size() == _WIDE_LANES for t in model.values())
    return _WIDE_LANES if wide else _LANES


_RAW_DTYPES = {
    name: getattr(torch, name)
    for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
_RAW_NAMES = {dtype: name for name, dtype in _RAW_DTYPES.items()}
_RAW_ALIGN = 8  # each tensor's bytes start at a multiple of this: any dtype views them in place


class _NotRaw(Exception):
    """A payload value format 4 cannot hold exactly (its encoder falls back to format 2)."""


def _skeleton(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` as JSON, tensors appended to ``tensors`` and replaced by ``{"t": [index, dtype, shape]}``.

    Tagged so that decoding gives back the same types: ``{"u": [...]}`` a tuple, ``{"d": [[k, v], ...]}``
    a dict (any key type, in order), ``{"o": [[k, v], ...], "m": ...}`` an OrderedDict and its
    ``_metadata`` (a module's state dict). Raises ``_NotRaw`` for anything else.
    """
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is torch.Tensor:
        if value.requires_grad or value.device.type != "cpu" or value.dtype not in _RAW_NAMES:
            raise _NotRaw
        if value.layout != torch.strided or not value.is_contiguous() or value.is_conj() or value.is_neg():
            raise _NotRaw
        tensors.append(value)
        return {"t": [len(tensors) - 1, _RAW_NAMES[value.dtype], list(value.shape)]}
    if kind is list:
        if all(type(v) is str for v in value):  # digests and lineage: most of a header, as they are
            return value
        return [_skeleton(v, tensors) for v in value]
    if kind is tuple:
        return {"u": [_skeleton(v, tensors) for v in value]}
    if kind is dict:
        return {"d": [[_skeleton(k, tensors), _skeleton(v, tensors)] for k, v in value.items()]}
    if kind is OrderedDict:
        pairs = [[_skeleton(k, tensors), _skeleton(v, tensors)] for k, v in value.items()]
        metadata = getattr(value, "_metadata", None)
        if metadata is None:
            return {"o": pairs}
        return {"o": pairs, "m": _skeleton(metadata, tensors)}
    raise _NotRaw


def _rebuilt(node: Any, tensors: list[torch.Tensor]) -> Any:
    """The value ``_skeleton`` described, with ``tensors`` in place (ValueError, KeyError, TypeError: not one)."""
    if isinstance(node, list):
        return [_rebuilt(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "t" in node:
        return tensors[node["t"][0]]
    if "u" in node:
        return tuple(_rebuilt(v, tensors) for v in node["u"])
    if "d" in node:
        return {_rebuilt(k, tensors): _rebuilt(v, tensors) for k, v in node["d"]}
    if "o" in node:
        ordered = OrderedDict((_rebuilt(k, tensors), _rebuilt(v, tensors)) for k, v in node["o"])
        if "m" in node:
            ordered._metadata = _rebuilt(node["m"], tensors)  # type: ignore[attr-defined]
        return ordered
    raise ValueError(f"a header node {sorted(node)!r} is not one format 4 writes")


def _encode_raw(payload: dict[str, Any]) -> bytes:
    """Format 4 bytes of ``payload`` (raises ``_NotRaw`` when it holds a value format 4 cannot)."""
    tensors: list[torch.Tensor] = []
    skeleton = _skeleton(payload, tensors)
    pieces: list[torch.Tensor] = []
    places: list[int] = []
    offset = 0
    for tensor in tensors:
        places.append(offset)
        flat = _byte_view(tensor)
        pad = -flat.numel() % _RAW_ALIGN
        pieces.append(flat)
        if pad:
            pieces.append(torch.zeros(pad, dtype=torch.uint8))
        offset += flat.numel() + pad
    header = json.dumps({"payload": skeleton, "places": places}, separators=(",", ":")).encode()
    blob = torch.cat(pieces).numpy() if pieces else np.zeros(0, np.uint8)
    lanes = _lane_width(payload)
    width = len(blob) // lanes  # the length is a multiple of 8
    body = np.empty(len(blob) + len(header), np.uint8)  # the low lanes, the high lane, the header
    body[: len(blob)].reshape(lanes, width)[:] = blob.reshape(width, lanes).T
    body[len(blob) :] = np.frombuffer(header, np.uint8)
    low = (lanes - 1) * width
    return _framed(
        _MAGIC_RAW,
        body,
        low,
        lambda packed_low: bytes([lanes]) + struct.pack("<QQQ", len(header), len(blob), packed_low),
    )


def _framed(magic: bytes, body: np.ndarray, low: int, fields: Callable[[int], bytes]) -> bytes:
    """Formats 4 and 5 on disk: ``magic``, ``fields(length of the first frame)``, the sha256 of those
    fields and both frames, then ``body[:low]`` (fast zstd level) and ``body[low:]`` (level 1) as two frames."""
    packed_low = pa.Codec("zstd", compression_level=_ZSTD_LOW_LANES).compress(body[:low], asbytes=True)
    packed_high = pa.Codec("zstd", compression_level=_ZSTD_LEVEL).compress(body[low:], asbytes=True)
    stated = fields(len(packed_low))
    digest = hashlib.sha256(stated)
    digest.update(packed_low)
    digest.update(packed_high)
    return b"".join((magic, stated, digest.digest(), packed_low, packed_high))


def _decode_raw(data: bytes) -> dict[str, Any]:
    """The payload of format 4 bytes (ValueError, KeyError, TypeError, IndexError, struct.error: damaged)."""
    start = len(_MAGIC_RAW)
    view = memoryview(data)
    fields = view[start : start + 25]
    lanes = fields[0] if len(fields) else 0
    header_size, blob_size, packed_low_size = struct.unpack("<QQQ", fields[1:])
    packed = start + 25 + 32
    digest = hashlib.sha256(fields)
    digest.update(view[packed:])
    if digest.digest() != view[start + 25 : packed]:
        raise ValueError("its sha256 does not match: the stored bytes changed after they were written")
    if lanes not in (_LANES, _WIDE_LANES) or blob_size % _RAW_ALIGN:
        raise ValueError(f"its lane width {lanes} or tensor length {blob_size} is not one Expunge writes")
    width = blob_size // lanes
    codec = pa.Codec("zstd")
    low = codec.decompress(view[packed : packed + packed_low_size], decompressed_size=(lanes - 1) * width)
    high = codec.decompress(view[packed + packed_low_size :], decompressed_size=width + header_size)
    header = json.loads(high.slice(width).to_pybytes())
    grid = np.empty((lanes, width), np.uint8)
    grid[: lanes - 1] = np.frombuffer(low, np.uint8).reshape(lanes - 1, width)
    grid[lanes - 1] = np.frombuffer(high, np.uint8, count=width)
    blob = torch.from_numpy(np.ascontiguousarray(grid.T).reshape(-1))  # writable, owns its bytes
    tensors: list[torch.Tensor] = []
    for place, (index, name, shape) in zip(header["places"], _tensor_nodes(header["payload"]), strict=True):
        dtype = _RAW_DTYPES[name]
        count = math.prod(shape)
        size = count * dtype.itemsize
        if index != len(tensors) or not 0 <= place <= blob_size - size or place % _RAW_ALIGN:
            raise ValueError("its tensor table does not fit its bytes")
        tensors.append(blob[place : place + size].view(dtype).reshape(shape))
    payload = _rebuilt(header["payload"], tensors)
    if not isinstance(payload, dict):
        raise ValueError("it does not hold a payload")
    return payload


def _tensor_nodes(node: Any) -> Iterator[tuple[int, str, list[int]]]:
    """The ``[index, dtype, shape]`` of every tensor in a header, in the order ``_skeleton`` appended them."""
    if isinstance(node, list):
        for value in node:
            yield from _tensor_nodes(value)
    elif isinstance(node, dict):
        if "t" in node:
            index, name, shape = node["t"]
            yield int(index), str(name), [int(n) for n in shape]
            return
        for key in ("u", "d", "o", "m"):  # the order _skeleton visits them
            if key in node:
                yield from _tensor_nodes(node[key])


_NARROW = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))
_NARROW_NAMES = {dtype.name: dtype for dtype in _NARROW}
_GRID_BITS = 60  # the finest grid format 5 tries: 2**-60 (a float64 tensor off it stays raw)
_GRID_SAMPLE = 4096  # values whose grid is computed first; the whole tensor checks it
_NEGATIVE_ZEROS = 4096  # at most this many -0.0 kept beside a grid (more: the tensor stays raw)
_GRID_CHUNK = 1 << 16  # values the grid check decodes at a time
_PACKED_FIELDS = struct.Struct("<QQQQ")  # format 5: lengths of the tensor bytes, header, fast lanes, fast frame


_NARROW_BOUNDS = [(dtype, int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)) for dtype in _NARROW]
_UNSIGNED = {dtype: np.dtype(f"uint{dtype.itemsize * 8}") for dtype in _NARROW}


def _narrowest(low: float, high: float) -> np.dtype[Any]:
    """The narrowest of int8/16/32/64 holding every integer in ``[low, high]`` (int64 past them)."""
    for dtype, least, most in _NARROW_BOUNDS[:-1]:
        if least <= low and high <= most:
            return dtype
    return _NARROW[-1]


def _zigzag(signed: np.ndarray) -> np.ndarray:
    """``(n << 1) ^ (n >> width - 1)`` of each integer, in place: 0, -1, 1, -2, ... become 0, 1, 2, 3, ..."""
    unsigned = _UNSIGNED[signed.dtype]
    sign = (signed >> (signed.dtype.itemsize * 8 - 1)).view(unsigned)
    bits = signed.view(unsigned)
    bits <<= unsigned.type(1)
    bits ^= sign
    return signed


def _unzigzag(coded: np.ndarray) -> np.ndarray:
    """The integers ``_zigzag`` coded, in place (``coded`` must be writable)."""
    unsigned = _UNSIGNED[coded.dtype]
    bits = coded.view(unsigned)
    sign = bits & unsigned.type(1)
    np.negative(sign, out=sign)  # 0 or all ones
    bits >>= unsigned.type(1)
    bits ^= sign
    return coded


def _grid_bits(values: np.ndarray) -> int | None:
    """The least ``k`` making every value of ``values`` (float64) an integer times ``2**-k``; None past 60 or non-finite."""
    with np.errstate(all="ignore"):  # NaN and infinities: refused just below
        fraction, exponent = np.frexp(values)  # value = fraction * 2**exponent, 0.5 <= |fraction| < 1
        whole = np.ldexp(fraction, 53)  # the significand as an integer (exact), NaN and infinities as they are
    if not np.isfinite(whole).all():
        return None
    integers = whole.astype(np.int64)
    integers &= -integers  # its lowest set bit (0 for a zero)
    grains = np.ldexp(integers.astype(np.float64), exponent - 53)  # each value's lowest bit: a power of two
    grains = grains[grains > 0]
    if not len(grains):
        return 0
    least = max(0, 1 - math.frexp(float(grains.min()))[1])
    return least if least <= _GRID_BITS else None


def _from_grid(stored: np.ndarray, bits: int, negative_zeros: list[int]) -> np.ndarray:
    """Format 5's ``grid`` decoding: ``float64(stored) * 2**-bits``, then -0.0 at ``negative_zeros``."""
    values = np.multiply(stored, 2.0**-bits, dtype=np.float64)  # a power of two: exact; what the encoder checked
    if negative_zeros:
        values[negative_zeros] = -0.0
    return values


def _off_grid(stored: np.ndarray, bits: int, values: np.ndarray) -> np.ndarray:
    """Where ``_from_grid(stored, bits, [])`` differs from ``values`` in any bit (indices, ascending).

    A chunk at a time (64 Ki values: the decoded chunk stays in cache); stops past ``_NEGATIVE_ZEROS``.
    """
    wrong: list[np.ndarray] = []
    found = 0
    for start in range(0, len(values), _GRID_CHUNK):
        chunk = slice(start, start + _GRID_CHUNK)
        back = _from_grid(stored[chunk], bits, [])
        differ = np.flatnonzero(back.view(np.uint64) != values[chunk].view(np.uint64))
        if len(differ):
            wrong.append(differ + start)
            found += len(differ)
            if found > _NEGATIVE_ZEROS:
                break
    return np.concatenate(wrong) if wrong else np.zeros(0, np.int64)


def _grid_part(values: np.ndarray) -> tuple[np.ndarray, list[Any]] | None:
    """``values`` (float64) as grid integers and ``[k, negative zero indices]``; None when not exact."""
    bits = _grid_bits(values[:_GRID_SAMPLE])
    if bits is None:
        return None
    for attempt in range(2):
        with np.errstate(all="ignore"):
            low, high = float(values.min()) * 2.0**bits, float(values.max()) * 2.0**bits
            if not -(2.0**63) <= low <= high < 2.0**63:  # NaN fails too
                return None
            stored = np.empty(len(values), _narrowest(math.floor(low), math.ceil(high)))
            np.multiply(values, 2.0**bits, out=stored, casting="unsafe")  # truncated: the check below sees it
        wrong = _off_grid(stored, bits, values)
        negative_zeros = wrong.tolist()
        if len(wrong) <= _NEGATIVE_ZEROS and not np.any(values[wrong]) and np.signbit(values[wrong]).all():
            return _zigzag(stored), [bits, negative_zeros]  # every value back but -0.0, written at these indices
        if attempt or (bits := _grid_bits(values)) is None:  # the sample's grid is too coarse: the whole one
            return None
    return None


def _int_part(values: np.ndarray) -> tuple[str, np.ndarray]:
    """``values`` (int64, 2 or more) as ``int`` or ``delta`` narrowed integers (the narrower; delta when ascending and as narrow)."""
    least, most = int(values.min()), int(values.max())
    plain = _narrowest(least, most)
    if plain.itemsize == 1 or most - least > np.iinfo(np.int64).max:  # narrow already, or a difference overflows
        return "int", values.astype(plain)
    delta = np.empty_like(values)  # 0, then each value minus the one before (exact: none overflows)
    delta[0] = 0
    np.subtract(values[1:], values[:-1], out=delta[1:])
    low, high = int(delta.min()), int(delta.max())
    width = _narrowest(low, high)
    if width.itemsize < plain.itemsize or (width.itemsize == plain.itemsize and low >= 0):
        return "delta", delta.astype(width)
    return "int", values.astype(plain)


def _byte_view(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s bytes as a flat uint8 tensor; an empty one whatever its strides (numpy's empty arrays
    have stride 0, which ``view`` refuses)."""
    if tensor.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return tensor.reshape(-1).view(torch.uint8)


def _part(tensor: torch.Tensor) -> tuple[list[Any], np.ndarray]:
    """Format 5's part of ``tensor``: ``[kind, stored dtype, parameter]`` and the stored values (1-D)."""
    if tensor.numel() > 1 and tensor.dtype == torch.int64:
        values = tensor.reshape(-1).numpy()
        kind, stored = _int_part(values)
        return [kind, stored.dtype.name, int(values[0]) if kind == "delta" else None], stored
    if tensor.numel() and tensor.dtype == torch.float64:
        grid = _grid_part(tensor.reshape(-1).numpy())
        if grid is not None:
            return ["grid", grid[0].dtype.name, grid[1]], grid[0]
    flat = _byte_view(tensor).numpy().reshape(tensor.numel(), tensor.element_size())
    return ["raw", None, None], flat


def _noisy(kind: str, width: int) -> bool:
    """Whether a part's low byte lanes go to format 5's fast frame: a grid's or a raw tensor's (mantissa-like)."""
    return kind in ("grid", "raw") and width > 1


def _encode_packed(payload: dict[str, Any]) -> bytes:
    """Format 5 bytes of ``payload`` (raises ``_NotRaw`` when it holds a value the header cannot)."""
    tensors: list[torch.Tensor] = []
    skeleton = _skeleton(payload, tensors)
    parts = [_part(tensor) for tensor in tensors]
    header = json.dumps({"payload": skeleton, "parts": [p for p, _ in parts]}, separators=(",", ":")).encode()
    shapes = [(len(stored), stored.nbytes // len(stored) if len(stored) else 1) for _, stored in parts]
    size = sum(stored.nbytes for _, stored in parts)
    low_size = sum(n * (w - 1) for (part, _), (n, w) in zip(parts, shapes, strict=True) if _noisy(part[0], w))
    body = np.empty(size + len(header), np.uint8)  # the fast frame's lanes; the others, then the header
    low, high = 0, low_size
    for (part, stored), (count, width) in zip(parts, shapes, strict=True):
        lanes = stored.view(np.uint8).reshape(count, width).T  # (width, count): byte b of every value
        if _noisy(part[0], width):
            body[low : low + count * (width - 1)].reshape(width - 1, count)[:] = lanes[:-1]
            body[high : high + count] = lanes[-1]
            low, high = low + count * (width - 1), high + count
        else:
            body[high : high + count * width].reshape(width, count)[:] = lanes
            high += count * width
    body[size:] = np.frombuffer(header, np.uint8)
    return _framed(
        _MAGIC_PACKED, body, low_size, lambda packed_low: _PACKED_FIELDS.pack(size, len(header), low_size, packed_low)
    )


def _decode_packed(data: bytes) -> dict[str, Any]:
    """The payload of format 5 bytes (ValueError, KeyError, TypeError, IndexError, struct.error: damaged)."""
    start = len(_MAGIC_PACKED)
    view = memoryview(data)
    fields = view[start : start + _PACKED_FIELDS.size]
    size, header_size, low_size, packed_low_size = _PACKED_FIELDS.unpack(fields)
    packed = start + _PACKED_FIELDS.size + 32
    digest = hashlib.sha256(fields)
    digest.update(view[packed:])
    if digest.digest() != view[packed - 32 : packed]:
        raise ValueError("its sha256 does not match: the stored bytes changed after they were written")
    if low_size > size:
        raise ValueError("its fast frame is longer than its tensor bytes")
    codec = pa.Codec("zstd")
    low = codec.decompress(view[packed : packed + packed_low_size], decompressed_size=low_size)
    high = codec.decompress(view[packed + packed_low_size :], decompressed_size=size - low_size + header_size)
    header = json.loads(high.slice(size - low_size).to_pybytes())
    low_lanes = np.frombuffer(low, np.uint8, count=low_size)
    high_lanes = np.frombuffer(high, np.uint8, count=size - low_size)
    tensors: list[torch.Tensor] = []
    low_at = high_at = 0
    for (index, name, shape), (kind, stored_name, parameter) in zip(
        _tensor_nodes(header["payload"]), header["parts"], strict=True
    ):
        dtype = _RAW_DTYPES[name]
        if index != len(tensors) or any(n < 0 for n in shape):
            raise ValueError("its tensor table does not fit its bytes")
        count = math.prod(shape)
        if (kind == "raw") != (stored_name is None):
            raise ValueError(f"a part {kind!r} stored as {stored_name!r} is not one format 5 writes")
        stored_type = _NARROW_NAMES[stored_name] if stored_name is not None else None
        width = stored_type.itemsize if stored_type is not None else dtype.itemsize
        fast = width - 1 if _noisy(kind, width) else 0
        lanes = list(low_lanes[low_at : low_at + count * fast].reshape(fast, count))
        lanes += list(high_lanes[high_at : high_at + count * (width - fast)].reshape(width - fast, count))
        low_at, high_at = low_at + count * fast, high_at + count * (width - fast)
        if low_at > low_size or high_at > size - low_size:
            raise ValueError("its tensor table does not fit its bytes")
        tensors.append(_unpart(kind, dtype, stored_type, parameter, lanes, count).reshape(shape))
    if (low_at, high_at) != (low_size, size - low_size):
        raise ValueError("its tensor table does not fit its bytes")
    payload = _rebuilt(header["payload"], tensors)
    if not isinstance(payload, dict):
        raise ValueError("it does not hold a payload")
    return payload


def _unpart(
    kind: str,
    dtype: torch.dtype,
    stored_type: np.dtype[Any] | None,
    parameter: Any,
    lanes: list[np.ndarray],
    count: int,
) -> torch.Tensor:
    """The 1-D tensor of a format 5 part from its byte ``lanes`` (each ``count`` bytes, read-only)."""
    if (stored_type is None) != (kind == "raw") or (kind == "raw" and parameter is not None):
        raise ValueError(f"a part {kind!r} is not one format 5 writes")
    if stored_type is not None and len(lanes) == 1 and kind in ("int", "delta"):
        stored = lanes[0].view(stored_type)  # read-only: widening below copies it
    else:
        values = np.empty((count, len(lanes)), np.uint8)  # writable, owns its bytes
        for index, lane in enumerate(lanes):  # a column at a time: 3x quicker than a transposed copy at 4 lanes
            values[:, index] = lane
        if stored_type is None:
            return torch.from_numpy(values.reshape(-1)).view(dtype)
        stored = values.view(stored_type).reshape(-1)
    if kind == "int" and dtype == torch.int64 and parameter is None:
        return torch.from_numpy(stored.astype(np.int64))
    if kind == "delta" and dtype == torch.int64 and type(parameter) is int and count:
        wide = torch.from_numpy(stored.astype(np.int64))
        wide[0] = parameter  # the first value (an int64: torch refuses one outside its range)
        return wide.cumsum_(0)  # 6x quicker than numpy's cumsum
    if kind == "grid" and dtype == torch.float64:
        bits, negative_zeros = parameter
        if type(bits) is not int or not 0 <= bits <= _GRID_BITS:
            raise ValueError(f"its grid 2**-{bits} is not one format 5 writes")
        if not all(type(i) is int and 0 <= i < count for i in negative_zeros):
            raise ValueError("its -0.0 indices do not fit its tensor")
        return torch.from_numpy(_from_grid(_unzigzag(stored), bits, negative_zeros))
    raise ValueError(f"a part {kind!r} of {dtype} is not one format 5 writes")


def encode_checkpoint(payload: dict[str, Any]) -> bytes:
    """The stored bytes of a checkpoint payload.

    Format 4 (raw tensors, byte-lane split, zstd) for a payload with optimizer state that it holds
    exactly; format 5 (each tensor narrowed exactly, byte-lane split, zstd) for 8-byte statistics
    without optimizer state that it holds; otherwise ``torch.save`` of it, byte-lane split, zstd:
    format 3 (8 lanes) for 8-byte statistics format 5 cannot hold, format 2 (4 lanes) for the rest.
    """
    lanes = _lane_width(payload)
    if payload.get("optimizer") is not None or lanes == _WIDE_LANES:
        try:
            return _encode_raw(payload) if lanes == _LANES else _encode_packed(payload)
        except _NotRaw:
            pass
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    raw = buffer.getvalue()
    packed = pa.Codec("zstd", compression_level=_ZSTD_LEVEL).compress(_to_lanes(raw, lanes), asbytes=True)
    size = len(raw).to_bytes(8, "little")
    if lanes == _LANES:
        return _MAGIC + size + hashlib.sha256(size + packed).digest() + packed
    width = bytes([lanes])
    return _MAGIC_LANES + width + size + hashlib.sha256(width + size + packed).digest() + packed


def _unpack(data: bytes) -> bytes:
    """The ``torch.save`` bytes of stored format 2 or 3 bytes; a format 1 checkpoint as it is (ValueError: damaged)."""
    if data.startswith(_MAGIC):
        header, width, lanes = len(_MAGIC), b"", _LANES
    elif data.startswith(_MAGIC_LANES):
        header, width = len(_MAGIC_LANES) + 1, data[len(_MAGIC_LANES) : len(_MAGIC_LANES) + 1]
        lanes = width[0] if width else 0
        if lanes not in (_LANES, _WIDE_LANES):
            raise ValueError(f"its lane width {lanes} is not one Expunge writes")
    else:
        return data
    size_bytes, digest, packed = data[header : header + 8], data[header + 8 : header + 40], data[header + 40 :]
    if hashlib.sha256(width + size_bytes + packed).digest() != digest:
        raise ValueError("its sha256 does not match: the stored bytes changed after they were written")
    size = int.from_bytes(size_bytes, "little")
    shuffled = pa.Codec("zstd").decompress(packed, decompressed_size=size, asbytes=True)
    return _from_lanes(shuffled, lanes)


def decode_checkpoint(data: bytes) -> dict[str, Any]:
    """The payload of stored checkpoint bytes: ``model``, ``optimizer``, ``layout``, ``steps_done``, ``lineage``.

    Reads formats 5, 4, 3 and 2 (``encode_checkpoint``) and format 1 (a plain ``torch.save`` zip).

    Raises:
        StorageCorruptError: the bytes are no format (truncated, damaged or not a checkpoint).
    """
    payload: dict[str, Any]
    try:
        if data.startswith(_MAGIC_PACKED):
            payload = _decode_packed(data)
        elif data.startswith(_MAGIC_RAW):
            payload = _decode_raw(data)
        else:
            payload = torch.load(io.BytesIO(_unpack(data)), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or not {"model", "layout", "steps_done"} <= payload.keys():
            raise ValueError("it lacks the model, layout or step count")
    except (
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        KeyError,
        IndexError,
        AttributeError,
        MemoryError,
        OverflowError,
        TypeError,  # damaged format-1 bytes: torch's unpickler meets arguments of the wrong kind,
        AssertionError,  # ids of the wrong type,
        struct.error,  # or records cut short (adversarial review: these escaped untyped)
        pickle.UnpicklingError,
        pa.ArrowException,
    ) as exc:
        raise StorageCorruptError(
            f"checkpoint bytes cannot be decoded ({exc}); the object is damaged or not a checkpoint. "
            "Restore it from backup or retrain into a fresh storage URI."
        ) from exc
    return payload


def _same_values(left: Any, right: Any) -> bool:
    """Equal all the way down, types included; tensors by dtype, shape and bits (-0.0 and NaN payloads too)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, torch.Tensor):
        return (
            left.dtype == right.dtype and left.shape == right.shape and torch.equal(_byte_view(left), _byte_view(right))
        )
    if isinstance(left, dict):
        if getattr(left, "_metadata", None) != getattr(right, "_metadata", None):
            return False
        return list(left) == list(right) and all(_same_values(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(_same_values(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def same_checkpoint(stored: bytes, data: bytes) -> bool:
    """Whether two checkpoints' bytes hold the same payload, whatever their formats (1-5).

    Tensors compare by dtype, shape and bits; every other value by type and value. Damaged or
    undecodable bytes on either side: False. For a writer that finds its checkpoint key (which names
    a lineage, not bytes) already stored: bytes of the same state in another format (e.g. format 3
    written before format 5) can stay, so that the sha256 a published version bound still holds.
    """
    if stored == data:
        return True
    try:
        return _same_values(decode_checkpoint(stored), decode_checkpoint(data))
    except StorageCorruptError:
        return False
