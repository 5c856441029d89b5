"""The base of Expunge's one exception hierarchy, and the errors a shard itself can raise.

Every error says what was found and how to fix it. ``expunge.orchestrator.errors`` re-exports these
and adds the errors only the coordinator raises.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "DataValidationError",
    "ExpungeError",
    "InvalidSubjectIdError",
    "LinkInStoreError",
    "ModelImportError",
    "PurgedVersionError",
    "ShardRetrainFailed",
    "StorageConflictError",
    "StorageCorruptError",
    "StorageUnavailableError",
]


class ExpungeError(Exception):
    """Base class of every error Expunge raises on purpose.

    Subclasses keep their constructor arguments in ``self.args`` so that they pickle
    cleanly when they cross a Ray process boundary.
    """


class DataValidationError(ExpungeError):
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


class InvalidSubjectIdError(DataValidationError):
    """Subject ids that the identity rule (``expunge.shards.identity``) refuses; nothing was changed.

    Example scenario: ``forget --subject ""`` or a Python caller passing ``1001.0`` (a float
    is not an id), or a subjects file saved as Latin-1. Every refused id is listed by its
    position, never by its value, with the way to fix it.
    """


class ConfigError(ExpungeError):
    """A configuration value is missing or invalid.

    Example scenario: no HMAC key for subject digests is configured; the message names
    the environment variable to set.
    """


class LinkInStoreError(ConfigError):
    """A local store holds a symbolic link below its root; nothing was changed.

    Example scenario: a shard folder was moved to another disk and linked back. Expunge never
    follows a link inside a store (a purge must not reach outside it) and never skips one (what
    lies behind it would be neither purged nor scanned). Put the folder's contents in place of
    the link; a link to the store's root itself is fine.
    """


class ModelImportError(ConfigError):
    """The module of a custom model (``training.model.factory``) cannot be imported here.

    Example scenario: ``expunge forget`` runs from another folder than the ``train`` that named
    ``factory: "my_models:Logistic"``, so ``my_models.py`` is not on the import path. The
    module must be importable by ``train``, ``forget``, ``serve`` and every Ray worker that runs
    a shard: from the current folder, ``PYTHONPATH``, or an installed package.
    """

    def __init__(self, factory: str, module: str, cause: str) -> None:
        self.factory = factory
        self.module = module
        self.cause = cause
        super().__init__(factory, module, cause)

    def __str__(self) -> str:
        return (
            f"training.model.factory {self.factory!r}: the module {self.module!r} cannot be imported ({self.cause}). "
            "train, forget and serve all import it, and so does every Ray worker that runs a shard. Run the command "
            f"from the folder that holds {self.module.split('.')[0]!r}, or set PYTHONPATH to that folder, or "
            "`pip install` the package that holds it; on a Ray cluster, ship it to the workers too (`ray job submit "
            "--working-dir .`, or a runtime_env with `py_modules`)."
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.factory, self.module, self.cause))


class PurgedVersionError(ConfigError):
    """A registered model version that an erasure purged was asked for: its weights are deleted.

    Example scenario: a dashboard still loads ``models:/recs/2`` after erasure ``req-7`` committed
    version 3, or someone points the ``production`` alias back at version 2. Version 2 held the
    erased person's data, so its files were deleted; load (or point the alias at) ``use_version``.
    """

    def __init__(self, model_name: str, version: str, request_id: str, use_version: str, alias: str) -> None:
        self.model_name = model_name
        self.version = version
        self.request_id = request_id
        self.use_version = use_version
        self.alias = alias
        super().__init__(model_name, version, request_id, use_version, alias)

    def __str__(self) -> str:
        return (
            f"model version {self.model_name}/{self.version} was PURGED by erasure request {self.request_id!r}: "
            "its weights held data of a person who asked to be erased and were deleted. Use the newest version, "
            f"models:/{self.model_name}@{self.alias}; when this erasure committed that was version "
            f"{self.use_version} (a later erasure may have purged it too)."
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.model_name, self.version, self.request_id, self.use_version, self.alias))


class StorageConflictError(ExpungeError):
    """Another writer published the same manifest version first; nothing was changed.

    Example scenario: two coordinators commit an erasure on the same store at once.
    Reload the store state and retry the request.
    """


class StorageCorruptError(ExpungeError):
    """A manifest references an object that is missing or unreadable.

    Example scenario: a checkpoint was deleted by hand, or a manifest was truncated. Run
    ``expunge train`` again into a fresh storage URI, or restore the object from backup.
    """


class ShardRetrainFailed(ExpungeError):
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


class StorageUnavailableError(ExpungeError):
    """The store cannot be reached or read with the credentials at hand; nothing was changed.

    Example scenario: ``storage.endpoint_url`` points at an S3 server that is down, or the AWS
    credentials lack access to the bucket. The message names the store and the cause.
    """
