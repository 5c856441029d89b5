"""Shared set-up for the pipeline recipes: logging, Ray, the digest key, MLflow lineage."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from orchestrator.config import PrivacyConfig, StorageConfig, TrackingConfig
from orchestrator.digests import SubjectHasher
from orchestrator.lineage import Lineage

__all__ = ["demo_hasher", "hasher_from_env", "init_logging", "init_ray", "make_lineage"]

log = logging.getLogger(__name__)


def init_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("mlflow", "alembic", "urllib3", "botocore", "s3fs", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(
            address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False
        )


def hasher_from_env(privacy: PrivacyConfig = PrivacyConfig()) -> SubjectHasher:
    return SubjectHasher.from_env(privacy.subject_key_env)


def demo_hasher(workdir: Path, privacy: PrivacyConfig = PrivacyConfig()) -> SubjectHasher:
    """The configured key if set; otherwise a demo key kept in ``<workdir>/subject.key`` (0600)."""
    if os.environ.get(privacy.subject_key_env):
        return hasher_from_env(privacy)
    key_file = workdir / "subject.key"
    if not key_file.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
        log.info("no %s set: generated a demo digest key in %s", privacy.subject_key_env, key_file)
    return SubjectHasher(key_file.read_text().strip().encode())


def make_lineage(tracking: TrackingConfig, storage: StorageConfig | str) -> Lineage | None:
    return Lineage(tracking, storage) if tracking.enabled else None
