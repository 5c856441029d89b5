"""Object storage by URL (local folder, ``file://`` or ``s3://``): immutable objects and exclusive creates.

Commits never rename: new immutable objects are written first, then a manifest is
published with a create-only-if-absent write. Exclusive create is looked up by protocol in
``_EXCLUSIVE_CREATORS`` (``file``: ``O_EXCL``; ``s3``: ``If-None-Match: *``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from orchestrator.errors import StorageConflictError, StorageCorruptError

__all__ = ["ObjectStore"]

log = logging.getLogger(__name__)


def _local_create_exclusive(fs: Any, path: str, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise StorageConflictError(
            f"{path} already exists: another writer published this version first. Reload the store state and retry."
        ) from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _s3_create_exclusive(fs: Any, path: str, data: bytes) -> None:
    from botocore.exceptions import ClientError

    bucket, key, _ = fs.split_path(path)
    conflict = StorageConflictError(
        f"s3://{bucket}/{key} already exists: another writer published this version first. "
        "Reload the store state and retry."
    )
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except FileExistsError as exc:  # s3fs maps 412 Precondition Failed to FileExistsError
        raise conflict from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            raise conflict from exc
        raise
    fs.invalidate_cache(path)


_EXCLUSIVE_CREATORS: dict[str, Callable[[Any, str, bytes], None]] = {
    "file": _local_create_exclusive,
    "local": _local_create_exclusive,
    "s3": _s3_create_exclusive,
    "s3a": _s3_create_exclusive,
}


class ObjectStore:
    """Keys are '/'-separated paths relative to the store root URL."""

    def __init__(self, uri: str, **storage_options: Any) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = url_to_fs(self.uri, **storage_options)
        protocol = self.fs.protocol
        self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        if self.protocol not in _EXCLUSIVE_CREATORS:
            raise StorageCorruptError(
                f"storage URI {uri!r} uses protocol {self.protocol!r}, which has no "
                f"create-if-absent write; use one of {sorted(_EXCLUSIVE_CREATORS)}"
            )
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.uri,))

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def url(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def put(self, key: str, data: bytes) -> None:
        """Write an immutable object (content-addressed keys make rewrites harmless)."""
        path = self._path(key)
        if self.protocol in {"file", "local"}:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            handle.write(data)

    def create_exclusive(self, key: str, data: bytes) -> None:
        """Create ``key`` only if absent; raise ``StorageConflictError`` otherwise."""
        _EXCLUSIVE_CREATORS[self.protocol](self.fs, self._path(key), data)

    def get(self, key: str) -> bytes:
        try:
            with self.fs.open(self._path(key), "rb") as handle:
                return bytes(handle.read())
        except FileNotFoundError as exc:
            raise StorageCorruptError(
                f"object {self.url(key)} is referenced but missing. Restore it from backup "
                "or retrain into a fresh storage URI."
            ) from exc

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive), sorted."""
        base = self._path(prefix).rstrip("/")
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        cut = len(self.root) + 1
        return sorted(p[cut:] if p.startswith(self.root) else p for p in found)

    def delete(self, keys: Iterable[str]) -> list[str]:
        """Delete objects; returns the keys that existed and were removed."""
        removed = []
        for key in keys:
            path = self._path(key)
            if self.fs.exists(path):
                self.fs.rm(path)
                removed.append(key)
        if removed:
            log.info("deleted %d object(s) under %s", len(removed), self.uri)
        return removed

    @staticmethod
    def open_url(url: str, mode: str = "rb") -> Any:
        return fsspec.open(url, mode)
