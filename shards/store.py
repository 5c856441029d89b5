"""Object storage by URL (local folder, ``file://`` or ``s3://``): immutable objects and exclusive creates.

Commits never rename: new immutable objects are written first, then a manifest is
published with a create-only-if-absent write. Protocol-specific operations are looked up
in registries keyed by protocol (``file``: ``O_EXCL``; ``s3``: ``If-None-Match: *``, and
deletion of every object version and delete marker on versioned buckets).
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from fsspec.core import url_to_fs

from expunge.shards.config import StorageConfig
from expunge.shards.errors import (
    ConfigError,
    ExpungeError,
    LinkInStoreError,
    StorageConflictError,
    StorageCorruptError,
    StorageUnavailableError,
)

__all__ = ["FaultPlan", "InjectedFault", "ObjectInfo", "ObjectStore", "ObjectVersion"]

log = logging.getLogger(__name__)

#: Keys whose writes crash tests do not count (``FaultPlan``): the write lease's timed renewals.
_UNCOUNTED = "lease/"
#: Attempts of s3fs's retry loop around each call (each with botocore's own attempts and timeouts).
_S3FS_RETRIES = 2
_CONFLICT_HINT = "another writer published this version first. Reload the store state and retry."


class InjectedFault(ExpungeError):
    """Raised by the fault-injection hook (``EXPUNGE_FAULT_AT_WRITE``); used only by crash tests."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    modified: datetime
    size: int = 0  # bytes of the current version
    #: Changes when the object is rewritten, even within the time's resolution: S3's ETag; a local
    #: file's inode and status-change time (which ``os.utime`` cannot set back).
    tag: str = ""


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version of a key (``version_id`` is None on unversioned stores)."""

    key: str
    version_id: str | None
    is_delete_marker: bool = False
    modified: datetime | None = None

    def __str__(self) -> str:
        return self.key if self.version_id is None else f"{self.key}?versionId={self.version_id}"

    @property
    def on_unversioned_store(self) -> bool:
        return self.version_id in (None, "null")


class FaultPlan:
    """Counts writes in this process and fails the N-th (``EXPUNGE_FAULT_AT_WRITE=N``).

    ``EXPUNGE_FAULT_MODE=raise`` raises ``InjectedFault``; ``kill`` ends the process at once,
    as a crash would. Unset (always, outside crash tests): no effect.
    """

    writes = 0

    @classmethod
    def reset(cls) -> None:
        cls.writes = 0

    @classmethod
    def before_write(cls, what: str) -> None:
        target = os.environ.get("EXPUNGE_FAULT_AT_WRITE")
        if not target:
            return
        # EXPUNGE_FAULT_MATCH counts only writes whose description contains it (e.g. "create ensemble/");
        # EXPUNGE_FAULT_ONCE names a marker file: the fault fires only while it is absent, so a
        # process that Ray restarts after the injected crash runs on.
        if what.split(" ", 1)[-1].startswith(_UNCOUNTED):
            return  # lease upkeep is timed, not ordered: counting it would move every crash point
        match = os.environ.get("EXPUNGE_FAULT_MATCH")
        if match and match not in what:
            return
        cls.writes += 1
        if cls.writes == int(target):
            once = os.environ.get("EXPUNGE_FAULT_ONCE")
            if once:
                try:
                    with open(once, "x"):
                        pass
                except FileExistsError:
                    return
            if os.environ.get("EXPUNGE_FAULT_MODE", "raise") == "kill":
                os._exit(137)
            raise InjectedFault(f"injected fault at write {cls.writes} ({what})")


# ----- protocol registry ------------------------------------------------------------------------
def _local_put(path: str, data: bytes) -> None:
    """Whole-object replace: a crash never leaves a truncated object under a published key."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)  # an object write, not a commit: manifests publish
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _local_create_exclusive(fs: Any, path: str, data: bytes) -> None:
    """Create ``path`` only if absent, with all of ``data`` visible at once.

    The bytes go to a temporary file first, then ``os.link`` publishes it under ``path``, which
    fails when ``path`` exists (create-if-absent, like ``O_EXCL``). Readers never see a
    half-written manifest: with ``O_EXCL`` the name appears before its bytes are written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, target)
        except FileExistsError as exc:
            raise StorageConflictError(f"{path} already exists: {_CONFLICT_HINT}") from exc
    finally:
        Path(temporary).unlink(missing_ok=True)


def _s3_create_exclusive(fs: Any, path: str, data: bytes) -> None:
    from botocore.exceptions import ClientError

    bucket, key, _ = fs.split_path(path)
    conflict = StorageConflictError(f"s3://{bucket}/{key} already exists: {_CONFLICT_HINT}")
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except FileExistsError as exc:  # s3fs maps 412 Precondition Failed to FileExistsError
        raise conflict from exc
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            raise conflict from exc
        raise
    fs.invalidate_cache(path)


_Version = tuple[str, str | None, bool, datetime | None]


def _local_entries(path: str, skip: frozenset[str] = frozenset()) -> Iterator[os.DirEntry[str]]:
    """The files under the folder ``path``, recursively, as ``os.scandir`` entries.

    What fsspec's ``find`` lists, at a tenth of its cost per file, which the service's commits pay
    on every listing. A file or folder removed while it is listed is left out (fsspec raises).
    Folders named in ``skip`` are not entered.

    Raises:
        LinkInStoreError: a symbolic link below ``path`` (``_linked``). Expunge writes none. Followed, a
            purge could delete files outside the store and a loop would never end; skipped, what
            lies behind it would be neither purged nor scanned.
    """
    folders = [path.rstrip("/")]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_symlink():
                        raise LinkInStoreError(_linked(entry.path))
                    if entry.is_dir():
                        if entry.name not in skip:
                            folders.append(entry.path)
                        continue
                except FileNotFoundError:
                    continue
                yield entry


def _linked(path: str) -> str:
    """The message of a symbolic link met at ``path`` inside a local store."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (
        f"{path} is a symbolic link inside a local store: put what it links to in its place (a link to the "
        f"store's root is fine). Expunge never lists, writes or purges through one (a purge must not reach "
        f"outside the store), so what lies behind it would be neither purged nor scanned. It links to {target}"
    )


def _refuse_links(root: str, key: str, whole: bool) -> None:
    """``LinkInStoreError`` (``_linked``) when a folder between ``root`` and ``key`` is a symbolic link; with
    ``whole``, ``key`` itself too. Stops at the first part that does not exist (a write creates real folders)."""
    parts = [p for p in key.split("/") if p]
    path = root
    for part in parts if whole else parts[:-1]:
        path = f"{path}/{part}"
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(mode):
            raise LinkInStoreError(_linked(path))


def _local_files(path: str, skip: frozenset[str] = frozenset()) -> list[tuple[str, os.stat_result]]:
    """``_local_entries(path, skip)`` with their stat (or ``path`` itself, a file); [] when ``path`` is absent."""
    try:
        top = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not stat.S_ISDIR(top.st_mode):
        return [(path.rstrip("/"), top)]
    found: list[tuple[str, os.stat_result]] = []
    for entry in _local_entries(path, skip):
        try:
            found.append((entry.path, entry.stat()))
        except FileNotFoundError:
            continue
    return found


def _local_names(path: str) -> list[str]:
    """The paths of ``_local_files(path)`` without a stat of each file (the folder entries' types suffice)."""
    if not os.path.isdir(path):
        return [path] if os.path.exists(path) else []
    return [entry.path for entry in _local_entries(path)]


def _stat_tag(info: os.stat_result) -> str:
    return f"{info.st_ino}:{info.st_ctime_ns}"


def _stat_modified(info: os.stat_result) -> datetime:
    return datetime.fromtimestamp(info.st_mtime, tz=UTC)


def _local_versions(fs: Any, path: str) -> list[_Version]:
    return [(p, None, False, _stat_modified(info)) for p, info in _local_files(path)]


def _s3_versions(fs: Any, path: str) -> list[_Version]:
    """Every version and delete marker under a prefix (pages of 1000)."""
    bucket, prefix, _ = fs.split_path(path)
    if path.endswith("/") and prefix and not prefix.endswith("/"):
        prefix += "/"  # a folder, not every key that merely starts with its name
    found: list[_Version] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = fs.call_s3("list_object_versions", **kwargs)
        for entry in page.get("Versions", []):
            found.append((f"{bucket}/{entry['Key']}", entry.get("VersionId"), False, entry.get("LastModified")))
        for entry in page.get("DeleteMarkers", []):
            found.append((f"{bucket}/{entry['Key']}", entry.get("VersionId"), True, entry.get("LastModified")))
        if not page.get("IsTruncated"):
            break
        kwargs["KeyMarker"] = page.get("NextKeyMarker")
        kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker")
    # "null" is a real version id: the version written while versioning was off. Deleting
    # without it would only add a delete marker and leave those bytes in place.
    return found


def _local_delete_versions(fs: Any, paths: list[tuple[str, str | None]]) -> None:
    """Unlink each file (listed by ``_local_files``: never a folder); one already gone is skipped.

    One ``os.unlink``, where fsspec's ``exists`` and ``rm`` took four system calls (stat, isdir,
    islink, remove) and the path parsing around them; the service's purges pay it on each commit.
    """
    for path, _ in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue


def _s3_delete_versions(fs: Any, paths: list[tuple[str, str | None]]) -> None:
    by_bucket: dict[str, list[dict[str, str]]] = {}
    for path, version in paths:
        bucket, key, _ = fs.split_path(path)
        entry = {"Key": key}
        if version is not None:
            entry["VersionId"] = version
        by_bucket.setdefault(bucket, []).append(entry)
    for bucket, objects in by_bucket.items():
        for start in range(0, len(objects), 1000):
            response = fs.call_s3(
                "delete_objects", Bucket=bucket, Delete={"Objects": objects[start : start + 1000], "Quiet": True}
            )
            if response.get("Errors"):
                raise StorageUnavailableError(  # a permission, not a damaged store: exit 4, retried
                    f"S3 refused to delete {len(response['Errors'])} object version(s) in {bucket}: {response['Errors'][:3]}. Check the credentials' s3:DeleteObjectVersion permission."
                )
        fs.invalidate_cache(bucket)


@dataclass(frozen=True)
class _Protocol:
    create_exclusive: Callable[[Any, str, bytes], None]
    versions: Callable[[Any, str], list[_Version]]
    delete_versions: Callable[[Any, list[tuple[str, str | None]]], None]


_LOCAL = _Protocol(_local_create_exclusive, _local_versions, _local_delete_versions)
_S3 = _Protocol(_s3_create_exclusive, _s3_versions, _s3_delete_versions)
_PROTOCOLS: dict[str, _Protocol] = {"file": _LOCAL, "local": _LOCAL, "s3": _S3, "s3a": _S3}


def _no_credentials(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is botocore's ``NoCredentialsError``."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__name__ == "NoCredentialsError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unreachable(exc: BaseException) -> bool:
    """Errors that mean "cannot reach or may not read the store", as opposed to bugs or missing keys."""
    if isinstance(exc, ConnectionError | PermissionError | TimeoutError):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 support installed: nothing of botocore can be raised either
        return False
    # s3fs turns S3's answers into OSError subclasses with the botocore error as their cause.
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, BotoCoreError):
            return True
        if isinstance(seen, ClientError):
            error = seen.response.get("Error", {})
            status = int(seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return error.get("Code", "") in _UNREACHABLE_CODES or status >= 500
        seen = seen.__cause__ or seen.__context__
    return False


#: S3 error codes that mean "cannot use the store now" (credentials, bucket, throttling, server faults).
_UNREACHABLE_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "ExpiredToken",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
    }
)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reachable(method: Callable[Concatenate[ObjectStore, _P], _R]) -> Callable[Concatenate[ObjectStore, _P], _R]:
    """Turn "cannot reach the store" failures of an ``ObjectStore`` method into one typed error."""

    def wrapper(self: ObjectStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except ExpungeError:
            raise
        except Exception as exc:
            if not _unreachable(exc):
                raise
            if _no_credentials(exc):
                # Retryable all the same (exit 4): an instance role's metadata service that does not answer
                # for a moment reads as no credentials, and a service must retry its batch, not fail it.
                raise StorageUnavailableError(
                    f"cannot use the store {self.uri}: no AWS credentials were found. Set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or storage.profile) in the environment of this "
                    "process; with an instance role, its metadata service did not answer. Nothing was changed."
                ) from exc
            raise StorageUnavailableError(
                f"cannot use the store {self.uri}: {type(exc).__name__}: {exc}. Check the URI, "
                "storage.endpoint_url (or AWS_ENDPOINT_URL_S3), the network, and the AWS credentials in "
                "the environment; nothing was changed."
            ) from exc

    functools.update_wrapper(wrapper, method)
    return wrapper


class ObjectStore:
    """Keys are '/'-separated paths relative to the store root URL.

    A local store holds no symbolic link below its root (a link *to* the root is fine): a write
    through one, or a listing that meets one, raises ``LinkInStoreError`` (a ``ConfigError``) naming
    it and changes nothing.
    Skipped, what lies behind a link would never be purged or scanned; followed, a purge could
    delete files outside the store.
    """

    def __init__(self, storage: StorageConfig | str) -> None:
        self.config = storage if isinstance(storage, StorageConfig) else StorageConfig(uri=storage)
        self.uri = self.config.uri.rstrip("/")
        scheme = self.uri.split("://", 1)[0] if "://" in self.uri else "file"
        if not self.uri or scheme not in _PROTOCOLS:
            raise ConfigError(
                f"storage URI {self.uri!r} is not supported: use a local folder, file:///path or "
                "s3://bucket/prefix (stores need a create-if-absent write, which these provide)"
            )
        try:
            self.fs, root = url_to_fs(self.uri, **self.config.storage_options())
        except (ImportError, ValueError, OSError) as exc:
            raise ConfigError(f"storage URI {self.uri!r} cannot be opened: {exc}") from exc
        protocol = self.fs.protocol
        self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        self._ops = _PROTOCOLS[self.protocol]
        if self._ops is _S3:
            # s3fs's own retry loop (5 by default) multiplies botocore's: bound the whole call.
            self.fs.retries = _S3FS_RETRIES
        self.root = root.rstrip("/")
        #: A folder on this machine (plain file calls: fsspec's local layer costs more than the I/O), not S3.
        self.local = self._ops is _LOCAL

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.config,))

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _key(self, path: str) -> str:
        return path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path

    def url(self, key: str) -> str:
        return f"{self.uri}/{key}"

    @_reachable
    def put(self, key: str, data: bytes) -> None:
        """Write an immutable object (content-addressed keys make rewrites harmless)."""
        FaultPlan.before_write(f"put {key}")
        path = self._path(key)
        if self.local:
            _refuse_links(self.root, key, whole=False)
            _local_put(path, data)
            return
        with self.fs.open(path, "wb") as handle:  # an S3 PUT replaces an object whole or not at all
            handle.write(data)

    @_reachable
    def create_exclusive(self, key: str, data: bytes) -> None:
        """Create ``key`` only if absent; raise ``StorageConflictError`` otherwise."""
        FaultPlan.before_write(f"create {key}")
        if self.local:  # the key itself too: a link there would read as another writer's object
            _refuse_links(self.root, key, whole=True)
        self._ops.create_exclusive(self.fs, self._path(key), data)

    @_reachable
    def get(self, key: str, version_id: str | None = None) -> bytes:
        path = self._path(key)
        try:
            if version_id is not None:
                # max_concurrency=1: the concurrent path sizes the *current* version first.
                return bytes(self.fs.cat_file(path, version_id=version_id, max_concurrency=1))
            if self.local:
                return Path(path).read_bytes()
            with self.fs.open(path, "rb") as handle:
                return bytes(handle.read())
        except FileNotFoundError as exc:
            raise self._missing(key) from exc

    def _missing(self, key: str) -> StorageCorruptError:
        return StorageCorruptError(
            f"object {self.url(key)} is referenced but missing. Restore it from backup "
            "or retrain into a fresh storage URI."
        )

    @_reachable
    def exists(self, key: str) -> bool:
        if self.local:
            return os.path.exists(self._path(key))
        return bool(self.fs.exists(self._path(key)))

    @_reachable
    def info(self, key: str) -> ObjectInfo:
        """``key``'s last-modified time and size, as ``list_info`` gives them, in one request.

        Raises:
            StorageCorruptError: ``key`` does not exist.
        """
        path = self._path(key)
        try:
            if self.local:
                found = os.stat(path)
                return ObjectInfo(key, _stat_modified(found), found.st_size, _stat_tag(found))
            bucket, name, _ = self.fs.split_path(path)
            page = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=name, MaxKeys=1)
            listed = page.get("Contents", [])
            if not listed or listed[0]["Key"] != name:  # the first key of the prefix is the key itself
                raise FileNotFoundError(path)
            first = listed[0]
            return ObjectInfo(key, _modified(first), int(first.get("Size") or 0), str(first.get("ETag") or ""))
        except FileNotFoundError as exc:
            raise self._missing(key) from exc

    @_reachable
    def list_keys(self, prefix: str) -> list[str]:
        """Current keys under ``prefix`` (recursive), sorted."""
        if self.local:  # names only: no stat per file
            _refuse_links(self.root, prefix, whole=True)
            return sorted(self._key(p) for p in _local_names(self._path(prefix).rstrip("/")))
        return [info.key for info in self.list_info(prefix)]

    @_reachable
    def list_info(self, prefix: str) -> list[ObjectInfo]:
        """Current keys under ``prefix`` with their last-modified times and sizes in bytes."""
        base = self._path(prefix).rstrip("/")
        if self.local:
            _refuse_links(self.root, prefix, whole=True)
            found = sorted(_local_files(base))
            return [ObjectInfo(self._key(p), _stat_modified(info), info.st_size, _stat_tag(info)) for p, info in found]
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base, detail=True)
        return sorted(
            (
                ObjectInfo(self._key(p), _modified(info), int(info.get("size") or 0), str(info.get("ETag") or ""))
                for p, info in found.items()
            ),
            key=lambda i: i.key,
        )

    def holds_keys(self, prefix: str) -> bool | None:
        """Whether any key lies in the folder ``prefix``, by the store's own answer; None where no answer came, or
        one that is not an S3 server's (a web server or proxy answering 404 at that address: not "empty").

        A bucket S3 says does not exist holds none. Never raises for an unreachable store.
        """
        if self.local:
            try:
                return bool(self.list_keys(prefix))
            except ExpungeError:
                return None
        bucket, key, _ = self.fs.split_path(self._path(prefix).rstrip("/") + "/")
        try:
            answer = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
        except Exception as exc:  # s3fs turns S3's own "no such bucket" into FileNotFoundError, keeping it
            cause = getattr(exc.__cause__, "response", None) or {}
            return False if cause.get("Error", {}).get("Code") == "NoSuchBucket" else None
        if "IsTruncated" not in answer:
            return None  # a 2xx that is no listing
        return bool(answer.get("KeyCount") or answer.get("Contents"))

    @_reachable
    def children(self, prefix: str) -> list[str]:
        """The names directly below ``prefix`` (folders and objects; a symbolic link by its own name), sorted."""
        base = self._path(prefix).rstrip("/")
        if self.local:
            try:
                return sorted(entry.name for entry in os.scandir(base))
            except (FileNotFoundError, NotADirectoryError):
                return []
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))

    @_reachable
    def list_versions(self, prefix: str = "", skip: Iterable[str] = ()) -> list[ObjectVersion]:
        """Every stored version of every key under ``prefix``, delete markers included.

        ``skip``: folder names whose keys are left out (``("manifests",)``: not
        ``shards/0001/manifests/...``). A local store does not enter them, so a listing does not
        grow with what they hold; S3 lists them and drops them (one LIST either way).
        """
        base = self._path(prefix) if prefix else self.root + "/"
        names = frozenset(skip)
        if self.local:
            _refuse_links(self.root, prefix, whole=True)
        versions: list[_Version]
        if self.local and names:
            versions = [(p, None, False, _stat_modified(info)) for p, info in _local_files(base, names)]
        else:
            versions = self._ops.versions(self.fs, base)
        found = (ObjectVersion(self._key(p), v, m, t) for p, v, m, t in versions)
        if names:
            found = (o for o in found if names.isdisjoint(o.key.split("/")[:-1]))
        return sorted(found, key=lambda o: (o.key, o.version_id or ""))

    @_reachable
    def delete(self, keys: Iterable[str]) -> list[ObjectVersion]:
        """Physically delete keys: on a versioned bucket every version and delete marker."""
        wanted = set(keys)
        if not wanted:
            return []
        if not all(k.startswith(_UNCOUNTED) for k in wanted):
            FaultPlan.before_write(f"delete {len(wanted)} key(s)")
        versions = [v for key in sorted(wanted) for v in self.list_versions(key) if v.key == key]
        self._ops.delete_versions(self.fs, [(self._path(v.key), v.version_id) for v in versions])
        self.fs.invalidate_cache(self.root)
        if versions:
            log.debug("deleted %d object version(s) under %s", len(versions), self.uri)
        return versions


def _modified(info: dict[str, Any]) -> datetime:
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value or 0.0), tz=UTC)
