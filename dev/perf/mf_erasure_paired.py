"""MF shard erasures at S x R, each timed under two code paths back to back in one process (paired CPU seconds).

    .venv/bin/python dev/perf/mf_erasure_paired.py /abs/ml-100k.inter [--grid 16x8] [--erasures 20]
        [--off gather,backward,mf,adam]

``mf_shard_erasure.py``'s data, training and subjects (its first ``--erasures`` random subjects),
each shard trained twice (two scratch stores, the same bits); each subject is erased on one copy with
the fast paths named in ``--off`` switched back to the code they replaced ("before") and on the other
as the tree has them ("after"), in alternating order; ``same_checkpoint_bytes``: both copies hold the
same checkpoint sha256s after every erasure (the same weights and Adam state, bit for bit). CPU seconds are ``ShardUpdate.cpu_seconds``. On
a shared machine the load moves both halves of a pair alike: the ratio after/before of each pair is
the figure to read (median and quartiles), more than either mean. Fast paths:

  gather: ``training._batches`` cuts an epoch's rows gathered once (off: one gather per batch);
  backward: ``training._backward`` calls the engine directly (off: ``loss.backward()``);
  mf: ``MFModule.terms`` checks its users with one reduction, ``terms`` and ``loss`` square with
      ``Tensor.pow`` and the flat gradient is split with ``split_with_sizes`` (off: ``bool((users >=
      0).all())``, ``** 2`` and ``torch.split``, as before);
  adam: the gathered Adam step switches gradients off with ``torch._C._set_grad_enabled`` (off:
      ``with torch.no_grad()``).

Every fast path off is the code of commit 5ac834f, the tree before them.

Prints one JSON object (means, pair ratios, load average).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
from mf_shard_erasure import _cells, _slices

from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.benchmark import parity_training
from expunge.pipelines.datasets import split_rows
from expunge.shards import training as training_module
from expunge.shards.models import mf as mf_module
from expunge.shards.movielens import load_movielens
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard


def _plain_backward(loss):  # type: ignore[no-untyped-def]
    loss.backward()


def _terms_before(self, users, items):  # type: ignore[no-untyped-def]
    """``MFModule.terms`` of 5ac834f."""
    item_vectors = self.item_factors[items]
    item_bias = self.item_bias
    score = self.mu + item_bias[items]
    norm = item_bias[items] ** 2 + (item_vectors**2).sum(dim=1)
    if not self._user_biases:
        return score, norm
    if torch.is_grad_enabled():
        bias, factors = self._flat()
    else:
        bias, factors = torch.cat(self._user_biases), torch.cat(self._user_factors)
    known = users >= 0
    every_user_known = bool(known.all())
    safe = users if every_user_known else users.clamp(min=0)
    user_vectors = factors[safe]
    user_term = bias[safe] + (user_vectors * item_vectors).sum(dim=1)
    user_norm = bias[safe] ** 2 + (user_vectors**2).sum(dim=1)
    if every_user_known:
        return score + user_term, norm + user_norm
    zeros = torch.zeros_like(user_term)
    return score + torch.where(known, user_term, zeros), norm + torch.where(known, user_norm, zeros)


def _loss_before(self, module, batch):  # type: ignore[no-untyped-def]
    """``MatrixFactorization.loss`` of 5ac834f."""
    prediction, norm = module.terms(batch["users"], batch["items"])
    return torch.mean((prediction - batch["target"]) ** 2 + self.config.l2 * norm)


def _spread_before(params, sizes):  # type: ignore[no-untyped-def]
    """``mf._spread_gradient`` of 5ac834f."""

    def spread(leaf):  # type: ignore[no-untyped-def]
        parts, leaf.grad = torch.split(leaf.grad, sizes), None
        for param, part in zip(params, parts, strict=True):
            if param.grad is None:
                param.grad = part
            else:
                with torch.no_grad():
                    param.grad += part

    return spread


def _adam_before(self):  # type: ignore[no-untyped-def]
    """``training._FusedAdamStep.__call__`` of 5ac834f."""
    grads = [p.grad for p in self.params if p.grad is not None]
    if len(grads) != len(self.params):
        training_module._step(self.optimizer)
        return
    with torch.no_grad():
        self.counts.add_(1)
        torch._fused_adam_(
            self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.steps, **self.options
        )


@contextlib.contextmanager
def _before(off: set[str]) -> Iterator[None]:
    """The named fast paths switched back to the code they replaced, for the block."""
    saved = (
        training_module._EPOCH_GATHER_BYTES,
        training_module._backward,
        mf_module.MFModule.terms,
        mf_module._spread_gradient,
        training_module._FusedAdamStep.__call__,
        mf_module.MatrixFactorization.loss,
    )
    if "gather" in off:
        training_module._EPOCH_GATHER_BYTES = -1
    if "backward" in off:
        training_module._backward = _plain_backward
    if "mf" in off:
        mf_module.MFModule.terms = _terms_before  # type: ignore[method-assign]
        mf_module.MatrixFactorization.loss = _loss_before  # type: ignore[method-assign]
        mf_module._spread_gradient = _spread_before
    if "adam" in off:
        training_module._FusedAdamStep.__call__ = _adam_before  # type: ignore[method-assign]
    try:
        yield
    finally:
        (
            training_module._EPOCH_GATHER_BYTES,
            training_module._backward,
            mf_module.MFModule.terms,  # type: ignore[method-assign]
            mf_module._spread_gradient,
            training_module._FusedAdamStep.__call__,  # type: ignore[method-assign]
            mf_module.MatrixFactorization.loss,  # type: ignore[method-assign]
        ) = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--grid", default="16x8")
    parser.add_argument("--erasures", type=int, default=20)
    parser.add_argument("--off", default="gather,backward,mf,adam")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    off = set(args.off.split(",")) - {""}
    hasher = SubjectHasher(b"expunge-benchmark-key-not-secret!!")
    rows, _ = split_rows(load_movielens(args.data), 0.2, args.seed)
    ids = rows.column(SUBJECT_ID).to_pylist()
    rows = rows.append_column(SUBJECT_DIGEST, pa.array([hasher.digest(u) for u in ids], pa.string()))
    subjects = [hasher.digest(u) for u in sorted(set(ids))]
    shards, slices = (int(x) for x in args.grid.split("x"))
    chosen = [subjects[int(i)] for i in np.random.default_rng(args.seed).choice(len(subjects), args.erasures, False)]
    training = parity_training()
    model = training.model.model_copy(update={"num_items": 1683})
    training = training.model_copy(update={"model": model})
    cells = _cells(rows, shards, slices)
    before: list[float] = []
    after: list[float] = []
    same = True  # both copies wrote the same checkpoint bytes after every erasure
    with tempfile.TemporaryDirectory(prefix="mf-erasure-paired-") as scratch:
        copies: dict[tuple[str, int], Shard] = {}
        for n, digest in enumerate(chosen):
            shard_id, first = cells[digest]
            for side in ("before", "after"):
                if (side, shard_id) not in copies:
                    shard = Shard(shard_id, f"{scratch}/{side}", training, model)
                    shard.train(_slices(rows, cells, shard_id, slices))
                    copies[(side, shard_id)] = shard
            order = ("before", "after") if n % 2 == 0 else ("after", "before")
            for side in order:
                with _before(off) if side == "before" else contextlib.nullcontext():
                    update = copies[(side, shard_id)].erase([digest], first, f"request-{n}")
                (before if side == "before" else after).append(update.cpu_seconds)
            manifests = [copies[(side, shard_id)].manifest for side in ("before", "after")]
            sums = [[c.sha256 for c in m.checkpoints] if m is not None else None for m in manifests]
            same = same and sums[0] == sums[1]
    ratios = sorted(a / b for a, b in zip(after, before, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        json.dumps(
            {
                "grid": args.grid,
                "off": sorted(off),
                "erasures": len(chosen),
                "same_checkpoint_bytes": same,
                "before_cpu_s_mean": round(statistics.fmean(before), 4),
                "after_cpu_s_mean": round(statistics.fmean(after), 4),
                "after_over_before_median": round(statistics.median(ratios), 3),
                "after_over_before_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
                "after_over_before_of_sums": round(sum(after) / sum(before), 3),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
