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
