"""The audit's held-out rows (``evidence.audit_holdout``): read from Parquet or MovieLens, cached, refused by name."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import EvidenceConfig
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.holdout import holdout_rows
from expunge.orchestrator.evidence.membership import MembershipAudit, configured_audit
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID

CANONICAL = pa.table(
    {
        RECORD_ID: ["a", "b", "c"],
        SUBJECT_ID: ["u-1", "u-2", "u-2"],
        ITEM_ID: pa.array([0, 1, 2], pa.int64()),
        RATING: pa.array([4.0, 3.0, 5.0], pa.float32()),
    }
)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"),
        ("ratings.dat", "196::242::3::881250949\n186::302::3::891717742\n"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n196,242,3.0,881250949\n186,302,3.0,891717742\n"),
        ("ml.inter", "user_id:token\titem_id:token\trating:float\n196\t242\t3\n186\t302\t3\n"),
    ],
)
def test_movielens_layouts_read_as_canonical_rows(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    rows = holdout_rows(str(tmp_path / name))
    assert rows.column(SUBJECT_ID).to_pylist() == ["196", "186"]
    assert rows.column(ITEM_ID).to_pylist() == [242, 302]
    assert rows.column(RATING).to_pylist() == [3.0, 3.0]
    assert rows.column(RECORD_ID).to_pylist()[0].startswith("196:242")


def test_a_parquet_file_and_a_folder_read_the_canonical_columns(tmp_path):
    pq.write_table(CANONICAL.append_column("extra", pa.array([1, 2, 3])), tmp_path / "one.parquet")
    assert holdout_rows(str(tmp_path / "one.parquet")).column_names == [RECORD_ID, SUBJECT_ID, ITEM_ID, RATING]
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(CANONICAL.slice(0, 2), folder / "a.parquet")
    pq.write_table(CANONICAL.slice(2), folder / "b.parquet")
    assert sorted(holdout_rows(str(folder)).column(RECORD_ID).to_pylist()) == ["a", "b", "c"]


def test_rows_without_record_ids_get_their_own(tmp_path):
    pq.write_table(CANONICAL.drop_columns([RECORD_ID]), tmp_path / "no-ids.parquet")
    ids = holdout_rows(str(tmp_path / "no-ids.parquet")).column(RECORD_ID).to_pylist()
    assert len(set(ids)) == 3


def test_the_rows_are_read_once_and_again_when_the_file_changes(tmp_path):
    path = tmp_path / "h.parquet"
    pq.write_table(CANONICAL, path)
    first = holdout_rows(str(path))
    assert holdout_rows(str(path)) is first
    pq.write_table(CANONICAL.slice(0, 2), path)
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert len(holdout_rows(str(path))) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "holds no rows|neither Parquet"),
        (b"just some words\n", "neither Parquet nor a MovieLens"),
        (b"196\t242\t9\t881250949\n", "rows the audit cannot use"),
    ],
)
def test_an_unusable_holdout_is_refused_naming_the_setting(tmp_path, content, message):
    path = tmp_path / "holdout.data"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"evidence\.audit_holdout") as refused:
        configured_audit(EvidenceConfig(audit_holdout=str(path)))
    assert refused.match(message)


def test_configured_audit_is_none_unset_and_fresh_per_request(tmp_path):
    assert configured_audit(EvidenceConfig()) is None
    pq.write_table(CANONICAL, tmp_path / "h.parquet")
    evidence = EvidenceConfig(audit_holdout=str(tmp_path / "h.parquet"), audit_fpr=0.05)
    first, second = configured_audit(evidence), configured_audit(evidence)
    assert isinstance(first, MembershipAudit)
    assert isinstance(second, MembershipAudit)
    assert first is not second
    assert first.nonmembers is second.nonmembers  # read once
    assert first.fpr == 0.05


def test_a_service_with_an_unreadable_holdout_is_refused_at_start_not_per_request(tmp_path, hasher):
    from expunge.orchestrator.coordinator import Coordinator, local_pool

    evidence = EvidenceConfig(audit_holdout=str(tmp_path / "missing.parquet"))
    with pytest.raises(ConfigError, match="audit_holdout"):
        Coordinator(str(tmp_path / "store"), hasher, None, local_pool, evidence)
