"""`expunge tokens` and `expunge requests`: tokens shown once and stored hashed; the privacy officer's export."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner

from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.cli import app
from tests.api.conftest import ROWS, SUBJECTS, serving
from tests.engine import job


@dataclass
class _Done:
    returncode: int
    stdout: str
    stderr: str


def _expunge(*args: str, cwd: object = None) -> _Done:
    """The `expunge` program in this process (as a subprocess runs it, without paying its imports each time)."""
    result = CliRunner().invoke(app, list(args))
    return _Done(result.exit_code, result.stdout, result.stderr)


def _trained(root) -> str:
    store = str(root / "store")
    Coordinator(store, SubjectHasher(b"tokens-cli-test-key-0123456789abcd"), None, pool_factory=local_pool).train(
        ROWS, job(shards=2, slices=2)
    )
    return store


def test_a_token_is_printed_once_stored_only_as_a_salted_hash_and_revocable(tmp_path):
    store = _trained(tmp_path)
    made = _expunge("tokens", "create", "--storage", store, "--name", "recsys-prod", "--scope", "recommend",
                    "--scope", "erasure:read", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    token = created["token"]
    assert created["scopes"] == ["erasure:read", "recommend"]
    assert "not shown again" in made.stderr
    stored = "".join(p.read_text() for p in (tmp_path / "store").rglob("*.json"))
    assert token not in stored
    assert token.split("_")[2] not in stored  # not even the secret part
    listed = json.loads(_expunge("tokens", "list", "--storage", store, cwd=tmp_path).stdout)
    assert [t["name"] for t in listed] == ["recsys-prod"]
    assert "token" not in listed[0]
    assert "digest" not in listed[0]
    revoked = _expunge("tokens", "revoke", created["token_id"], "--storage", store, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"]


def test_a_path_that_holds_no_store_is_refused_not_read_as_empty(tmp_path):
    # New-user review (thirteenth pass): `tokens create` on a mistyped path made a token there that no
    # service would ever know, and `tokens list` / `requests` printed an empty list, exit 0.
    nowhere = str(tmp_path / "nowhere")
    for args in (
        ("tokens", "create", "--storage", nowhere, "--name", "x", "--scope", "admin"),
        ("tokens", "list", "--storage", nowhere),
        ("requests", "--storage", nowhere),
        ("requests", "export", "--storage", nowhere),
    ):
        result = _expunge(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "no published ensemble" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_damaged_newest_manifest_does_not_stop_a_token_revocation(tmp_path):
    # Second adversarial review: the store check parsed the newest manifest, so a damaged one (a cut
    # write, another release's format) stopped `tokens revoke` and the request register, neither of
    # which needs the model.
    store = _trained(tmp_path)
    made = json.loads(_expunge("tokens", "create", "--storage", store, "--name", "leaked", "--scope", "admin").stdout)
    (tmp_path / "store" / "ensemble" / "00000001.json").write_text("{ cut short")
    for args in (("tokens", "revoke", made["token_id"]), ("requests",)):  # fresh processes: no manifest cached
        done = subprocess.run(
            [sys.executable, "-m", "expunge.pipelines.cli", *args, "--storage", store],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (args, done.stderr)


def test_bad_token_input_exits_2_and_writes_nothing(tmp_path):
    store = _trained(tmp_path)
    for args in (["--name", "x", "--scope", "root"], ["--name", "has space", "--scope", "admin"], ["--name", "x"]):
        result = _expunge("tokens", "create", "--storage", store, *args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("error: ")
        assert "no published ensemble" not in result.stderr  # refused for its input, on a trained store
    assert not (tmp_path / "store" / "access").exists()
    assert _expunge("tokens", "revoke", "0123456789ab", "--storage", store, cwd=tmp_path).returncode == 2


def test_the_export_lists_the_clock_and_never_a_subject(tmp_path):
    with serving(tmp_path, window_ms=60_000) as served:  # the long window keeps the requests pending
        long_ago = (datetime.now(UTC) - timedelta(days=40)).date().isoformat()
        served.service.submit([SUBJECTS[0]], "IDEM-KEY-ONE", None, "DESK-1", long_ago)
        served.service.submit([SUBJECTS[1]], "IDEM-KEY-TWO", None, "DESK-2")
        served.service.submit([SUBJECTS[2]], None, None, '=HYPERLINK("http://evil","x")')
        digests = [d for e in (served.service.lifecycle.list(datetime.now(UTC))) for d in e.subject_digests]
    store = str(tmp_path / "store")
    exported = _expunge("requests", "export", "--storage", store, "--format", "csv", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["ticket"], r["late"], r["state"]) for r in rows[:2]] == [
        ("DESK-1", "yes", "accepted"),
        ("DESK-2", "no", "accepted"),
    ]
    assert rows[2]["ticket"].startswith("'=")  # a spreadsheet shows it as text, never runs it
    assert set(rows[0]) == {"request_id", "ticket", "received_at", "due_at", "done_at", "state", "late",
                            "extension_months", "evidence"}  # fmt: skip
    for secret in (SUBJECTS[0], SUBJECTS[1], *digests, "IDEM-KEY-ONE"):
        assert secret not in exported.stdout
    late = _expunge("requests", "--storage", store, "--state", "late", cwd=tmp_path)
    assert late.returncode == 0, late.stderr
    assert [r["ticket"] for r in json.loads(late.stdout)] == ["DESK-1"]
    assert "1 request(s) pending past their due date" in late.stderr
    as_json = json.loads(_expunge("requests", "export", "--storage", store, "--format", "json", cwd=tmp_path).stdout)
    assert len(as_json) == 3
    bad = _expunge("requests", "--storage", store, "--state", "overdue", cwd=tmp_path)
    assert bad.returncode == 2
    assert "pending, late, done or failed" in bad.stderr
