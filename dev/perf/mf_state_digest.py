"""sha256 of every tensor an MF shard's training ends with (weights and Adam state), to check a change keeps the bits.

    .venv/bin/python dev/perf/side_by_side.py --before REV --after REV --runs 1 \\
        dev/perf/mf_state_digest.py /abs/ml-100k.inter

One shard's rows of MovieLens (as ``dev/perf/mf_step.py`` cuts them, 16x8 by default), trained from
scratch with each Adam kernel (``fused``, ``per_tensor``), then from its step-3 state again (a
restart, as an erasure does), and the monolith's rows as one slice; then a ``Shard`` of the same
slices (fused Adam) trained in a scratch store and erased twice (a subject of slice 3, then one of
slice 5: restarts from the states the shard holds), its tensors after each. Prints one JSON object
of digests: equal digests under two commits mean the same bits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile

import pyarrow as pa
import torch
from mf_step import _slices

from expunge.shards.config import MFConfig, TrainingConfig
from expunge.shards.models import model_for
from expunge.shards.movielens import load_movielens
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard
from expunge.shards.training import TrainedState, configure_determinism, load_checkpoint, train_steps


def _digest(state: TrainedState) -> str:
    digest = hashlib.sha256()
    for name, tensor in state.module.state_dict().items():
        digest.update(name.encode() + tensor.numpy().tobytes())
    assert state.optimizer_state is not None
    for index, values in sorted(state.optimizer_state["state"].items()):
        for name, tensor in sorted(values.items()):
            digest.update(f"{index}.{name}".encode() + tensor.numpy().tobytes())
    digest.update(repr(sorted(state.optimizer_state["param_groups"][0].items())).encode())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--slices", type=int, default=8)
    args = parser.parse_args()
    rows = load_movielens(args.data)
    digests = [hashlib.sha256(u.encode()).hexdigest() for u in rows.column(SUBJECT_ID).to_pylist()]
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests, pa.string()))
    tables = _slices(rows, args.shards, args.slices)
    report = {}
    for kernel in ("fused", "per_tensor"):
        training = TrainingConfig(
            model=MFConfig(num_items=1683, embedding_dim=32, l2=0.1),
            epochs=20,
            batch_size=512,
            learning_rate=0.01,
            optimizer_kernel=kernel,
        )
        configure_determinism(training.threads_per_shard)
        model = model_for(training.model)
        saved: dict[int, bytes] = {}
        full = train_steps(model, training, 0, tables, None, saved.__setitem__)  # type: ignore[arg-type]
        restart = load_checkpoint(model, saved[2])  # type: ignore[arg-type]
        again = train_steps(model, training, 0, tables, restart, lambda step, data: None)  # type: ignore[arg-type]
        monolith = train_steps(model, training, 0, [rows.slice(0, len(rows) // 4)], None, lambda step, data: None)  # type: ignore[arg-type]
        report[kernel] = {"shard": _digest(full), "restarted": _digest(again), "monolith": _digest(monolith)}
    with tempfile.TemporaryDirectory(prefix="mf-state-digest-") as scratch:
        shard = Shard(0, scratch, training.model_copy(update={"optimizer_kernel": "fused"}), training.model)
        shard.train(tables)
        erased = {}
        for k in (3, 5):
            subject = tables[k].column(SUBJECT_DIGEST)[0].as_py()
            shard.erase([subject], k, f"digest-{k}")
            tensors = shard.tensors()
            erased[f"slice_{k}"] = _digest(TrainedState(shard.final_state().module, tensors["optimizer"], 0))
        report["shard_erased"] = erased
    report["torch"] = torch.__version__
    print(json.dumps(report))


if __name__ == "__main__":
    main()
