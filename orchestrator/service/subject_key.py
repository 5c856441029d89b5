"""Whether the service can read the subject key on the cluster, asked of every node; the key never travels through Ray.

The service actor reads the key where it runs (``privacy.subject_key_env`` in the node's
environment, else ``privacy.subject_key_file`` on the node's disk). Nothing passes it there: a Ray
task or actor argument and a ``runtime_env`` are kept in the GCS, shown by the dashboard and
written into world-readable session logs. So before the service is created, one short-lived
task on each alive node builds the hasher there and answers with its key check (an HMAC of a
constant that tells keys apart without revealing them) or why it could not.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from expunge.orchestrator.config import PrivacyConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, ServiceUnavailableError

__all__ = ["require_key_on_cluster"]

log = logging.getLogger(__name__)

#: How long the probe of every node may take, in seconds (a worker starts on each).
_PROBE_TIMEOUT_S = 120.0


# max_calls=1: the worker that read the key exits after answering, so no pooled worker keeps it.
@ray.remote(num_cpus=0, max_calls=1)
def _key_check_here(privacy_json: str) -> tuple[str | None, str | None]:
    """``(key_check, None)`` when this node gives the key, else ``(None, why)``; never the key itself."""
    try:
        return SubjectHasher.from_settings(PrivacyConfig.model_validate_json(privacy_json)).key_check(), None
    except ConfigError as exc:  # its message names the variable and the file, never the key
        return None, str(exc)


def require_key_on_cluster(privacy: PrivacyConfig, expected_check: str | None = None) -> None:
    """Refuse, before anything is created, a cluster where some node cannot give the service the key.

    ``expected_check``: the key check of the key this process holds (None: not compared).

    Raises:
        ConfigError: a node lacks the key or holds another one; says how to give every node the key.
        ServiceUnavailableError: the probe did not answer within two minutes.
    """
    every: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = [node for node in every if node.get("Alive")]
    probes = [
        _key_check_here.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ).remote(privacy.model_dump_json())
        for node in nodes
    ]
    try:
        answers: list[tuple[str | None, str | None]] = ray.get(probes, timeout=_PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        raise ServiceUnavailableError(
            f"asking the cluster's {len(nodes)} node(s) whether they hold the subject key took over "
            f"{_PROBE_TIMEOUT_S:.0f} s (no worker started?); nothing was started"
        ) from exc
    lacking = [(node, why) for node, (check, why) in zip(nodes, answers, strict=True) if check is None]
    if lacking:
        node, why = lacking[0]
        raise ConfigError(
            f"the erasure service cannot read the subject key on {len(lacking)} of the cluster's {len(nodes)} Ray "
            f"node(s) (e.g. {node.get('NodeManagerAddress')}: {why}). Nothing was started, and Expunge does not send "
            "the key through Ray (a runtime_env or an actor argument is stored by the cluster and shown in its "
            f"dashboard and logs). Give every node the key: mount it as a file (a Kubernetes Secret volume, mode "
            f"0400) and set privacy.subject_key_file to its path, or set {privacy.subject_key_env} in the nodes' "
            "environment (then every worker there holds it); see docs/security.md"
        )
    checks = {check for check, _ in answers}
    if expected_check is not None:
        checks.add(expected_check)
    if len(checks) > 1:
        raise ConfigError(
            "the subject key differs between the cluster's nodes"
            + (" and this process" if expected_check is not None else "")
            + f" ({len(checks)} different keys, told apart by their key checks): digests would name different people "
            f"on different nodes. Give every node the store's one key ({privacy.subject_key_env} or "
            "privacy.subject_key_file). Nothing was started."
        )
    log.debug("all %d node(s) hold the subject key", len(nodes))
