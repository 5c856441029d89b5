"""The one exception hierarchy of Expunge: every error says what was found and how to fix it."""

from __future__ import annotations

from shards.errors import (
    ConfigError,
    DataValidationError,
    ExpungeError,
    InvalidSubjectIdError,
    ShardRetrainFailed,
    StorageConflictError,
    StorageCorruptError,
)

__all__ = [
    "ConfigError",
    "DataValidationError",
    "ErasedSubjectsInDataError",
    "ExpungeError",
    "InvalidSubjectIdError",
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


class ErasedSubjectsInDataError(ExpungeError):
    """Training rows hold subjects this store has erased (its tombstones); nothing was written.

    Example scenario: a nightly ``train`` reads a source export that still holds the rows of a
    person erased last week. Training would bring them back, so it stops; only digests and
    counts are reported.
    """

    def __init__(self, rows: int, subjects: int, store: str) -> None:
        self.rows = rows
        self.subjects = subjects
        self.store = store
        super().__init__(rows, subjects, store)

    def __str__(self) -> str:
        return (
            f"the training rows hold {self.rows} row(s) of {self.subjects} subject(s) erased from {self.store}; "
            "nothing was written. Remove them from the source, or set `data.erased_subjects: drop` to leave "
            "them out (recorded in the new version), or re-admit a person who gave new consent with "
            "`expunge readmit --subject ID --reason TEXT`."
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.rows, self.subjects, self.store))
