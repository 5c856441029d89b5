"""Training refuses bad rows before writing anything; requests find people by the identity rule."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import MLPConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import ConfigError, DataValidationError, InvalidSubjectIdError
from expunge.orchestrator.evidence.scan import scan_store
from expunge.pipelines.datasets import synthetic_ratings, synthetic_tabular
from expunge.pipelines.forget import read_subjects
from expunge.shards.rows import RATING, SUBJECT_ID
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=24, items=20, ratings_per_user=5, seed=2))
# Three people whose ids test the rule: stored composed (NFC), with a padded id, and as a customer id.
NAMES = {"user-0": "zo\u00eb", "user-1": "  cust-3 ", "user-2": "cust-4"}


def _with_subjects(rows: pa.Table, subjects: list[object], kind: pa.DataType | None = None) -> pa.Table:
    return rows.set_column(rows.column_names.index(SUBJECT_ID), SUBJECT_ID, pa.array(subjects, kind or pa.string()))


def _named_rows() -> pa.Table:
    return _with_subjects(ROWS, [NAMES.get(s, s) for s in ROWS.column(SUBJECT_ID).to_pylist()])


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _coordinator(tmp_path, hasher) -> Coordinator:
    return Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)


def test_nan_ratings_are_refused_before_anything_is_written(tmp_path, hasher):
    ratings = ROWS.column(RATING).to_pylist()
    ratings[3] = ratings[40] = float("nan")
    rows = ROWS.set_column(ROWS.column_names.index(RATING), RATING, pa.array(ratings, pa.float32()))
    with pytest.raises(DataValidationError, match=r"2 rating value\(s\) are NaN, first at row 3"):
        _coordinator(tmp_path, hasher).train(rows, job())
    assert _files(tmp_path / "store") == []


def test_a_floating_point_subject_column_is_refused_before_anything_is_written(tmp_path, hasher):
    subjects = [float(s.removeprefix("user-")) + 1000 for s in ROWS.column(SUBJECT_ID).to_pylist()]
    with pytest.raises(DataValidationError, match="subject_id is a floating-point column"):
        _coordinator(tmp_path, hasher).train(_with_subjects(ROWS, subjects, pa.float64()), job())
    assert _files(tmp_path / "store") == []


def test_an_integer_subject_column_is_found_by_int_and_by_text(tmp_path, hasher):
    subjects = [int(s.removeprefix("user-")) + 1000 for s in ROWS.column(SUBJECT_ID).to_pylist()]
    coordinator = _coordinator(tmp_path, hasher)
    coordinator.train(_with_subjects(ROWS, subjects, pa.int64()), job())
    assert coordinator.forget([1001]).status == "erased"
    receipt = coordinator.forget(["1001"])  # the same person: already gone
    assert receipt.status == "not_found"
    assert receipt.subject_digests == (hasher.digest(1001),)
    with pytest.raises(InvalidSubjectIdError, match="floating-point"):
        coordinator.forget([1002.0])


def test_a_person_typed_another_way_is_found_and_erased(tmp_path, hasher):
    rows = _named_rows()
    coordinator = _coordinator(tmp_path, hasher)
    coordinator.train(rows, job())
    stored = pc.unique(rows.column(SUBJECT_ID)).to_pylist()
    assert "cust-3" not in stored  # the padded form is what the data holds ...
    receipt = coordinator.forget(["zoe\u0308", "cust-3"])  # ... NFD and unpadded forms are what a request holds
    assert receipt.status == "erased"
    assert receipt.not_found_digests == ()
    assert receipt.rows_removed == 10
    for typed in ("zo\u00eb", "zoe\u0308", " cust-3", "cust-3"):
        assert scan_store(coordinator.store, typed, hasher.digest(typed)).clean


def test_a_subjects_file_with_a_byte_order_mark_erases_its_first_subject(tmp_path, hasher):
    coordinator = _coordinator(tmp_path, hasher)
    coordinator.train(_named_rows(), job())
    tickets = tmp_path / "tickets.txt"
    tickets.write_bytes(b"\xef\xbb\xbfcust-3\r\n# ticket 2\r\ncust-4\r\n")  # Notepad / Excel export
    subjects = read_subjects([], tickets)
    assert subjects == ["cust-3", "cust-4"]
    receipt = coordinator.forget(subjects)
    assert receipt.status == "erased"
    assert receipt.not_found_digests == ()
    assert scan_store(coordinator.store, "cust-3", hasher.digest("cust-3")).clean


def test_flags_and_files_share_the_rule_and_refuse_what_it_refuses(tmp_path):
    assert read_subjects(["  cust-3\t", "zoe\u0308"], None) == ["cust-3", "zo\u00eb"]
    with pytest.raises(InvalidSubjectIdError, match="--subject 2 is empty"):
        read_subjects(["cust-3", "  "], None)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"cust-3\nzo\xeb\n")
    with pytest.raises(InvalidSubjectIdError) as caught:
        read_subjects([], latin1)
    assert str(latin1) in str(caught.value)
    assert "byte offset 9" in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_subjects([], tmp_path / "absent.txt")


def test_shard_data_holds_subject_ids_in_canonical_form(tmp_path, hasher):
    coordinator = _coordinator(tmp_path, hasher)
    coordinator.train(_named_rows(), job())
    stored: set[str] = set()
    for path in (tmp_path / "store").rglob("*.parquet"):
        table = pq.read_table(path)
        if SUBJECT_ID in table.column_names:
            stored |= set(table.column(SUBJECT_ID).to_pylist())
    assert {"zo\u00eb", "cust-3", "cust-4"} <= stored
    assert "  cust-3 " not in stored


def test_labels_beyond_the_models_classes_are_refused_before_anything_is_written(tmp_path, hasher):
    rows = synthetic_tabular(subjects=12, rows_per_subject=2, features=4, classes=3)
    model = MLPConfig(num_features=4, num_classes=2, hidden=(4,))
    with pytest.raises(DataValidationError, match=r"outside \[0, training.model.num_classes=2\)"):
        _coordinator(tmp_path, hasher).train(rows, job(model))
    assert _files(tmp_path / "store") == []
