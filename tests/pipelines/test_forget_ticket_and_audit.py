"""`expunge forget --ticket --reason` and the audit of every CLI erasure, through the program's own entry point.

A store is trained once in-process; ``expunge forget`` then runs as the program does (on the
test session's Ray cluster), with ``evidence.audit_holdout`` in its job config, and ``expunge
verify --report`` reads the result. Free text naming a person is refused before Ray starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import Lineage
from expunge.pipelines.cli import main
from expunge.pipelines.datasets import split_rows, synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import job

KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"
SYNTHETIC = SyntheticRatingsConfig(users=30, items=20, ratings_per_user=8, seed=4)


@dataclass
class Trained:
    root: Path
    config: Path
    subjects: list[str]


def _train(root: Path, tracking: TrackingConfig | None) -> list[str]:
    rows, held_out = split_rows(synthetic_ratings(SYNTHETIC), 0.2, 0)
    pq.write_table(held_out, root / "holdout.parquet")
    lineage = Lineage(tracking, str(root / "store")) if tracking else None
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY.encode()), lineage, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    coordinator.close()
    return sorted(set(rows.column(SUBJECT_ID).to_pylist()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("cli-audit")
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="cli-audit", model_name="cli-audit")
    subjects = _train(root, tracking)
    config = root / "job.yaml"
    config.write_text(
        "sharding: {shards: 2, slices: 2}\n"
        "training: {cpus_per_shard: 0.5}\n"
        f"storage: {{uri: '{root / 'store'}'}}\n"
        f"tracking: {{uri: '{tracking.uri}', experiment: cli-audit, model_name: cli-audit}}\n"
        f"evidence: {{audit_holdout: '{root / 'holdout.parquet'}'}}\n"
    )
    return Trained(root, config, subjects)


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    levels = {n: g.level for n, g in logging.root.manager.loggerDict.items() if isinstance(g, logging.Logger)}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    monkeypatch.setenv("EXPUNGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    for name, logger in list(logging.root.manager.loggerDict.items()):  # the jobs set levels for their process
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _expunge(*args: str) -> int:
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    return int(ended.value.code or 0)


def _stored(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted((root / "store").rglob("*")) if p.is_file()}


# ----- the audit of a CLI erasure ----------------------------------------------------------------------------
@pytest.mark.integration
def test_a_cli_erasure_with_the_holdout_configured_is_audited_and_certified(trained, ray_cluster, capsys, tmp_path):
    subject = trained.subjects[3]
    code = _expunge(
        "forget", "--config", str(trained.config), "--subject", subject, "--ticket", "DESK-0042",
        "--reason", "Art. 17 request", "--request-id", "GDPR-cli-1",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    receipt = json.loads(out)
    assert receipt["audit_sha256"] is not None
    assert (receipt["ticket"], receipt["reason"]) == ("DESK-0042", "Art. 17 request")

    certificate = tmp_path / "certificate"
    code = _expunge(
        "verify", "--config", str(trained.config), "--request", "GDPR-cli-1", "--audit", "--report",
        str(certificate), "--out", str(tmp_path), "--json",
    )  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    audit = next(c for c in report["checks"] if c["name"] == "membership_audit")
    assert audit["status"] == "passed"
    assert audit["details"]["kind"] == "audit"
    assert report["audit"]["member_rows"] > 0
    filed = json.loads((certificate / "report.json").read_text())
    assert filed["verify_report"]["checks"] == report["checks"]
    assert filed["facts"]["ticket"] == "DESK-0042"
    assert filed["facts"]["receipt_sha256"] is not None
    page = (certificate / "report.html").read_text()
    assert "Membership-inference audit" in page
    assert "DESK-0042" in page
    assert subject not in page


# ----- refused before anything starts -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "text"),
    [
        ("--reason", "erase {subject} please"),
        ("--ticket", "from jane.doe@example.com"),
        ("--reason", "call +44 20 7946 0958"),
    ],
)
def test_free_text_naming_a_person_is_refused_with_exit_2_and_nothing_stored(trained, capsys, flag, text):
    subject = trained.subjects[7]
    before = _stored(trained.root)
    code = _expunge("forget", "--config", str(trained.config), "--subject", subject, flag, text.format(subject=subject))
    err = capsys.readouterr().err
    assert code == 2
    assert "PersonalDataInTextError" in err or "must not identify anyone" in err
    assert subject not in err
    assert "jane.doe" not in err
    assert _stored(trained.root) == before


def test_an_unusable_audit_holdout_is_bad_input_naming_the_setting(trained, capsys):
    before = _stored(trained.root)
    code = _expunge(
        "forget",
        "--config",
        str(trained.config),
        "--subject",
        trained.subjects[8],
        "--audit-holdout",
        "nowhere.parquet",
    )
    assert code == 2
    assert "evidence.audit_holdout" in capsys.readouterr().err
    assert _stored(trained.root) == before


# ----- verify --audit on an erasure that ran without one -----------------------------------------------------
def test_verify_audit_of_an_unaudited_erasure_says_why_and_runs_the_post_hoc_check(tmp_path, capsys):
    root = tmp_path / "plain"
    root.mkdir()
    subject = _train(root, None)[2]
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY.encode()), pool_factory=local_pool)
    coordinator.forget([subject], request_id="GDPR-plain")
    coordinator.close()
    store = str(root / "store")

    assert _expunge("verify", "--storage", store, "--request", "GDPR-plain", "--audit", "--json") == 0
    row = next(c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "membership_audit")
    assert row["status"] == "skipped"
    assert "can no longer be run" in row["summary"]
    assert "--audit-holdout" in row["summary"]

    holdout = str(root / "holdout.parquet")
    args = ["verify", "--storage", store, "--request", "GDPR-plain", "--audit", "--audit-holdout", holdout]
    assert _expunge(*args, "--report", str(tmp_path / "certificate"), "--json") == 0
    row = next(c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "membership_audit")
    assert row["status"] == "passed"
    assert row["summary"].startswith("Post-hoc check, not a membership audit")
    assert "Post-hoc check (not a membership audit)" in (tmp_path / "certificate" / "report.html").read_text()


def test_verify_by_a_ticket_with_a_slash_writes_its_reports_under_the_request_id(tmp_path, capsys):
    root = tmp_path / "slash"
    root.mkdir()
    subject = _train(root, None)[3]
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY.encode()), pool_factory=local_pool)
    coordinator.forget([subject], request_id="req-slash", ticket="GDPR/2026/42")
    coordinator.close()
    out = tmp_path / "out"
    assert _expunge("verify", "--storage", str(root / "store"), "--request", "GDPR/2026/42", "--out", str(out)) == 0
    assert (out / "verify-req-slash.md").is_file()  # not a path built from the ticket
    assert f"report written to {out / 'verify-req-slash'}.md (and .json)" in capsys.readouterr().err  # and says so
    taken = tmp_path / "a-file"
    taken.write_text("")
    code = _expunge("verify", "--storage", str(root / "store"), "--request", "req-slash", "--report", str(taken))
    assert code == 2  # refused before the verify runs, not a traceback after it
    assert "is a file" in capsys.readouterr().err


def test_a_forget_run_again_without_its_request_id_points_at_the_erasure_that_did_it(tmp_path, capsys, caplog):
    # Thirteenth-pass note: a killed forget run again without --request-id is a new request; it finds its
    # subjects erased (exit 3) and said only "erased earlier", and `verify --request TICKET` then took the
    # new request, which found nobody, without a word about the one that erased them.
    root = tmp_path / "again"
    root.mkdir()
    subject = _train(root, None)[5]
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY.encode()), pool_factory=local_pool)
    coordinator.forget([subject], request_id="GDPR-first", ticket="GDPR-7")
    coordinator.close()
    store = str(root / "store")
    assert _expunge("forget", "--storage", store, "--subject", subject, "--ticket", "GDPR-7") == 3
    captured = capsys.readouterr()
    again = json.loads(captured.out[captured.out.index("{") :])["request_id"]
    assert "1 of them erased earlier, by request GDPR-first: `expunge verify --request GDPR-first`" in captured.err
    caplog.clear()
    # The store was trained with tracking off: the CLI's forget recorded nothing in a default MLflow
    # (it did, and verify then failed the store: "the store now names no registry").
    assert _expunge("verify", "--storage", store, "--request", "GDPR-7", "--json") == 0
    # Its report says who erased them (it said "nothing was erased", new-user review).
    assert json.loads(capsys.readouterr().out)["erased_earlier_by"] == ["GDPR-first"]
    warned = [r.getMessage() for r in caplog.records if "that ticket names" in r.getMessage()]
    assert warned == [
        f"that ticket names 2 requests (GDPR-first, {again}); taking the newest, {again}: give a request id to check another"
    ]
    assert not [r for r in caplog.records if "GDPR-7" in r.getMessage()]  # the reference itself is never logged
