"""The `expunge` program: every job listed, help everywhere, documented exit codes, digests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.cli import EXIT_CODES, JOBS

ROOT = Path(__file__).resolve().parents[2]
KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"


def _expunge(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "EXPUNGE_SUBJECT_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.cli", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_job_and_every_exit_code(tmp_path):
    result = _expunge("--help", cwd=tmp_path)
    assert result.returncode == 0
    for job in ("train", "forget", "scan", "demo", "benchmark", "digest"):
        assert re.search(rf"^\s+{job}\s", result.stdout, re.M), job
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s", result.stdout, re.M)


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_has_help(job, flag):
    # In this process: the program's own click group, as the console script runs it (a subprocess per
    # job and flag cost about 2.4 s each; ``test_forget_help_...`` below runs the program for real).
    from click.testing import CliRunner

    from expunge.pipelines.cli import app

    result = CliRunner().invoke(app, [job, flag], prog_name="expunge", terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"expunge {job}" in result.output


def test_a_jobs_help_flows_its_sentences_and_keeps_its_bullets():
    """Typer kept the docstring's line breaks, so the help broke sentences mid-line (new-user review)."""
    from expunge.pipelines.cli import flowing_help

    doc = """First line
        goes on here.

        Second paragraph
        wraps too:
        - one bullet
        - another
        """
    assert flowing_help(doc) == "First line goes on here.\n\nSecond paragraph wraps too:\n- one bullet\n- another"


def test_forget_help_reads_its_exit_codes_in_one_sentence(tmp_path):
    result = _expunge("forget", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert any("found and erased, 3 when any had no data" in line for line in lines), result.stdout


def test_the_readme_exit_code_table_is_the_programs():
    readme = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in readme


def test_the_readme_rows_of_the_benchmark_subjobs_name_their_options():
    """Issue 22: the `benchmark service` row had no --model and no stream; the `profile` row no --model."""
    rows: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `expunge benchmark "):  # the first row of each subjob (service has a second: --http)
            rows.setdefault(line.split("`")[1].split(" [")[0].split(" --")[0], line)
    service = rows["expunge benchmark service"]
    for option in ("--model mf\\|item_stats", "--rate R --duration T", "needs `--data`"):
        assert option in service, option
    assert "--model mf\\|item_stats" in rows["expunge benchmark profile"]


def test_digest_prints_the_keyed_digest(tmp_path):
    result = _expunge("digest", "--subject", "user-45", "--subject", "zoë", cwd=tmp_path, EXPUNGE_SUBJECT_KEY=KEY)
    assert result.returncode == 0, result.stderr
    hasher = SubjectHasher(KEY.encode())
    assert result.stdout.split() == [hasher.digest("user-45"), hasher.digest("zoë")]


def test_digest_uses_the_demo_key_from_its_workdir(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "subject.key").write_text(KEY + "\n")
    result = _expunge("digest", "--subject", "user-45", "--workdir", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SubjectHasher(KEY.encode()).digest("user-45")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("digest", "--subject", "x"), "EXPUNGE_SUBJECT_KEY"),  # no key
        (("digest",), "--subject"),  # nobody named
        (("digest", "--subject", "x", "--workdir", "nowhere"), "Run the demo first"),
        # New-user review: with the key exported, a mistyped --workdir printed a digest, exit 0.
        (("digest", "--subject", "x", "--workdir", "nowhere", "--key-exported"), "is not a folder"),
    ],
)
def test_digest_errors_say_how_to_fix_them(tmp_path, args, message):
    env = {"EXPUNGE_SUBJECT_KEY": KEY} if "--key-exported" in args else {}
    result = _expunge(*[a for a in args if a != "--key-exported"], cwd=tmp_path, **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_digest_refuses_a_key_the_store_was_not_trained_with(tmp_path):
    from expunge.orchestrator.config import SyntheticRatingsConfig
    from expunge.orchestrator.coordinator import Coordinator, local_pool
    from expunge.pipelines.datasets import synthetic_ratings
    from tests.engine import job

    coordinator = Coordinator(str(tmp_path / "store"), SubjectHasher(KEY.encode()), pool_factory=local_pool)
    coordinator.train(
        synthetic_ratings(SyntheticRatingsConfig(users=8, items=6, ratings_per_user=2)), job(shards=2, slices=1)
    )
    coordinator.close()
    ok = _expunge(
        "digest", "--subject", "user-1", "--storage", str(tmp_path / "store"), cwd=tmp_path, EXPUNGE_SUBJECT_KEY=KEY
    )
    assert ok.returncode == 0, ok.stderr
    wrong = _expunge(
        "digest",
        "--subject",
        "user-1",
        "--storage",
        str(tmp_path / "store"),
        cwd=tmp_path,
        EXPUNGE_SUBJECT_KEY="a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9b",
    )
    assert wrong.returncode == 2
    assert "differs" in wrong.stderr


def test_a_subjects_file_that_names_nobody_says_so(tmp_path):
    from expunge.orchestrator.errors import ConfigError
    from expunge.pipelines.forget import read_subjects

    tickets = tmp_path / "tickets.txt"
    tickets.write_text("# GDPR tickets of the day\n\n")
    with pytest.raises(ConfigError, match="names nobody"):
        read_subjects([], tickets)


def test_a_weak_demo_key_file_is_refused(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "subject.key").write_text("SENTINELKEY_ab12cd34")
    result = _expunge("digest", "--subject", "x", "--workdir", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 2
    assert "too weak" in result.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("ConfigError", 2),
        ("StorageConflictError", 4),
        ("ShardStartTimeout", 4),
        ("TrackingUnreachable", 4),
        ("StorageUnavailableError", 4),
    ],
)
def test_typed_errors_exit_with_the_documented_code(error, code):
    import typer

    import expunge.orchestrator.errors
    import expunge.shards.errors
    from expunge.pipelines._runtime import exit_on_error

    kind = getattr(expunge.orchestrator.errors, error, None) or getattr(expunge.shards.errors, error)
    args = ("http://127.0.0.1:9", "refused") if error == "TrackingUnreachable" else ("what happened and how to fix it",)
    with pytest.raises(typer.Exit) as stopped, exit_on_error():
        raise kind(*args)
    assert stopped.value.exit_code == code
    assert code in EXIT_CODES


def test_a_dead_shard_actor_is_retryable_not_bad_input():
    import typer

    from expunge.orchestrator.errors import ShardRetrainFailed
    from expunge.pipelines._runtime import exit_on_error

    with pytest.raises(typer.Exit) as stopped, exit_on_error():
        raise ShardRetrainFailed(1, "actor died")
    assert stopped.value.exit_code == 4


def test_digest_with_a_workdir_refuses_a_key_other_than_its_stores(tmp_path):
    # The demo's store was trained with its key file; an exported EXPUNGE_SUBJECT_KEY that differs
    # gave a digest that names nobody in that store, silently.
    from expunge.orchestrator.coordinator import Coordinator, local_pool
    from tests.engine import job
    from tests.lineage._support import email_rows

    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "subject.key").write_text(KEY)
    Coordinator(str(workdir / "store"), SubjectHasher(KEY.encode()), pool_factory=local_pool).train(
        email_rows(users=6), job(shards=2, slices=2)
    )
    own = _expunge("digest", "--subject", "x", "--workdir", str(workdir), cwd=tmp_path)
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == SubjectHasher(KEY.encode()).digest("x")
    other = _expunge("digest", "--subject", "x", "--workdir", str(workdir), cwd=tmp_path, EXPUNGE_SUBJECT_KEY=KEY[::-1])
    assert other.returncode == 2
    assert "key differs" in other.stderr


@pytest.mark.parametrize("job_name", ["erasure", "accuracy"])
def test_a_benchmark_on_a_missing_data_file_is_bad_input(tmp_path, job_name):
    result = _expunge("benchmark", job_name, "--data", str(tmp_path / "nowhere.inter"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_command_has_a_row_in_the_readme_command_table():
    """A new user's finding: `readmit` was in `expunge --help` but not in the README's table."""
    from expunge.pipelines.cli import JOBS

    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `expunge ")]
    missing = [name for name in JOBS if not any(row.startswith(f"| `expunge {name}") for row in rows)]
    assert not missing, f"commands without a README row: {missing}"


#: Jobs whose module (their --help, their bad-input checks) loads neither torch nor MLflow.
_LIGHT_JOBS = ("digest", "tokens", "requests", "serve", "forget", "train")


def test_the_light_jobs_forget_and_train_start_without_torch_or_mlflow(tmp_path):
    # Issue 22 (heavy imports lazy): the catalog read shard manifests from the training module, and
    # every job's runtime imported MLflow's registry, so `expunge digest --help` loaded torch (2.4 s);
    # `forget` and `train` load the coordinator once their options are read.
    code = (
        "import importlib, sys\n"
        "from expunge.pipelines.cli import JOBS\n"
        f"for job in {_LIGHT_JOBS!r}:\n"
        "    importlib.import_module(JOBS[job][0].partition(':')[0])\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
