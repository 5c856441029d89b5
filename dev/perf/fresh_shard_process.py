"""What a fresh shard process pays before its work: imports, then its first call against a second one.

    .venv/bin/python dev/perf/fresh_shard_process.py /abs/ml-100k.inter [--runs 3] [--profile train|erase]

One shard's rows of MovieLens (every 8th user, about 12,500 ratings, 8 slices; MF, dim 32,
20 epochs, batch 512: what each of ``expunge train``'s S=8, R=8 actors gets). Each run starts a
fresh Python process (no Ray) that times, in wall and CPU seconds:

- ``import``: ``import expunge.shards.actor`` less Ray's own import (``import ray`` first, as a
  Ray worker has it loaded), with the modules it added;
- ``train_first`` / ``train_second``: ``Shard.train_staged`` (what ``expunge train``'s actor runs) of the
  same staged rows on shard 0, then shard 1 of the same store (the same work, bit for bit): the first
  call pays the process's one-off costs;
- ``erase_first`` / ``erase_second``: a fresh ``Shard`` of each shard erasing the same subject from
  slice 2 (as ``expunge forget``'s actor does after its state reload), in a second fresh process.

``--profile train``: cProfile the first train call instead and print its top entries (cumulative).
Prints one JSON object: per run and the medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLICES = 8
STAGED_KEY = "staging/rows.parquet"
#: Packages a shard's work never needs, each a few tenths of a second of CPU to import.
HEAVY = ("torch._dynamo", "sympy", "pandas", "scipy", "torch.distributed.fsdp")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(began: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"wall_s": round(wall - began[0], 4), "cpu_s": round(cpu - began[1], 4)}


def _configs():  # type: ignore[no-untyped-def]
    from expunge.shards.config import MFConfig, TrainingConfig

    training = TrainingConfig(model=MFConfig(num_items=1683, embedding_dim=32), epochs=20, batch_size=512)
    return training, training.model


def _slices(data: str):  # type: ignore[no-untyped-def]
    """One shard's slices: every 8th user of the file, each user's rows in one slice."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from expunge.shards.movielens import load_movielens
    from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID

    rows = load_movielens(data)
    users = rows.column(SUBJECT_ID).to_pylist()
    digests = [hashlib.sha256(u.encode()).hexdigest() for u in users]
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests, pa.string()))
    mine = sorted({u for u in users if int(u) % 8 == 0}, key=int)
    cell = {u: i % SLICES for i, u in enumerate(mine)}
    tables = []
    for k in range(SLICES):
        wanted = pa.array([u for u in mine if cell[u] == k], pa.string())
        tables.append(rows.filter(pc.is_in(rows.column(SUBJECT_ID), value_set=wanted)))
    return tables, hashlib.sha256(mine[SLICES * 2 + 2].encode()).hexdigest()  # a subject of slice 2


def _staged(tables) -> bytes:  # type: ignore[no-untyped-def]
    """The staged Parquet object ``Shard.train_staged`` reads: the rows with their slice index."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from expunge.shards.shard import STAGED_SLICE

    parts = [t.append_column(STAGED_SLICE, pa.array([k] * len(t), pa.int32())) for k, t in enumerate(tables)]
    sink = io.BytesIO()
    pq.write_table(pa.concat_tables(parts), sink)
    return sink.getvalue()


def child(mode: str, data: str, store: str, profile: bool) -> dict[str, object]:
    result: dict[str, object] = {}
    import ray  # noqa: F401  (a Ray worker has it loaded before the actor's module)

    before = set(sys.modules)
    began = _clock()
    import expunge.shards.actor  # noqa: F401

    result["import"] = {**_since(began), "modules_added": len(set(sys.modules) - before)}
    from expunge.shards.shard import Shard

    training, model = _configs()
    if mode == "train":
        for name, shard_id in (("train_first", 0), ("train_second", 1)):
            began = _clock()
            shard = Shard(shard_id, store, training, model)
            if profile and shard_id == 0:
                import cProfile
                import io
                import pstats

                profiler = cProfile.Profile()
                profiler.enable()
                shard.train_staged(STAGED_KEY, SLICES)
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
                sys.stderr.write(text.getvalue())
            else:
                shard.train_staged(STAGED_KEY, SLICES)
            result[name] = _since(began)
    else:
        subject = json.loads(Path(store, "subject.json").read_text())
        for name, shard_id in (("erase_first", 0), ("erase_second", 1)):
            began = _clock()
            shard = Shard(shard_id, store, training, model, manifest_version=1)
            if profile and shard_id == 0:
                import cProfile
                import io
                import pstats

                profiler = cProfile.Profile()
                profiler.enable()
                shard.erase([subject], 2, "r")
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
                sys.stderr.write(text.getvalue())
            else:
                shard.erase([subject], 2, "r")
            result[name] = _since(began)
    result[f"{mode}_modules_loaded"] = len(sys.modules)
    result[f"{mode}_heavy_loaded"] = sorted(m for m in HEAVY if m in sys.modules)
    return result


def _run(mode: str, data: str, store: str, profile: bool) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--store", store, *(["--profile", mode] if profile else []), data],
        capture_output=True,
        text=True,
        check=True,
    )
    if profile:
        sys.stderr.write(done.stderr)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", choices=["train", "erase"])
    parser.add_argument("--child", choices=["train", "erase"])
    parser.add_argument("--store")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.store, args.profile == args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="fresh-shard-") as scratch:
        erase_store = str(Path(scratch, "erase-store"))
        # The store the erasures start from: both shards trained on the same slices.
        from expunge.shards.shard import Shard
        from expunge.shards.store import ObjectStore

        training, model = _configs()
        tables, subject = _slices(args.data)
        for shard_id in (0, 1):
            Shard(shard_id, erase_store, training, model).train(tables)
        Path(erase_store, "subject.json").write_text(json.dumps(subject))
        staged = _staged(tables)
        runs = []
        for run in range(args.runs):
            train_store = str(Path(scratch, f"train-{run}"))
            ObjectStore(train_store).put(STAGED_KEY, staged)
            train = _run("train", args.data, train_store, args.profile == "train")
            erase = _run("erase", args.data, erase_store, args.profile == "erase")
            runs.append({**train, **{k: v for k, v in erase.items() if k.startswith("erase")}})
            # An erasure publishes version 2 of each shard; the next run erases from version 1 again.
            for shard_id in (0, 1):
                manifest = Path(erase_store, f"shards/{shard_id:04d}/manifests/00000002.json")
                manifest.unlink(missing_ok=True)
    medians: dict[str, dict[str, float]] = {}
    for key in ("import", "train_first", "train_second", "erase_first", "erase_second"):
        medians[key] = {
            m: round(statistics.median(float(r[key][m]) for r in runs), 4)  # type: ignore[index]
            for m in ("wall_s", "cpu_s")
        }
    load = os.getloadavg()
    print(json.dumps({"load_average": [round(x, 2) for x in load], "median": medians, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
