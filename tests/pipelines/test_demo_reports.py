"""The demo's folder holds its last run's reports only (review: a second run left the first run's beside them).

Each run writes ``verify-<request id>.md`` and ``.json``; the next run in the same folder deleted
nothing, so a reader could not tell which belonged to the run just made. A file the user put in
the folder, report-shaped or not, stays.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expunge.pipelines.demo import DemoOptions, run

pytestmark = pytest.mark.integration


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("verify-") or p.name == "notes.md"}


def test_a_second_run_replaces_the_first_runs_reports_and_keeps_the_users_files(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.delenv("EXPUNGE_SUBJECT_KEY", raising=False)  # the demo's own key file
    # A registry per run: this process keeps MLflow's connection to a database file the next run would recreate.
    options = DemoOptions(workdir=tmp_path / "demo", shards=2, slices=2, users=30, seed=1)
    first = run(options.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path / 'first.db'}"}), quiet=True)
    assert Path(first.verify_report).is_file()
    # The user's own files in the demo's folder, one of them named as a report is (`expunge verify --out`).
    (tmp_path / "demo" / "verify-ticket-4711.md").write_text("kept\n")
    (tmp_path / "demo" / "notes.md").write_text("kept\n")

    second = run(
        options.model_copy(update={"seed": 2, "tracking_uri": f"sqlite:///{tmp_path / 'second.db'}"}), quiet=True
    )

    assert second.request_id != first.request_id
    ours = {f"verify-{second.request_id}.md", f"verify-{second.request_id}.json"}
    assert _files(tmp_path / "demo") == ours | {"verify-ticket-4711.md", "notes.md"}
    assert Path(second.verify_report).name in ours
    assert (tmp_path / "demo" / "verify-ticket-4711.md").read_text() == "kept\n"
