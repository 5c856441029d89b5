"""A fresh shard process loads only what a shard uses, and its bits do not depend on what else is loaded.

Each test starts a fresh Python process: what a module import pulls in is a property of a process,
and a test process has long loaded everything.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expunge.shards.rows import numeric_values, string_array

#: A shard process that trains on the slices in argv[2] (Parquet files, read without pandas), erases
#: one subject, and prints the store's bytes as digests and which packages of argv[3:] it loaded.
#: argv[1] is the store folder; ``--others-first`` loads torch's compiler and pandas first.
SHARD_JOB = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    if "--others-first" in sys.argv:
        import pandas, torch._dynamo  # as a process that uses them for something else would have them
    import pyarrow.parquet as pq
    from expunge.shards.config import MFConfig, TrainingConfig
    from expunge.shards.shard import Shard

    slices = [pq.ParquetFile(path).read() for path in sorted(Path(sys.argv[2]).glob("*.parquet"))]
    store = Path(sys.argv[1])
    for kernel in ("fused", "per_tensor"):
        training = TrainingConfig(
            model=MFConfig(num_items=11, embedding_dim=4), epochs=3, batch_size=8, optimizer_kernel=kernel
        )
        shard = Shard(0, str(store / kernel), training, training.model)
        shard.train(slices)
        shard.erase([hashlib.sha256(b"u1-2").hexdigest()], 1, "request-1")
    files = {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*")) if p.is_file()
    }
    loaded = [name for name in sys.argv[3:] if not name.startswith("--") and name in sys.modules]
    print(json.dumps({"files": files, "loaded": loaded}))
    """
)


def _write_slices(folder: Path) -> Path:
    """Three slices of MF rows (6 subjects each, 5 ratings per subject) as Parquet files."""
    folder.mkdir()
    for k in range(3):
        subjects = [f"u{k}-{i}" for i in range(6) for _ in range(5)]
        table = pa.table(
            {
                "record_id": [f"{s}:{j}" for j, s in enumerate(subjects)],
                "subject_id": subjects,
                "item_id": pa.array([(7 * j + k) % 11 for j in range(len(subjects))], pa.int64()),
                "rating": pa.array([float(1 + (j % 5)) for j in range(len(subjects))], pa.float32()),
                "subject_digest": [hashlib.sha256(s.encode()).hexdigest() for s in subjects],
            }
        )
        pq.write_table(table, folder / f"{k}.parquet")
    return folder


#: Packages an MF shard never uses: torch's compiler stack (torch._dynamo brings sympy and the
#: distributed packages), about 1 s of CPU in every fresh shard process that imported them, and
#: pandas (0.23 s), which pyarrow imports on its first conversion of numpy or Python values.
UNUSED = ["torch._dynamo", "sympy", "torch.distributed.fsdp", "pandas"]


def _shard_job(tmp_path, *flags: str) -> dict:
    store = tmp_path / ("store" + "".join(flags))
    slices = tmp_path / "slices"
    if not slices.exists():
        _write_slices(slices)
    done = subprocess.run(
        [sys.executable, "-c", SHARD_JOB, str(store), str(slices), *UNUSED, *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_an_mf_shard_trains_and_erases_without_importing_the_compiler_or_pandas(tmp_path):
    result = _shard_job(tmp_path)
    assert result["loaded"] == []


def test_a_shard_writes_the_same_bytes_whether_or_not_the_compiler_and_pandas_are_loaded(tmp_path):
    """Both kernels, a training and an erasure: every slice, checkpoint and manifest byte for byte."""
    plain = _shard_job(tmp_path)
    others_first = _shard_job(tmp_path, "--others-first")
    assert {"torch._dynamo", "pandas"} <= set(others_first["loaded"])
    assert len(plain["files"]) > 10
    assert plain["files"] == others_first["files"]


#: Encodes rows read from Parquet for MF and the MLP, and prints whether pandas got imported.
ENCODE_JOB = textwrap.dedent(
    """
    import sys
    import pyarrow.parquet as pq
    import torch
    from expunge.shards.config import MFConfig, MLPConfig
    from expunge.shards.models import MatrixFactorization, MLPClassifier

    rows = pq.ParquetFile(sys.argv[1]).read()
    mf = MatrixFactorization(MFConfig(num_items=11, embedding_dim=4))
    module = mf.build(torch.Generator().manual_seed(0))
    mf.grow(module, rows, torch.Generator().manual_seed(1))
    mf.encode(module, rows)
    tabular = pq.ParquetFile(sys.argv[2]).read()
    mlp = MLPClassifier(MLPConfig(num_features=3, num_classes=2, hidden=(4,)))
    mlp.encode(mlp.build(torch.Generator().manual_seed(0)), tabular)
    print("pandas" in sys.modules)
    """
)


def test_encoding_rows_for_mf_and_the_mlp_does_not_import_pandas(tmp_path):
    slices = _write_slices(tmp_path / "slices")
    tabular = tmp_path / "tabular.parquet"
    features = pa.array([[0.5, 1.0, 2.0], [1.5, 0.0, -1.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"features": features, "label": pa.array([0, 1], pa.int64())}), tabular)
    done = subprocess.run(
        [sys.executable, "-c", ENCODE_JOB, str(slices / "0.parquet"), str(tabular)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    "column",
    [
        pa.chunked_array([pa.array([3, 1, 2], pa.int64()), pa.array([7, 5], pa.int64())]),
        pa.array([1.5, -2.25, 3.0, 4.5], pa.float32()).slice(1, 2),
        pa.chunked_array([pa.array([9, 8, 7, 6], pa.int32()).slice(2)]),
        pa.array([250, 3], pa.uint8()),
        pa.chunked_array([], pa.float64()),
    ],
)
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_numeric_values_are_what_to_numpy_gives(column, dtype):
    values = numeric_values(column, dtype)
    expected = column.to_numpy().astype(dtype)
    assert values.dtype == expected.dtype
    assert values.tobytes() == expected.tobytes()
    values[:] = 0  # a new array, not a view of Arrow's read-only buffers


@pytest.mark.parametrize(
    "column", [pa.array([1, None], pa.int64()), pa.array(["a"]), pa.chunked_array([pa.array([True])])]
)
def test_numeric_values_refuse_nulls_and_other_types(column):
    with pytest.raises(ValueError, match="numeric_values needs"):
        numeric_values(column, np.int64)


@pytest.mark.parametrize("values", [[], ["a"], ["", "b", "", "ç€😀"], [hashlib.sha256(b"x").hexdigest()] * 3])
def test_string_array_is_what_pa_array_gives(values):
    built = string_array(values)
    assert built.equals(pa.array(values, type=pa.string()))
    assert built.to_pylist() == values
