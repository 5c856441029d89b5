"""The one exception hierarchy of Lethe: every error says what was found and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "DataValidationError",
    "LetheError",
    "LineagePurgeFailed",
    "ShardRetrainFailed",
    "ShardStartTimeout",
    "StorageConflictError",
    "StorageCorruptError",
    "UnknownSubjectError",
]


class LetheError(Exception):
    """Base class of every error Lethe raises on purpose.

    Subclasses keep their constructor arguments in ``self.args`` so that they pickle
    cleanly when they cross a Ray process boundary.
    """


class DataValidationError(LetheError):
    """Input data failed validation; nothing was written.

    Example scenario: a Parquet file lacks the mapped ``subject_id`` column and has
    duplicate record ids. Both problems are listed in one error.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(source, self.problems)

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{len(self.problems)} problem(s) in {self.source}; nothing was changed:\n{lines}"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.source, self.problems))


class ConfigError(LetheError):
    """A configuration value is missing or invalid.

    Example scenario: no HMAC key for subject digests is configured; the message names
    the environment variable to set.
    """


class UnknownSubjectError(LetheError):
    """A subject named in a request has no rows and no placement.

    The coordinator does not raise this for erasure (a receipt records ``not_found``
    instead); lookups that need an existing subject (e.g. recommendations) do.
    """


class StorageConflictError(LetheError):
    """Another writer published the same manifest version first; nothing was changed.

    Example scenario: two coordinators commit an erasure on the same store at once.
    Reload the store state and retry the request.
    """


class StorageCorruptError(LetheError):
    """A manifest references an object that is missing or unreadable.

    Example scenario: a checkpoint was deleted by hand. Run ``python -m pipelines.train``
    again into a fresh storage URI, or restore the object from backup.
    """


class ShardRetrainFailed(LetheError):
    """A shard actor failed while training or retraining; the store is unchanged.

    Example scenario: an actor ran out of memory during ``retrain_from``. The previous
    model version stays published; retry the request once the cause is fixed.
    """

    def __init__(self, shard_id: int, cause: str) -> None:
        self.shard_id = shard_id
        self.cause = cause
        super().__init__(shard_id, cause)

    def __str__(self) -> str:
        return (
            f"shard {self.shard_id} failed to (re)train: {self.cause}. The published model "
            "version is unchanged; fix the cause and submit the request again."
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.shard_id, self.cause))


class LineagePurgeFailed(LetheError):
    """An erasure committed, but deleting the files of earlier MLflow model versions failed.

    Example scenario: ``mlflow gc`` cannot reach the artifact store. The store is already
    erased; finish with ``Lineage.purge_superseded(request_id, keep=<current version>)``.
    """


class ShardStartTimeout(LetheError):
    """A shard actor could not be placed on the cluster in time; nothing was changed.

    Example scenario: ``training.cpus_per_shard`` asks for more CPUs than any node has free.
    """
