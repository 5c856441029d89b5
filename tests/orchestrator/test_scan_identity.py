"""A scan that means it: ids that look like Expunge's own words and numbers give no false trace and no missed one.

One small store (in-process shards, sqlite MLflow) is trained per module with the subjects
``1``, ``0``, ``train``, ``rows``, ``id``, ``null`` and an e-mail address; the fixture erases
them one by one and scans (store, MLflow params and tags, registry) before and after each
erasure. Sabotage plants a raw id in a journal entry, a receipt, an MLflow tag and a log file,
each on a copy or undone after its test.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from expunge.orchestrator.config import StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.scan import ScanReport, scan_store
from expunge.orchestrator.registry import Lineage
from expunge.pipelines import scan as scan_recipe
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import job

#: A key strong enough for the program's own check (the CLI test reads it from the environment).
KEY = "5d1e8a3c7b9f2046e1c3a5b7d9f1e3c5a7b9d1f3e5c7a9b1d3f5e7c9a1b3d5f7"
EMAIL = "ann@example.org"
IDS = ("1", "0", "train", "rows", "id", "null", EMAIL)
#: What a scan may find of a subject still in the data (its rows and what was trained on them).
HELD = {"rows", "placement", "checkpoint-lineage", "checkpoint-parameters", "registry-version"}


@dataclass
class Erased:
    root: Path
    store: Path
    lineage: Lineage
    after: dict[str, ScanReport] = field(default_factory=dict)  # id -> scan just after its erasure
    before: dict[str, list[ScanReport]] = field(default_factory=dict)  # id -> scans while it was still held


def _scan(store: Path, subject: str, logs: tuple[Path, ...] = (), registry: bool = True) -> ScanReport:
    storage = StorageConfig(uri=str(store))
    return scan_recipe.run(storage, subject, hasher=SubjectHasher(KEY.encode()), logs=logs, registry=registry)


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> Erased:
    root = tmp_path_factory.mktemp("scan-identity")
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=10, ratings_per_user=4, seed=1))
    users = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    renamed = dict(zip(users, IDS, strict=False))  # seven people take the ids under test, five keep theirs
    subjects = pa.array([renamed.get(s, s) for s in rows.column(SUBJECT_ID).to_pylist()])
    rows = rows.set_column(rows.column_names.index(SUBJECT_ID), SUBJECT_ID, subjects)
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="scan", model_name="expunge-scan")
    lineage = Lineage(tracking, str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY.encode()), lineage, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    result = Erased(root, root / "store", lineage)
    for position, subject in enumerate(IDS):
        for held in IDS[position:]:
            # The store alone: the registry check of a held subject loads every model version (seconds each).
            result.before.setdefault(held, []).append(_scan(result.store, held, registry=False))
        assert coordinator.forget([subject], request_id=f"GDPR-{position}").status == "erased"
        result.after[subject] = _scan(result.store, subject)
    coordinator.close()
    return result


@pytest.fixture
def store_copy(erased: Erased, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(erased.store, copy)
    return copy


# ----- no false trace, no missed one ------------------------------------------------------------------
@pytest.mark.parametrize("subject", IDS)
def test_after_its_erasure_the_scan_of_each_subject_is_clean(erased, subject):
    report = erased.after[subject]
    assert report.clean, [(f.key, f.location, f.rule) for f in report.findings]
    assert report.coverage.raw_id
    assert report.coverage.json_documents > 0
    assert report.coverage.mlflow_runs > 0


@pytest.mark.parametrize("subject", IDS)
def test_until_its_erasure_each_subject_is_found_in_its_slice_rows_and_nowhere_else(erased, subject):
    reports = erased.before[subject]
    assert len(reports) == IDS.index(subject) + 1  # scanned before every erasure up to its own
    for report in reports:
        rows = [f for f in report.findings if f.kind == "rows" and f.rule == "typed-id"]
        assert rows
        assert all(f.location == "column subject_id" and f.key.startswith("shards/") for f in rows)
        assert {f.kind for f in report.findings} <= HELD, [(f.key, f.location) for f in report.findings]


def test_an_integer_id_is_the_same_person_as_its_text_and_not_a_longer_number(tmp_path, hasher):
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=10, ratings_per_user=3, seed=3))
    numbers = [int(s.removeprefix("user-")) for s in rows.column(SUBJECT_ID).to_pylist()]
    rows = rows.set_column(rows.column_names.index(SUBJECT_ID), SUBJECT_ID, pa.array(numbers, pa.int64()))
    assert {1, 10, 11} <= set(numbers)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    coordinator.forget([1])
    for typed in (1, "1", " 1 "):
        assert scan_store(coordinator.store, typed, hasher.digest(typed)).clean  # type: ignore[arg-type]
    ten = scan_store(coordinator.store, 10, "0" * 64)  # type: ignore[arg-type]
    assert ("rows", "typed-id") in {(f.kind, f.rule) for f in ten.findings}  # 10 is still there, and is not 1


# ----- sabotage: a raw id planted where free text is kept is found, and the report says where ------------
PLANTED = f"Customer {EMAIL} (account 1) asked by phone; see train/rows, id?null=0."


def _holding(report: ScanReport) -> list[tuple[str, str | None, str]]:
    return [(f.key, f.location, f.rule) for f in report.findings]


@pytest.mark.parametrize("subject", IDS)
def test_a_raw_id_in_a_journal_entrys_free_text_is_found(erased, store_copy, subject):
    key = "journal/requests/GDPR-7.json"
    entry = {"request_id": "GDPR-7", "subject_digests": ["d" * 64], "received_at": "2026-12-01T10:00:00Z"}
    ObjectStore(str(store_copy)).put(key, json.dumps(entry | {"reason": PLANTED}).encode())
    assert _holding(_scan(store_copy, subject)) == [(key, "$.reason", "bounded-token")]


def test_the_same_entry_without_the_id_is_clean(erased, store_copy):
    entry = {"request_id": "GDPR-7", "reason": "account 10 asked by phone, v1 of trained rows_removed", "rows": 1}
    ObjectStore(str(store_copy)).put("journal/requests/GDPR-7.json", json.dumps(entry).encode())
    for subject in IDS:
        assert _scan(store_copy, subject).clean, subject


def test_a_raw_id_in_a_receipt_is_found_where_it_is(erased, store_copy):
    key = "receipts/requests/GDPR-3.json"
    receipt = json.loads((store_copy / key).read_text())
    receipt["ticket"] = f"case for {EMAIL}"
    (store_copy / key).write_text(json.dumps(receipt))
    (finding,) = _scan(store_copy, EMAIL).findings
    assert (finding.key, finding.kind, finding.location, finding.rule) == (key, "manifest", "$.ticket", "bounded-token")
    assert _scan(store_copy, "rows").clean  # the receipt's own "rows_removed" count is no trace of "rows"


def test_a_raw_id_in_an_mlflow_tag_is_found_on_its_run(erased):
    client = erased.lineage.client
    (run,) = [r for r in client.search_runs([erased.lineage.experiment_id]) if r.info.run_name == "erasure-GDPR-2"]
    client.set_tag(run.info.run_id, "note", f"asked by {EMAIL}")
    client.set_tag(run.info.run_id, "expunge.reason", "rows")
    try:
        assert _holding(_scan(erased.store, EMAIL)) == [(f"runs:/{run.info.run_id}", "tag note", "bounded-token")]
        assert _holding(_scan(erased.store, "rows")) == [
            (f"runs:/{run.info.run_id}", "tag expunge.reason", "bounded-token")
        ]
        assert _scan(erased.store, "train").clean  # the runs' own tag expunge.kind = train is no trace
    finally:
        client.delete_tag(run.info.run_id, "note")
        client.delete_tag(run.info.run_id, "expunge.reason")


def _logs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    (logs / "session_1" / "logs").mkdir(parents=True)
    (logs / "service.log").write_text(
        "2026-12-01 10:00:01,123 INFO erased 1 subject(s) in 0.4 s (request GDPR-1)\n"
        "2026-12-01 10:00:02,001 INFO trained v1 on 40 rows\n"
        f"2026-12-01 10:00:03,777 WARNING lookup failed for {EMAIL}\n"
    )
    (logs / "session_1" / "logs" / "worker.out").write_text("ok\nsubject=null\n")
    (logs / "session_1" / "logs" / "plasma.bin").write_bytes(b"\0null\0")  # binary: not read
    return logs


@pytest.mark.parametrize(
    ("subject", "lines"),
    [(EMAIL, [("service.log", "line 3")]), ("null", [("session_1/logs/worker.out", "line 2")]), ("id", [])],
)
def test_expunge_scan_logs_searches_log_folders_line_by_line(erased, tmp_path, subject, lines):
    logs = _logs(tmp_path)
    report = _scan(erased.store, subject, logs=(logs,))
    assert [(str(Path(f.key).relative_to(logs)), f.location) for f in report.findings] == lines
    assert all(f.kind == "log" and f.rule == "bounded-token" for f in report.findings)
    assert (report.coverage.log_files, report.coverage.log_lines) == (2, 5)


def test_a_log_folder_linked_to_another_disk_is_read_and_a_loop_ends(erased, tmp_path):
    # Linked folders were skipped: a log folder moved elsewhere and linked back read as clean.
    logs = _logs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "old.log").write_text(f"2026-11-30 09:00:00,000 INFO reply sent to {EMAIL}\n")
    (logs / "archive").symlink_to(elsewhere)
    (logs / "session_1" / "up").symlink_to(logs)  # a loop
    (logs / "again").symlink_to(logs / "session_1")  # a folder reached twice: read once
    report = _scan(erased.store, EMAIL, logs=(logs,))
    assert sorted((str(Path(f.key).relative_to(logs)), f.location) for f in report.findings) == [
        ("archive/old.log", "line 1"),
        ("service.log", "line 3"),
    ]
    assert (report.coverage.log_files, report.coverage.log_lines) == (3, 6)


def test_a_numeric_id_in_free_log_text_is_reported_with_its_line(erased, tmp_path):
    # "erased 1 subject(s)" cannot be told from "erased subject 1": the rule reports it and names the line.
    report = _scan(erased.store, "1", logs=(_logs(tmp_path),))
    assert [f.location for f in report.findings] == ["line 1"]


def _cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(scan_recipe.main)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_the_program_says_where_in_json_and_in_text_and_never_the_id(erased, store_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    logs = _logs(tmp_path)
    common = ("--storage", str(store_copy), "--subject", EMAIL)
    code, output = _cli(*common)
    assert code == 0, output
    code, output = _cli(*common, "--logs", str(logs), "--logs", str(logs / "session_1"), "--json")
    assert code == 1
    report = json.loads(output)
    (finding,) = report["findings"]
    assert (finding["location"], finding["rule"], finding["kind"]) == ("line 3", "bounded-token", "log")
    assert report["coverage"]["log_files"] == 2  # a folder named twice is read once
    code, output = _cli(*common, "--logs", str(logs))
    assert code == 1
    for said in ("line 3", "bounded-token", "log file(s)"):
        assert said in output
    assert EMAIL not in output.replace(str(logs), "")
    assert _cli(*common, "--logs", str(tmp_path / "no-such-folder"))[0] == 2


# ----- verify's storage check runs the same scan and says what it read ---------------------------------
def test_verify_storage_check_passes_an_honest_erasure_and_names_a_planted_trace(erased, store_copy):
    from expunge.orchestrator.evidence.verify import verify_erasure

    def storage(store: Path, subject: str):  # type: ignore[no-untyped-def]
        report = verify_erasure(str(store), "GDPR-3", SubjectHasher(KEY.encode()), subject, log_to_mlflow=False)
        return report.check("storage")

    honest = storage(store_copy, "rows")
    assert honest.status == "passed", honest.summary
    assert "JSON document(s) field by field" in honest.summary
    key = "journal/requests/GDPR-3.json"
    ObjectStore(str(store_copy)).put(key, json.dumps({"request_id": "GDPR-3", "reason": "from rows."}).encode())
    planted = storage(store_copy, "rows")
    assert planted.status == "failed"
    assert f"manifest in {key} ($.reason, rule bounded-token)" in planted.summary
    assert planted.details["findings"][0]["location"] == "$.reason"
