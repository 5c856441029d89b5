"""A fresh shard process loads only what a shard uses, and its bits do not depend on what else is loaded.

Each test starts a fresh Python process: what a module import pulls in is a property of a process,
and a test process has long loaded everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: A shard process that trains, then erases one subject, and prints the store's bytes as hex
#: digests and which of the packages named in argv[2:] it loaded. argv[1] is the store folder.
SHARD_JOB = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    if "--compiler-first" in sys.argv:
        import torch._dynamo  # as a process that compiles something else would have it
    import pyarrow as pa
    from expunge.shards.config import MFConfig, TrainingConfig
    from expunge.shards.shard import Shard

    def digest(subject):
        return hashlib.sha256(subject.encode()).hexdigest()

    slices = []
    for k in range(3):
        subjects = [f"u{k}-{i}" for i in range(6) for _ in range(5)]
        slices.append(pa.table({
            "record_id": [f"{s}:{j}" for j, s in enumerate(subjects)],
            "subject_id": subjects,
            "item_id": pa.array([(7 * j + k) % 11 for j in range(len(subjects))], pa.int64()),
            "rating": pa.array([float(1 + (j % 5)) for j in range(len(subjects))], pa.float32()),
            "subject_digest": [digest(s) for s in subjects],
        }))
    store = Path(sys.argv[1])
    for kernel in ("fused", "per_tensor"):
        training = TrainingConfig(
            model=MFConfig(num_items=11, embedding_dim=4), epochs=3, batch_size=8, optimizer_kernel=kernel
        )
        shard = Shard(0, str(store / kernel), training, training.model)
        shard.train(slices)
        shard.erase([digest("u1-2")], 1, "request-1")
    files = {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}
    loaded = [name for name in sys.argv[2:] if not name.startswith("--") and name in sys.modules]
    print(json.dumps({"files": files, "loaded": loaded}))
    """
)

#: Packages a shard never uses: torch's compiler stack (torch._dynamo brings sympy and the
#: distributed packages), about 1 s of CPU in every fresh shard process that imported them.
COMPILER = ["torch._dynamo", "sympy", "torch.distributed.fsdp"]


def _shard_job(tmp_path, *flags: str) -> dict:
    store = tmp_path / ("store" + "".join(flags))
    done = subprocess.run(
        [sys.executable, "-c", SHARD_JOB, str(store), *COMPILER, *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.xfail(
    strict=True,
    reason="needs the optimizer change to shards/training.py (dynamo-free Optimizer methods and step), "
    "handed to its owner; remove this marker with it",
)
def test_a_shard_trains_and_erases_without_importing_the_compiler(tmp_path):
    result = _shard_job(tmp_path)
    assert result["loaded"] == []


def test_a_shard_writes_the_same_bytes_whether_or_not_the_compiler_is_loaded(tmp_path):
    """Both kernels, a training and an erasure: every slice, checkpoint and manifest byte for byte."""
    plain = _shard_job(tmp_path)
    compiler_first = _shard_job(tmp_path, "--compiler-first")
    assert "torch._dynamo" in compiler_first["loaded"]
    assert len(plain["files"]) > 10
    assert plain["files"] == compiler_first["files"]
