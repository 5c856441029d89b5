"""The one exception hierarchy of Expunge: every error says what was found and how to fix it."""

from __future__ import annotations

from shards.errors import (
    ConfigError,
    DataValidationError,
    ExpungeError,
    ShardRetrainFailed,
    StorageConflictError,
    StorageCorruptError,
)

__all__ = [
    "ConfigError",
    "DataValidationError",
    "ExpungeError",
    "LineagePurgeFailed",
    "ShardRetrainFailed",
    "ShardStartTimeout",
    "StorageConflictError",
    "StorageCorruptError",
    "UnknownSubjectError",
]


class UnknownSubjectError(ExpungeError):
    """A subject named in a request has no rows and no placement.

    The coordinator does not raise this for erasure (a receipt records ``not_found``
    instead); lookups that need an existing subject (e.g. recommendations) do.
    """


class LineagePurgeFailed(ExpungeError):
    """An erasure committed, but deleting the files of earlier MLflow model versions failed.

    Example scenario: ``mlflow gc`` cannot reach the artifact store. The store is already
    erased; finish with ``Lineage.purge_superseded(request_id, keep=<current version>)``.
    """


class ShardStartTimeout(ExpungeError):
    """A shard actor could not be placed on the cluster in time; nothing was changed.

    Example scenario: ``training.cpus_per_shard`` asks for more CPUs than any node has free.
    """
