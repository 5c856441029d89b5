"""A benchmark's results file is checked before the work: a run of minutes must not end in a traceback.

New-user review (issue 22, sixth pass): ``expunge benchmark service --output /nonexistent_dir/x.json``
ran the whole benchmark, printed its table, then died writing the file (exit 5, "a bug in Expunge").
"""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from expunge.pipelines.cli import app


@pytest.fixture(autouse=True)
def _logger_levels_kept():
    """The commands set Expunge's logger levels for their process; later tests in this one need theirs."""
    loggers = [logging.getLogger(name) for name in ("expunge", "expunge.orchestrator")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.parametrize(
    "command",
    [
        ["benchmark", "service", "--model", "item_stats", "--rate", "5", "--duration", "1"],
        ["benchmark", "service", "--http"],
        ["benchmark", "erasure", "--grid", "2x2", "--s3", "none"],
        ["benchmark", "accuracy"],
        ["benchmark", "profile"],
    ],
)
def test_an_output_in_a_missing_folder_is_bad_input_before_any_work(command, tmp_path):
    data = tmp_path / "ratings.inter"  # never read: the output is checked first
    missing = tmp_path / "no-such-folder" / "results.json"
    result = CliRunner().invoke(app, [*command, "--data", str(data), "--output", str(missing)])
    assert result.exit_code == 2, result.output
    assert "does not exist; create it" in result.output
    assert not missing.parent.exists()


def test_an_output_that_is_a_folder_is_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "profile", "--output", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "is a folder; give a file name" in result.output
