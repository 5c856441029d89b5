"""What sees all shards: placement, routing, the coordinator, aggregation, lineage and receipts."""

from orchestrator.config import JobConfig, load_job_config
from orchestrator.coordinator import Coordinator
from orchestrator.digests import SubjectHasher
from orchestrator.errors import (
    ConfigError,
    DataValidationError,
    LetheError,
    ShardRetrainFailed,
    StorageConflictError,
    StorageCorruptError,
    UnknownSubjectError,
)
from orchestrator.receipts import ErasureReceipt

__all__ = [
    "ConfigError",
    "Coordinator",
    "DataValidationError",
    "ErasureReceipt",
    "JobConfig",
    "LetheError",
    "ShardRetrainFailed",
    "StorageConflictError",
    "StorageCorruptError",
    "SubjectHasher",
    "UnknownSubjectError",
    "load_job_config",
]
