"""What sees all shards: placement, routing, the coordinator, aggregation, lineage and receipts.

Public names are imported lazily so that ``import orchestrator`` stays cheap for SDK users and
CLI start-up; ``shards`` never imports this package (the layers point one way).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConfigError",
    "Coordinator",
    "DataValidationError",
    "ErasureReceipt",
    "ExpungeClient",
    "ExpungeError",
    "JobConfig",
    "MembershipAudit",
    "ShardRetrainFailed",
    "StorageConflictError",
    "StorageCorruptError",
    "SubjectHasher",
    "UnknownSubjectError",
    "VerifyReport",
    "load_job_config",
    "verify_erasure",
]

_HOMES = {
    "Coordinator": "orchestrator.coordinator",
    "ErasureReceipt": "orchestrator.receipts",
    "ExpungeClient": "orchestrator.client",
    "JobConfig": "orchestrator.config",
    "load_job_config": "orchestrator.config",
    "SubjectHasher": "orchestrator.digests",
    "MembershipAudit": "orchestrator.audit",
    "VerifyReport": "orchestrator.verify",
    "verify_erasure": "orchestrator.verify",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("orchestrator.errors"), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
