"""`expunge ingest`: Parquet files, folders, S3 prefixes and MovieLens files into a trained store, and its exits.

One store is trained once per module (in-process shards, no Ray) and copied for each test. The
jobs run through the ``expunge`` program's own entry point in this process, on the session's
Ray cluster, so no test pays for a Ray start; ``python -m expunge.pipelines.ingest`` (what
``ray job submit`` runs) runs once as a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.cli import main
from expunge.pipelines.datasets import load_movielens, synthetic_ratings
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID
from tests.conftest import S3_ENDPOINT
from tests.engine import job, store_snapshot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "7c1e9a4b2d8f6e0a3c5b7d9f1e2a4c6b8d0f2e4a6c8b0d2f4a6c8e0b2d4f6a8c"
RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=12, ratings_per_user=4, seed=11))
#: Trained on the first 20 people; the batch holds the other 10 (new people) and 3 new rows of known ones.
KNOWN = [f"user-{u}" for u in range(20)]


@dataclass(frozen=True)
class Trained:
    store: Path
    batch: pa.Table  # new rows: 10 new people, and new rows of 3 known ones
    movielens_store: Path
    movielens_later: Path  # MovieLens ratings of the same data set, not trained on


def _u_data(rows: pa.Table) -> str:
    """Ratings in the GroupLens u.data layout: user, item, rating, timestamp (tab-separated)."""
    return "".join(
        f"{u}\t{i}\t{r:g}\t{881250000 + n}\n"
        for n, (u, i, r) in enumerate(
            zip(*(rows.column(c).to_pylist() for c in (SUBJECT_ID, ITEM_ID, RATING)), strict=True)
        )
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    hasher = SubjectHasher(KEY.encode())
    known = pc.is_in(RATINGS.column(SUBJECT_ID), value_set=pa.array(KNOWN))
    initial, later = RATINGS.filter(known), RATINGS.filter(pc.invert(known))
    extra = initial.take([0, 4, 8])  # one rating each of user-0, user-1 and user-2 (4 ratings per person)
    initial = initial.filter(pc.invert(pc.is_in(initial.column(RECORD_ID), value_set=extra.column(RECORD_ID))))
    Coordinator(str(root / "store"), hasher, pool_factory=local_pool).train(initial, job(shards=2, slices=2))

    # MovieLens: one data set in two files (numeric users, 1-based items, one timestamp per rating).
    numeric = RATINGS.set_column(1, SUBJECT_ID, pc.replace_substring(RATINGS.column(SUBJECT_ID), "user-", ""))
    numeric = numeric.set_column(2, ITEM_ID, pc.add(numeric.column(ITEM_ID), 1))
    lines = _u_data(numeric).splitlines(keepends=True)
    (root / "u1.base").write_text("".join(lines[: len(lines) * 3 // 4]))
    (root / "u1.test").write_text("".join(lines[len(lines) * 3 // 4 :]))
    ml = Coordinator(str(root / "ml-store"), hasher, pool_factory=local_pool)
    ml.train(load_movielens(root / "u1.base"), job(shards=2, slices=2))
    return Trained(root / "store", pa.concat_tables([later, extra]), root / "ml-store", root / "u1.test")


@pytest.fixture
def workdir(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the trained store, its job config (``job.yaml``) and the key; the current folder."""
    # The jobs set logger levels for this process (init_logging): put them back for later tests.
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    shutil.copytree(trained.store, tmp_path / "store")
    # An absolute store path: the session cluster's workers run in another folder than this test.
    (tmp_path / "job.yaml").write_text(
        "# expunge ingest --config job.yaml --data BATCH\n"
        "sharding: {shards: 2, slices: 2}\n"
        f"storage: {{uri: {tmp_path / 'store'}}}\n"
        "tracking: {enabled: false}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp_path
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _expunge(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``expunge ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as ended:
        main(args)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def _ingest(data: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, object], str]:
    code, out, err = _expunge(["ingest", "--config", "job.yaml", "--data", data, *extra], capsys)
    return code, (json.loads(out) if code == 0 else {}), err


def _no_subject_named(text: str, subjects: list[str]) -> None:
    # Ids are counted, never printed ("user-1" would also match "user-10": check whole tokens).
    tokens = set(text.replace('"', " ").replace(",", " ").split())
    assert not tokens & set(subjects)


def test_python_m_ingest_adds_a_parquet_file_and_the_same_file_again_adds_nothing(
    trained, workdir, ray_cluster, capsys
):
    pq.write_table(trained.batch, workdir / "batch.parquet")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    first = subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.ingest", "--config", "job.yaml", "--data", "batch.parquet"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    receipt = json.loads(first.stdout)
    assert receipt["source"] == "batch.parquet"
    assert receipt["status"] == "ingested"
    assert receipt["rows_in_batch"] == receipt["rows_added"] == len(trained.batch) == 43
    assert receipt["new_subjects"] == 10
    assert receipt["subjects_added"] == 13
    assert (receipt["model_version_before"], receipt["model_version_after"]) == (1, 2)
    touched = [s["shard"] for s in receipt["shards"]]
    assert sorted(touched + receipt["untouched_shards"]) == [0, 1]
    assert "ingesting 43 row(s)" in first.stderr  # progress on stderr, the receipt alone on stdout
    subjects = RATINGS.column(SUBJECT_ID).unique().to_pylist()
    _no_subject_named(first.stdout + first.stderr, subjects)

    code, again, err = _ingest("batch.parquet", capsys)
    assert code == 0, err
    assert again["status"] == "nothing_new"
    assert again["rows_already_stored"] == 43
    assert again["rows_added"] == 0
    assert again["model_version_after"] == 2
    assert again["batch_digest"] == receipt["batch_digest"]


def test_a_folder_of_parquet_files_is_one_batch(trained, workdir, ray_cluster, capsys):
    folder = workdir / "exports"
    folder.mkdir()
    half = len(trained.batch) // 2
    pq.write_table(trained.batch.slice(0, half), folder / "part-0.parquet")
    # Another column order and item ids of another width: read by name, widened to one type.
    second = trained.batch.slice(half).select([RATING, ITEM_ID, SUBJECT_ID, RECORD_ID])
    pq.write_table(
        second.set_column(1, ITEM_ID, pc.cast(second.column(ITEM_ID), pa.int32())), folder / "part-1.parquet"
    )
    (folder / "_SUCCESS").write_text("")  # a Spark marker: skipped as pyarrow skips it

    code, receipt, err = _ingest("exports", capsys)

    assert code == 0, err
    assert receipt["rows_added"] == len(trained.batch)


def test_an_s3_prefix_of_parquet_files(trained, workdir, ray_cluster, s3_bucket, capsys):
    import boto3

    client = boto3.client("s3", endpoint_url=S3_ENDPOINT)
    half = len(trained.batch) // 2
    for key, rows in (
        ("day-1/a.parquet", trained.batch.slice(0, half)),
        ("day-1/b.parquet", trained.batch.slice(half)),
    ):
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        client.put_object(Bucket=s3_bucket, Key=f"exports/{key}", Body=sink.getvalue().to_pybytes())
    client.put_object(Bucket=s3_bucket, Key="exports/day-1/_SUCCESS", Body=b"")

    code, receipt, err = _ingest(f"s3://{s3_bucket}/exports/day-1", capsys)

    assert code == 0, err
    assert receipt["rows_added"] == len(trained.batch)
    assert receipt["source"] == f"s3://{s3_bucket}/exports/day-1"


def test_a_movielens_file_of_the_trained_data_set(trained, workdir, ray_cluster, capsys):
    shutil.rmtree(workdir / "store")
    shutil.copytree(trained.movielens_store, workdir / "store")
    later = load_movielens(trained.movielens_later)
    # The same ratings in another layout (ratings.csv) have the same record ids: user:item:timestamp.
    csv = workdir / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n" + trained.movielens_later.read_text().replace("\t", ","))

    code, receipt, err = _ingest(str(trained.movielens_later), capsys)
    assert code == 0, err
    # Not one id collides with a training row's (those come from the other file of the data set).
    assert receipt["rows_added"] == len(later)
    assert receipt["rows_already_stored"] == 0

    for again in (str(trained.movielens_later), str(csv), str(trained.movielens_later.with_name("u1.base"))):
        code, receipt, err = _ingest(again, capsys)
        assert code == 0, err
        assert receipt["status"] == "nothing_new", again
        assert receipt["rows_already_stored"] == receipt["rows_in_batch"] > 0


def test_a_bad_batch_lists_every_problem_and_writes_nothing(workdir, ray_cluster, capsys):
    bad = pa.table(
        {
            RECORD_ID: ["n-1", "n-1", "n-2", "n-3"],
            SUBJECT_ID: ["user-90", None, "user-91", "user-92"],
            ITEM_ID: ["3", "4", "5", "6"],  # wrong schema: item ids stored as text
            RATING: pa.array([4.0, 3.0, float("nan"), 2.0], pa.float32()),
        }
    )
    pq.write_table(bad, workdir / "bad.parquet")
    before = store_snapshot(workdir / "store")

    code, _, err = _ingest("bad.parquet", capsys)

    assert code == 2
    assert err.count("error:") == 1
    assert "4 problem(s) in bad.parquet" in err
    for problem in ("duplicate record_id", "null subject_id", "item_id", "NaN"):
        assert problem in err, problem
    assert "starting Ray" not in err  # refused before Ray started
    assert store_snapshot(workdir / "store") == before


def test_a_missing_file_is_bad_input_with_a_hint(workdir, ray_cluster, capsys):
    code, _, err = _ingest("nowhere.parquet", capsys)

    assert code == 2
    assert "'nowhere.parquet' does not exist" in err
    assert str(workdir / "nowhere.parquet") in err  # where it looked
    assert "s3://bucket/prefix" in err  # what it takes
    assert "Traceback" not in err


def test_an_unreachable_s3_endpoint_is_retryable(workdir, monkeypatch, ray_cluster, capsys):
    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one quick attempt: refused in seconds
    s3fs.S3FileSystem.clear_instance_cache()
    before = store_snapshot(workdir / "store")
    try:
        code, _, err = _ingest("s3://expunge-unreachable/exports/", capsys)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()

    assert code == 4, err
    assert "expunge-unreachable" in err
    assert "Traceback" not in err
    assert store_snapshot(workdir / "store") == before


def test_rows_of_an_erased_subject_are_refused_and_scan_stays_clean(trained, workdir, ray_cluster, capsys):
    erased = KNOWN[5]
    code, _, err = _expunge(["forget", "--config", "job.yaml", "--subject", erased], capsys)
    assert code == 0, err
    theirs = pa.table(
        {
            RECORD_ID: [f"late-{i}" for i in range(4)],
            SUBJECT_ID: [erased] * 4,
            ITEM_ID: pa.array([1, 2, 3, 4], pa.int64()),
            RATING: pa.array([5.0, 4.0, 3.0, 2.0], pa.float32()),
        }
    )
    pq.write_table(pa.concat_tables([trained.batch.cast(theirs.schema), theirs]), workdir / "batch.parquet")

    code, receipt, err = _ingest("batch.parquet", capsys)

    assert code == 0, err
    assert receipt["rows_refused_erased"] == 4
    assert receipt["subjects_refused_erased"] == 1
    assert receipt["rows_added"] == len(trained.batch)
    _no_subject_named(json.dumps(receipt) + err, [erased])
    code, out, err = _expunge(["scan", "--config", "job.yaml", "--subject", erased, "--json"], capsys)
    assert code == 0, out + err
    assert json.loads(out)["findings"] == []


def test_a_request_id_naming_a_subject_of_the_batch_is_refused(trained, workdir, ray_cluster, capsys):
    pq.write_table(trained.batch, workdir / "batch.parquet")
    before = store_snapshot(workdir / "store")

    code, _, err = _ingest("batch.parquet", capsys, "--request-id", "batch-of-user-25")

    assert code == 2
    assert "request id names a subject" in err
    assert store_snapshot(workdir / "store") == before
