"""The service gets the subject key on its node, never through Ray: a cluster that lacks it is refused before anything starts."""

from __future__ import annotations

import logging
import secrets
import uuid

import pytest

from expunge.orchestrator.config import JobConfig, PrivacyConfig, ServiceConfig, StorageConfig, TrackingConfig
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.service.actor import start_service
from expunge.orchestrator.service.subject_key import require_key_on_cluster

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _privacy(tmp_path, key: str | None) -> PrivacyConfig:
    """A variable no Ray worker has (set here only) and, when ``key`` is given, a key file holding it."""
    key_file = None
    if key is not None:
        key_file = tmp_path / "subject.key"
        key_file.write_text(key)
        key_file.chmod(0o600)
    return PrivacyConfig(
        subject_key_env=f"EXPUNGE_TEST_KEY_{uuid.uuid4().hex[:8]}", subject_key_file=key_file and str(key_file)
    )


def test_a_cluster_whose_nodes_lack_the_key_is_refused_before_the_service_exists_and_the_key_is_never_sent(
    tmp_path, monkeypatch, caplog
):
    # Issue 20: start_service passed a key the cluster lacked through the actor's runtime_env, which
    # Ray stores in the GCS, shows in the dashboard and writes into world-readable logs.
    import ray

    key = secrets.token_hex(32)
    privacy = _privacy(tmp_path, None)
    monkeypatch.setenv(privacy.subject_key_env, key)  # this driver holds the key; the cluster's workers do not
    namespace = f"key-{uuid.uuid4().hex[:8]}"
    job = JobConfig(
        storage=StorageConfig(uri=str(tmp_path / "store")),
        tracking=TrackingConfig(enabled=False),
        service=ServiceConfig(namespace=namespace),
        privacy=privacy,
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as refused:
        start_service(job)
    message = str(refused.value)
    assert "cannot read the subject key on 1 of the cluster's 1 Ray node(s)" in message
    assert "privacy.subject_key_file" in message
    assert privacy.subject_key_env in message
    assert "Nothing was started" in message
    assert key not in message
    assert key not in caplog.text
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor(job.service.name, namespace=namespace)


def test_the_probe_accepts_a_key_file_every_node_reads_and_refuses_another_key(tmp_path, monkeypatch):
    key = secrets.token_hex(32)
    privacy = _privacy(tmp_path, key + "\n")
    require_key_on_cluster(privacy)  # the worker reads the file; the variable is set nowhere
    from expunge.orchestrator.digests import SubjectHasher

    require_key_on_cluster(privacy, SubjectHasher(key.encode()).key_check())
    with pytest.raises(ConfigError, match="differs between the cluster's nodes and this process") as refused:
        require_key_on_cluster(privacy, SubjectHasher(secrets.token_hex(32).encode()).key_check())
    assert key not in str(refused.value)
