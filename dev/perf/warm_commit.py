"""Warm service commits of ``item_stats`` in one process (``local_pool``, MLflow off), timed and profiled.

    .venv/bin/python dev/perf/warm_commit.py /work/shared/data/ml-100k/ml-100k.inter --erasures 20 [--profile out.prof]

Trains an S=8, R=8 ``item_stats`` store on the 80 % split (as ``expunge benchmark service``),
starts ``ErasureService`` in this process with ``window_ms=0``, then erases ``--erasures``
subjects one after another, each waited for until committed (then, without timing, until its
version is served, so that the solver does not run during the next commit). Prints one JSON
object: per-commit wall seconds (received -> committed from the service's own timestamps, and
``forget``'s wall time), the solve seconds of each version, and the exact solve alone.
``--profile FILE``: a cProfile of the whole erasure loop (every thread the profiler sees: the
caller's; the worker's and shards' through ``threading.setprofile`` is not used, so the worker
is profiled by wrapping ``ErasureService._commit``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from expunge.orchestrator.config import (
    ItemStatsConfig,
    JobConfig,
    PrivacyConfig,
    ServiceConfig,
    ShardingConfig,
    StorageConfig,
    TrackingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.service.core import ErasureService
from expunge.pipelines.benchmark import parity_training
from expunge.pipelines.benchmark_stream import stream_rows
from expunge.pipelines.datasets import load_movielens
from expunge.shards.rows import SUBJECT_ID

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--erasures", type=int, default=20)
parser.add_argument("--profile", default=None)
args = parser.parse_args()

rows = stream_rows(load_movielens(Path(args.data)))
subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
with tempfile.TemporaryDirectory(prefix="warm-commit-") as scratch:
    key = Path(scratch) / "key"
    key.write_text(os.urandom(32).hex())
    training = parity_training(20, 512).model_copy(update={"model": ItemStatsConfig()})
    job = JobConfig(
        sharding=ShardingConfig(shards=8, slices=8),
        training=training,
        storage=StorageConfig(uri=str(Path(scratch) / "store")),
        tracking=TrackingConfig(enabled=False),
        privacy=PrivacyConfig(subject_key_file=str(key)),
        service=ServiceConfig(window_ms=0),
    )
    hasher = SubjectHasher.from_settings(job.privacy)
    Coordinator(job.storage, hasher, None, pool_factory=local_pool).train(rows, job)
    service = ErasureService(job, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    assert fits.wait(service.coordinator.require_manifest().version, timeout=300)
    exact = [service.exact_solve_seconds() for _ in range(2)]
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        commit = ErasureService._commit

        def profiled(self, *a, **k):  # type: ignore[no-untyped-def]
            profiler.enable()
            try:
                return commit(self, *a, **k)
            finally:
                profiler.disable()

        ErasureService._commit = profiled  # type: ignore[method-assign]
    committed, walls, solves = [], [], []
    try:
        for subject in subjects[: args.erasures]:
            began = time.perf_counter()
            receipt = service.forget([subject], timeout=300)
            walls.append(time.perf_counter() - began)
            status = service.status(receipt.request_id)
            committed.append(
                (
                    datetime.fromisoformat(status.committed_at or status.received_at)
                    - datetime.fromisoformat(status.received_at)
                ).total_seconds()
            )
            solve_began = time.perf_counter()
            assert fits.wait(receipt.model_version_after or 0, timeout=300)
            solves.append(time.perf_counter() - solve_began)
    finally:
        service.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    print(
        json.dumps(
            {
                "load_average": os.getloadavg(),
                "committed_s": committed,
                "committed_median_s": statistics.median(committed),
                "forget_wall_median_s": statistics.median(walls),
                "ready_after_commit_median_s": statistics.median(solves),
                "exact_solve_s": exact,
            }
        )
    )
    sys.stdout.flush()
