"""One item_stats shard checkpoint: format 3 (before) against format 5 (now), encoded and decoded side by side.

    .venv/bin/python dev/perf/item_stats_checkpoint.py /abs/ml-100k.inter [--shards 8] [--shard 0] [--repeats 40]

Builds one shard's ``ItemStatsState`` (every ``shards``-th subject of MovieLens, read by the absolute
path given, as ``expunge.pipelines.benchmark_stream.stream_rows`` gives the rows; subject digests are
64 hex characters, as a store's are), then, alternating old and new in each repeat, encodes its
checkpoint payload (what ``serialize_state`` hands ``encode_checkpoint`` after an erasure: no
optimizer state) and decodes the bytes. "old" is format 3 as ``encode_checkpoint`` wrote it before
format 5 (``torch.save``, 8 byte lanes, zstd level 1) and ``decode_checkpoint`` on those bytes;
"new" is ``encode_checkpoint`` / ``decode_checkpoint`` now. CPU milliseconds (``time.process_time``,
every thread of this process) are medians over the repeats, after one warm-up each, and the least
(``_best``: what a quiet machine gives; a busy one inflates medians). Checks that
both decode to the payload bit for bit (dtype, shape, bytes of every tensor).
``--threads 1`` keeps torch's intra-op pool out: with 2 or more threads its workers spin after each
parallel op (torch.zeros, copy_ of large tensors) and that CPU lands on whatever runs next.
Prints one JSON object: sizes, CPU ms, the old/new ratios, torch threads, load average before/after.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from expunge.orchestrator.config import ItemStatsConfig
from expunge.pipelines.benchmark_stream import stream_rows
from expunge.pipelines.datasets import load_movielens
from expunge.shards import checkpoint_format
from expunge.shards.checkpoint_format import decode_checkpoint, encode_checkpoint
from expunge.shards.models import model_for
from expunge.shards.rows import ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.training import TrainedState


def format_3(payload: dict[str, Any]) -> bytes:
    """What ``encode_checkpoint`` wrote for 8-byte statistics before format 5."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    raw = buffer.getvalue()
    lanes = checkpoint_format._to_lanes(raw, 8)
    packed = pa.Codec("zstd", compression_level=1).compress(lanes, asbytes=True)
    fields = bytes([8]) + len(raw).to_bytes(8, "little")
    return b"EXPUNGE-CKPT-3\n" + fields + hashlib.sha256(fields + packed).digest() + packed


def shard_payload(path: Path, shards: int, shard: int) -> tuple[dict[str, Any], int]:
    rows = stream_rows(load_movielens(path))
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    mine = pa.array(subjects[shard::shards])
    rows = rows.filter(pc.is_in(rows.column(SUBJECT_ID), value_set=mine))
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in rows.column(SUBJECT_ID).to_pylist()]
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests))
    model = model_for(ItemStatsConfig(num_items=int(pc.max(rows.column(ITEM_ID)).as_py()) + 1))
    state = TrainedState(model.contribution(rows), None, 8)
    payload = {
        "model": state.module.state_dict(),
        "optimizer": None,
        "layout": model.layout(state.module),
        "steps_done": state.steps_done,
        "lineage": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(8)],
    }
    return payload, len(rows)


def same_bits(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    def bits(t: torch.Tensor) -> tuple[Any, ...]:
        return t.dtype, tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    return list(left) == list(right) and all(bits(left[k]) == bits(right[k]) for k in left)


def cpu_ms(action: Any) -> float:
    began = time.process_time()
    action()
    return (time.process_time() - began) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    payload, rows = shard_payload(args.data, args.shards, args.shard)
    coders = {"old": (format_3, decode_checkpoint), "new": (encode_checkpoint, decode_checkpoint)}
    stored = {name: encode(payload) for name, (encode, _) in coders.items()}
    exact = {name: same_bits(decode(stored[name])["model"], payload["model"]) for name, (_, decode) in coders.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"encode": [], "decode": []} for name in coders}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, (encode, decode) in coders.items():
            times[name]["encode"].append(cpu_ms(lambda encode=encode: encode(payload)))
            times[name]["decode"].append(cpu_ms(lambda decode=decode, name=name: decode(stored[name])))
    result: dict[str, Any] = {
        "rows": rows,
        "raw_tensor_bytes": sum(t.numel() * t.element_size() for t in payload["model"].values()),
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    for name in coders:
        result[name] = {
            "magic": stored[name][:14].decode(),
            "bytes": len(stored[name]),
            "encode_cpu_ms": round(statistics.median(times[name]["encode"][1:]), 2),
            "decode_cpu_ms": round(statistics.median(times[name]["decode"][1:]), 2),
            "encode_cpu_ms_best": round(min(times[name]["encode"][1:]), 2),
            "decode_cpu_ms_best": round(min(times[name]["decode"][1:]), 2),
            "bit_identical": exact[name],
        }
    result["old_over_new"] = {
        key: round(result["old"][key] / result["new"][key], 2)
        for key in ("bytes", "encode_cpu_ms", "decode_cpu_ms", "encode_cpu_ms_best", "decode_cpu_ms_best")
    }
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
