"""A misspelt config key is refused with the key it was meant to be (new-user review, issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from expunge.orchestrator.config import load_job_config
from expunge.orchestrator.errors import ConfigError


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_job_config(path)
    return str(raised.value)


def test_a_misspelt_key_names_the_key_it_resembles_in_its_own_section(tmp_path):
    message = _refused(tmp_path, "service:\n  registraton_nice_increment: 5\ntraining:\n  epochz: 3\n")
    assert "service.registraton_nice_increment: Extra inputs are not permitted" in message
    assert "(did you mean 'registration_nice_increment'?)" in message
    assert "training.epochz: Extra inputs are not permitted (did you mean 'epochs'?)" in message


def test_a_misspelt_key_of_a_model_kind_is_matched_against_that_kind(tmp_path):
    message = _refused(tmp_path, "training:\n  model:\n    kind: item_stats\n    neighbors: 20\n")
    assert "training.model.neighbors" in message
    assert "did you mean 'neighbours'" in message


def test_a_key_like_none_lists_what_the_section_takes(tmp_path):
    message = _refused(tmp_path, "qqqq: 1\n")
    assert "qqqq: Extra inputs are not permitted (this section takes: data, erasure, evidence" in message


def test_other_problems_keep_pydantic_s_message_alone(tmp_path):
    message = _refused(tmp_path, "service:\n  registration_nice_increment: 20\n")
    assert "service.registration_nice_increment: Input should be less than or equal to 19" in message
    assert "did you mean" not in message


def test_a_model_key_is_named_where_the_yaml_has_it_not_under_its_kind(tmp_path):
    """New-user review: the location read ``training.model.item_stats.neighbors``, a path no YAML has."""
    message = _refused(tmp_path, "training:\n  model:\n    kind: item_stats\n    neighbors: 20\n")
    assert "training.model.neighbors: Extra inputs are not permitted (did you mean 'neighbours'?)" in message
    assert "item_stats.neighbors" not in message


def test_a_model_without_its_kind_is_told_the_kinds(tmp_path):
    message = _refused(tmp_path, "training:\n  model:\n    embedding_dim: 8\n")
    assert "training.model: no `kind`; give `kind:` one of 'mf', 'mlp', 'item_stats', 'custom'" in message


def test_a_file_that_is_not_utf8_is_a_config_error_not_a_crash(tmp_path):
    """New-user review: a Latin-1 file raised UnicodeDecodeError (exit 5, "a bug in Expunge")."""
    path = tmp_path / "job.yaml"
    path.write_bytes("service:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 20\); save it as UTF-8"):
        load_job_config(path)


def test_a_file_that_is_a_list_is_told_to_hold_sections(tmp_path):
    message = _refused(tmp_path, "- sharding\n- training\n")
    assert "holds a list, not sections: start it with a key such as 'sharding:'" in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("service:\n  registration_nice_increment: true\n", "service.registration_nice_increment"),
        ("service:\n  max_subjects_per_batch: true\n", "service.max_subjects_per_batch"),
        ("sharding:\n  shards: 8.5\n", "sharding.shards"),
        ("training:\n  model:\n    kind: item_stats\n    factors: yes\n", "training.model.factors"),
    ],
)
def test_a_count_is_a_whole_number_not_a_boolean_or_a_fraction(tmp_path, text, where):
    """New-user review: ``true`` was read as 1 (every retrain of one subject, for max_subjects_per_batch)."""
    message = _refused(tmp_path, text)
    assert f"{where}: Input should be a valid integer" in message


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("window_ms: 5\n", "window_ms: Extra inputs are not permitted (it belongs under `service`)"),
        ("shards: 8\n", "shards: Extra inputs are not permitted (it belongs under `sharding`)"),
        ("service:\n  niceness: 3\n", "service.niceness: Extra inputs are not permitted (it belongs under `training`)"),
        (
            "training:\n  kind: mf\n",
            "training.kind: Extra inputs are not permitted (it belongs under `training.model`)",
        ),
    ],
)
def test_a_key_in_the_wrong_section_is_told_where_it_belongs(tmp_path, text, hint):
    """New-user review: ``shards: 8`` at the top was told 'did you mean sharding', which fails again."""
    assert hint in _refused(tmp_path, text)


def test_several_problems_are_listed_one_per_line(tmp_path):
    """New-user review: every problem came back on one long line, separated by semicolons."""
    message = _refused(tmp_path, "service:\n  window: 5\ntraining:\n  epochz: 3\n")
    lines = message.splitlines()
    assert lines[0].endswith("is invalid:")
    assert sorted(line.split(":")[0] for line in lines[1:]) == ["  - service.window", "  - training.epochz"]
