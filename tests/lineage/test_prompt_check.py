"""MLflow's prompt check (is this name a prompt?) is asked once per registered model, and still refuses prompts."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from expunge.orchestrator.registry.prompt_check import RegistryClient


@pytest.fixture
def client(tmp_path):
    return RegistryClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _counting_reads(client, monkeypatch) -> list[str]:
    reads: list[str] = []
    original = client.get_registered_model

    def counted(name):  # type: ignore[no-untyped-def]
        reads.append(name)
        return original(name)

    monkeypatch.setattr(client, "get_registered_model", counted)
    return reads


def test_a_registered_model_is_read_once_for_the_prompt_check_not_on_every_write(client, monkeypatch):
    client.create_registered_model("model")
    version = client.create_model_version("model", source="/nowhere", run_id=None).version
    reads = _counting_reads(client, monkeypatch)
    for n in range(3):
        client.set_model_version_tag("model", version, f"tag{n}", "x")
        client.update_model_version("model", version, description=f"d{n}")
        client.set_registered_model_alias("model", "production", version)
    assert reads == ["model"]  # nine writes, one check (MLflow's client reads it before each)
    assert client.get_model_version("model", version).tags == {
        "tag0": "x",
        "tag1": "x",
        "tag2": "x",
    }
    fresh = RegistryClient(tracking_uri=client.tracking_uri)
    fresh_reads = _counting_reads(fresh, monkeypatch)
    fresh.set_model_version_tag("model", version, "tag3", "x")
    fresh.set_model_version_tag("model", version, "tag4", "x")
    assert fresh_reads == ["model"]  # one check per client and name


def test_a_prompt_is_still_refused_on_every_call(client):
    client.register_prompt("greeting", template="Hello {{name}}")
    for _ in range(2):
        with pytest.raises(MlflowException, match="not found"):
            client.set_model_version_tag("greeting", "1", "tag", "x")


def test_a_missing_model_is_asked_again_once_it_exists(client):
    with pytest.raises(MlflowException):
        client.set_registered_model_alias("later", "production", "1")
    client.create_registered_model("later")
    version = client.create_model_version("later", source="/nowhere", run_id=None).version
    client.set_registered_model_alias("later", "production", version)
    assert client.get_model_version_by_alias("later", "production").version == version
