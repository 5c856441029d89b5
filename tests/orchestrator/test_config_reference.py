"""docs/configuration.md is generated from the config models and must not drift from them."""

from __future__ import annotations

from expunge.orchestrator.config import JobConfig
from expunge.orchestrator.config_reference import REFERENCE_PATH, main, missing_descriptions, reference_markdown


def test_the_reference_matches_the_models():
    assert REFERENCE_PATH.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `python -m expunge.orchestrator.config_reference`"
    )


def test_every_key_has_a_meaning():
    assert missing_descriptions() == [], "add Field(description=...) to these config fields"


def test_every_key_is_listed_with_its_default():
    text = reference_markdown()
    for dotted, default in (
        ("sharding.shards", "`4`"),
        ("data.synthetic.users", "`400`"),
        ("training.model.num_classes", "`2`"),
        ("training.model.factory", "required"),
        ("privacy.subject_key_env", '`"EXPUNGE_SUBJECT_KEY"`'),
    ):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{dotted}` |"))
        assert f"| {default} |" in row
    for name in JobConfig.model_fields:
        assert f"| `{name}` | section |" in text


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    monkeypatch.setattr("expunge.orchestrator.config_reference.REFERENCE_PATH", stale)
    assert main(["--check"]) == 1
    assert "python -m expunge.orchestrator.config_reference" in capsys.readouterr().err
    assert main([]) == 0
    assert main(["--check"]) == 0
