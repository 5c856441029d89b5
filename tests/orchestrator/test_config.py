from __future__ import annotations

from pathlib import Path

import pytest

from expunge.orchestrator.config import JobConfig, MFConfig, TrainingConfig, load_job_config
from expunge.orchestrator.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "infra" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_names_its_command(path):
    assert isinstance(load_job_config(path), JobConfig)
    assert path.read_text().startswith("# "), "shipped configs start with the command that uses them"
    assert "expunge train --config infra/configs/" + path.name in path.read_text().splitlines()[0]


def test_all_problems_in_one_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sharding: {shards: 0, slices: -1}\ntraining: {epochs: 0, colour: red}\n")
    with pytest.raises(ConfigError) as caught:
        load_job_config(path)
    message = str(caught.value)
    for fragment in ("sharding.shards", "sharding.slices", "training.epochs", "training.colour"):
        assert fragment in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sharding: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job_config(bad)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """Carried finding: PyYAML kept the last of two equal keys, so `shards: 4` then `shards: 16` in
    one section trained 16 shards without a word; a key repeated in another section is fine."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("sharding:\n  shards: 4\n  slices: 2\n  shards: 16\n")
    with pytest.raises(ConfigError, match=r"the key 'shards' is given twice \(lines 2 and 4\); keep one"):
        load_job_config(twice)
    sections = tmp_path / "sections.yaml"  # one key name in two sections: two mappings, no repeat
    sections.write_text("storage:\n  uri: /tmp/store\ntracking:\n  uri: sqlite:///t.db\n")
    loaded = load_job_config(sections)
    assert (loaded.storage.uri, loaded.tracking.uri) == ("/tmp/store", "sqlite:///t.db")
    top = tmp_path / "top.yaml"
    top.write_text("sharding:\n  shards: 4\nsharding:\n  slices: 2\n")
    with pytest.raises(ConfigError, match="'sharding' is given twice"):
        load_job_config(top)


def test_training_fingerprint_tracks_tensor_relevant_settings_only():
    base = TrainingConfig()
    assert base.fingerprint() == TrainingConfig(cpus_per_shard=0.25).fingerprint()
    assert base.fingerprint() != TrainingConfig(seed=1).fingerprint()
    assert base.fingerprint() != TrainingConfig(model=MFConfig(embedding_dim=3)).fingerprint()


@pytest.mark.parametrize("value", ["true", "'4'", "2.0"])
def test_a_shard_count_given_as_a_boolean_string_or_float_is_refused(tmp_path, value):
    # Lax parsing read `true` as 1 shard; a count is a whole number, written as one.
    path = tmp_path / "job.yaml"
    path.write_text(f"erasure: {{in_process_max_shards: {value}}}\n")
    with pytest.raises(ConfigError, match=r"erasure\.in_process_max_shards"):
        load_job_config(path)
    path.write_text("erasure: {in_process_max_shards: 4}\n")
    assert load_job_config(path).erasure.in_process_max_shards == 4
