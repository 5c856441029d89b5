"""The one exception hierarchy of Expunge: every error says what was found and how to fix it."""

from __future__ import annotations

from expunge.shards.errors import (
    ConfigError,
    DataValidationError,
    ExpungeError,
    InvalidSubjectIdError,
    LinkInStoreError,
    ModelImportError,
    PurgedVersionError,
    ShardRetrainFailed,
    StorageConflictError,
    StorageCorruptError,
    StorageUnavailableError,
)

__all__ = [
    "ArtifactStoreNotErasable",
    "AuthenticationError",
    "ClusterUnavailableError",
    "ConfigError",
    "DataValidationError",
    "ErasedSubjectsInDataError",
    "ErasureWaitTimeout",
    "ExpungeError",
    "IdempotencyConflictError",
    "InvalidSubjectIdError",
    "LeaseLostError",
    "LineagePurgeFailed",
    "LinkInStoreError",
    "ModelImportError",
    "PermissionDeniedError",
    "PersonalDataInTextError",
    "PurgedVersionError",
    "RegistryOfAnotherStoreError",
    "ServiceUnavailableError",
    "ShardRetrainFailed",
    "ShardStartTimeout",
    "StorageConflictError",
    "StorageCorruptError",
    "StorageUnavailableError",
    "StoreBusyError",
    "TrackingUnreachable",
    "UnknownRequestError",
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


class TrackingUnreachable(ExpungeError):
    """The MLflow tracking server or database named by ``tracking.uri`` does not answer; nothing was changed.

    Example scenario: ``tracking.uri: http://mlflow:5000`` while the server is down or listens
    on another port. Expunge asks ``/health`` once with a short timeout instead of letting
    MLflow retry for minutes.
    """

    def __init__(self, uri: str, cause: str) -> None:
        self.uri = uri
        self.cause = cause
        super().__init__(uri, cause)

    def __str__(self) -> str:
        return (
            f"the MLflow tracking store {self.uri!r} cannot be reached ({self.cause}); nothing was changed. "
            "Start the server (or fix tracking.uri / --tracking-uri), check `curl <uri>/health`, and run "
            "the command again; tracking.enabled: false runs without MLflow."
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.uri, self.cause))


class ArtifactStoreNotErasable(ExpungeError):
    """MLflow would keep model files where Expunge cannot delete every stored copy; refused before any write.

    Example scenario: the experiment's artifact root is on a versioned S3 bucket and the
    credentials lack ``s3:ListBucketVersions`` / ``s3:DeleteObjectVersion``, or the tracking
    server proxies artifacts and ``MLFLOW_ARTIFACTS_DESTINATION`` does not say where they go:
    purging an erased subject's model version would leave earlier object versions behind.
    """

    def __init__(self, root: str, cause: str, fix: str) -> None:
        self.root = root
        self.cause = cause
        self.fix = fix
        super().__init__(root, cause, fix)

    def __str__(self) -> str:
        return (
            f"MLflow artifact root {self.root!r}: {self.cause}, so purging a model version could leave copies "
            f"of erased subjects' weights behind; nothing was changed. {self.fix}"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.root, self.cause, self.fix))


class ServiceUnavailableError(ExpungeError):
    """No Expunge service answers under the given name and namespace (or it stopped answering).

    Example scenario: ``RayClient.connect(namespace="expunge")`` before ``expunge serve`` ran on
    that cluster, or after ``expunge serve --stop``; or a call of ``Client(url, token)`` while
    nothing answers at ``url`` for its ``retry_s``.
    """


class ClusterUnavailableError(ExpungeError):
    """Ray could not be started on this machine, or the cluster named by ``RAY_ADDRESS`` could not be joined.

    Nothing was changed. Example scenario: another program holds the port Ray's GCS wants
    (``RAY_GCS_SERVER_PORT``), ``/tmp`` is full, or the machine is so loaded that Ray's processes
    do not come up within Ray's start-up timeout. Infrastructure, not input: fix the cause and
    run the same command again.
    """

    def __init__(self, what: str, cause: str) -> None:
        self.what = what
        self.cause = cause
        super().__init__(what, cause)

    def __str__(self) -> str:
        return (
            f"{self.what} failed ({self.cause}); nothing was changed. Check that Ray's ports are free and /tmp has "
            "space (Ray's logs are in its session folder, by default /tmp/ray/session_latest/logs), or point the job at a running cluster "
            "with RAY_ADDRESS, then run the same command again."
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.what, self.cause))


class UnknownRequestError(ExpungeError):
    """``status``/``wait`` named a request id the service's journal does not hold.

    Example scenario: a typo in the id, or an id from another store's service.
    """


class ErasureWaitTimeout(ExpungeError):
    """``wait`` gave up before the request reached the stage asked for; the request itself goes on.

    Example scenario: ``wait(request_id, stage="registered", timeout=1)`` while MLflow is slow;
    call ``wait`` again (or ``status``) later.
    """


class StoreBusyError(ExpungeError):
    """Another live process holds the store's write lease; nothing was changed.

    Example scenario: ``expunge forget`` (without ``--service``) or a second ``expunge serve``
    against a store that a running service writes. The message names the holder (host, pid,
    since); send the work to that service, or wait until it stops.
    """


class LeaseLostError(StoreBusyError):
    """This process's write lease ended before a commit (taken over, or not renewed); nothing was published.

    Example scenario: the store was unreachable for longer than ``storage.lease_ttl_s`` while a
    retrain ran, and another writer took the lease over. Submit the request again.
    """


class IdempotencyConflictError(ConfigError):
    """An idempotency key already names a request for other subjects; nothing was changed (HTTP 409).

    Example scenario: a client reuses ticket number ``GDPR-0042`` as the key of a new request for
    another person. Use a new key for a new request.
    """


class AuthenticationError(ExpungeError):
    """The HTTP API got no bearer token, or one it does not know or that was revoked (HTTP 401).

    Example scenario: a recommender service calls ``Client(url, token)`` with a token that an
    operator revoked (``expunge tokens revoke``). Ask the operator for a new one
    (``expunge tokens create``); nothing was changed.
    """


class PermissionDeniedError(ExpungeError):
    """The bearer token is valid but lacks the scope the call needs (HTTP 403); nothing was changed.

    Example scenario: a token created with ``--scope erasure:read`` submits an erasure, which
    needs ``erasure:submit``. Deny by default: a token holds exactly the scopes it was made with.
    """


class PersonalDataInTextError(ConfigError):
    """Free text given with a request (``reason``, ``ticket``) names a subject, an e-mail address or a phone number.

    Refused before anything is stored (HTTP 400, CLI exit 2). Example scenario: a privacy desk
    pastes "erase jane@example.com, user-7" into ``reason``. Give a ticket reference instead.
    """


class RegistryOfAnotherStoreError(ConfigError):
    """The MLflow registry this store records serves another store; nothing was changed.

    Example scenario: ``expunge forget`` on a copy of a production store, whose recorded registry
    still serves the original: publishing there would move the original's alias to the copy's
    model and purge the original's versions. Work on a copy with tracking off or a registry of its
    own (``--tracking-uri``); a store that moved takes its registry over when its old place is empty.
    """
