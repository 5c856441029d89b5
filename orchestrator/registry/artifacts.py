"""Where a LoggedModel's files are really stored, and deleting every stored copy of them.

``mlflow gc`` deletes the current objects only: on a versioned S3 bucket every earlier object
version (the weights) stays. So Expunge deletes artifacts itself, like the shard store deletes
its objects: local folders are removed, and on S3 every object version and delete marker under
the model's prefix. Roots it cannot erase that way are refused when a ``Lineage`` opens, before
anything is written. Proxied artifacts (``mlflow-artifacts:``, the tracking server's
``--artifacts-destination``) are erased at that destination, which ``MLFLOW_ARTIFACTS_DESTINATION``
names (MLflow's own variable for it); S3 endpoints follow ``MLFLOW_S3_ENDPOINT_URL`` as MLflow does.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from expunge.orchestrator.config import StorageConfig
from expunge.orchestrator.errors import ArtifactStoreNotErasable
from expunge.shards.store import ObjectStore

__all__ = ["ArtifactEraser"]

log = logging.getLogger(__name__)

_PROXY_PATH = "/api/2.0/mlflow-artifacts/artifacts"
_S3 = ("s3", "s3a")
_VERSION_FIX = (
    "Give these credentials s3:GetBucketVersioning, s3:ListBucketVersions and s3:DeleteObjectVersion on "
    "the bucket, or use an unversioned bucket for tracking.artifact_location."
)


class ArtifactEraser:
    """Checks at start that an artifact root can be erased, and erases one LoggedModel's location."""

    def __init__(self, destination: str | None = None, s3_endpoint: str | None = None) -> None:
        self.destination = destination
        self.s3_endpoint = s3_endpoint

    @classmethod
    def from_env(cls) -> ArtifactEraser:
        """MLflow's own variables: the proxied artifacts' destination and the S3 endpoint."""
        return cls(os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"), os.environ.get("MLFLOW_S3_ENDPOINT_URL"))

    def resolve(self, location: str, root: str) -> str:
        """The URL that holds the bytes of ``location`` (a proxied one mapped to the server's destination)."""
        parsed = urlparse(location)
        if parsed.scheme in ("", "file") or parsed.scheme in _S3:
            return location
        proxied = parsed.scheme == "mlflow-artifacts" or (
            parsed.scheme in ("http", "https") and _PROXY_PATH in parsed.path
        )
        if not proxied:
            raise ArtifactStoreNotErasable(
                root,
                f"Expunge cannot delete every stored copy on {parsed.scheme}:// storage",
                "Set tracking.artifact_location to a local folder or an s3:// URL for this experiment "
                "(a new experiment name, since an experiment's artifact root never changes).",
            )
        if not self.destination:
            raise ArtifactStoreNotErasable(
                root,
                "the tracking server proxies model files and this process does not know where it stores them",
                "Set MLFLOW_ARTIFACTS_DESTINATION to the server's --artifacts-destination (with credentials "
                "for it here), so Expunge deletes every object version itself; or set "
                "tracking.artifact_location to an s3:// URL or folder this process can reach.",
            )
        path = parsed.path.split(_PROXY_PATH, 1)[-1] if parsed.scheme != "mlflow-artifacts" else parsed.path
        return f"{self.destination.rstrip('/')}/{path.lstrip('/')}"

    def check(self, root: str) -> None:
        """Refuse (``ArtifactStoreNotErasable``) a root whose files this process could not fully delete."""
        target = self.resolve(root, root)
        if urlparse(target).scheme in _S3:
            self._check_s3(target, root)

    def erase(self, location: str, root: str) -> int:
        """Delete every stored copy of the files under ``location``; returns how many were deleted."""
        target = self.resolve(location, root)
        if urlparse(target).scheme in _S3:
            store = self._s3_store(target)
            keys = {v.key for v in store.list_versions()}
            deleted = len(store.delete(keys))
            log.info("deleted %d object version(s) under %s", deleted, target)
            return deleted
        folder = _local_path(target)
        if not folder.exists():
            return 0
        linked = sorted(p for p in folder.rglob("*") if p.is_symlink()) if folder.is_dir() else []
        if linked:  # deleting the folder deletes the link and keeps what it points to
            raise ArtifactStoreNotErasable(
                root,
                f"{linked[0]} is a symbolic link inside a model version's files ({folder})",
                "Put the files it points to in place of the link; the purge is retried.",
            )
        count = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 1
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
        return count

    def _s3_store(self, url: str) -> ObjectStore:
        return ObjectStore(StorageConfig(uri=url.replace("s3a://", "s3://", 1), endpoint_url=self.s3_endpoint))

    def _check_s3(self, url: str, root: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        store = self._s3_store(url)
        bucket = store.fs.split_path(store.root)[0]
        try:
            status = store.fs.call_s3("get_bucket_versioning", Bucket=bucket).get("Status")
        except (OSError, ClientError, BotoCoreError) as exc:
            raise ArtifactStoreNotErasable(
                root, f"the versioning state of bucket {bucket!r} cannot be read ({exc})", _VERSION_FIX
            ) from exc
        if status not in ("Enabled", "Suspended"):
            return  # never versioned: deleting the current objects deletes every byte
        probe = f".expunge-probe/{uuid.uuid4().hex}"
        try:
            store.put(probe, b"can this process delete object versions?")
            store.delete([probe])
            left = store.list_versions(probe)
        except (OSError, ClientError, BotoCoreError) as exc:
            raise ArtifactStoreNotErasable(
                root, f"bucket {bucket!r} keeps object versions and deleting them failed ({exc})", _VERSION_FIX
            ) from exc
        if left:
            raise ArtifactStoreNotErasable(
                root, f"bucket {bucket!r} keeps object versions and {len(left)} survived deletion", _VERSION_FIX
            )


def _local_path(location: str) -> Path:
    parsed = urlparse(location)
    return Path(url2pathname(parsed.path) if parsed.scheme == "file" else location).resolve()
