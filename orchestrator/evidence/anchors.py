"""Anchors of the receipt log outside the store, and the comparison that turns a resealed log into tampering.

A writer of the store can edit a receipt and recompute every later link: the chain alone then
reads intact. Anchors are copies of each chained receipt's sha256 kept where that writer cannot
rewrite them alone:

- **MLflow**: the request's runs carry ``expunge.chain.sequence`` and ``expunge.chain.receipt_sha256``
  (set by the eraser after registration, ``Lineage.anchor_receipt``).
- **S3 Object Lock** (``evidence.anchor_uri``): ``anchors/<sequence>.json`` in a bucket with
  Object Lock, written once with a compliance-mode retention, so no one (the bucket's owner
  included) can delete or overwrite that version before ``evidence.anchor_retention_days``.
  Every stored version of an anchor is read, and the oldest one holds: a later version written
  over it is itself reported.

``compare_anchors`` checks every anchor against the receipt log.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, ValidationError

from expunge.orchestrator.errors import ConfigError, StorageUnavailableError
from expunge.orchestrator.evidence.receipt_chain import CHAIN_PREFIX, BrokenLink, chain_key
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.shards.config import StorageConfig
from expunge.shards.store import ObjectStore

__all__ = ["Anchor", "ObjectLockAnchors", "compare_anchors", "receipt_sha256"]

log = logging.getLogger(__name__)

_ANCHOR_PREFIX = "anchors"


def receipt_sha256(receipt: ErasureReceipt) -> str:
    """sha256 of a chained receipt's stored bytes (``append_receipt`` stores ``model_dump_json(indent=1)``)."""
    return hashlib.sha256(receipt.model_dump_json(indent=1).encode()).hexdigest()


class Anchor(BaseModel):
    """One chained receipt's hash as kept outside the store; ``where`` names the witness (run or object)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sequence: int
    request_id: str
    receipt_sha256: str
    where: str


class ObjectLockAnchors:
    """Anchors written once, under compliance-mode Object Lock, in an S3 bucket (``evidence.anchor_uri``).

    ``like``: the store's storage settings (endpoint, region, profile, timeouts) to reach the bucket with.

    Raises (constructor):
        ConfigError: the URI is not ``s3://bucket/prefix``.
    """

    def __init__(self, uri: str, retention_days: int, like: StorageConfig | None = None) -> None:
        if not uri.startswith("s3://") or not uri[len("s3://") :].split("/", 1)[0]:
            raise ConfigError(
                f"evidence.anchor_uri {uri!r} must be s3://bucket/prefix of a bucket with Object Lock enabled"
            )
        # The store's endpoint, region and profile, unless the anchor bucket is elsewhere (another URI only).
        self.store = ObjectStore(like.model_copy(update={"uri": uri}) if like is not None else StorageConfig(uri=uri))
        self.retention_days = retention_days

    def _key(self, sequence: int) -> str:
        return f"{_ANCHOR_PREFIX}/{sequence:08d}.json"

    def write(self, sequence: int, request_id: str, sha256: str) -> None:
        """Write the anchor of receipt #``sequence`` once, locked for ``retention_days``; a rewrite is a no-op.

        Raises:
            StorageUnavailableError: the bucket does not answer.
            ConfigError: the bucket refuses a locked write (no Object Lock on it).
        """
        from botocore.exceptions import ClientError

        body = Anchor(sequence=sequence, request_id=request_id, receipt_sha256=sha256, where="").model_dump_json()
        until = datetime.now(UTC) + timedelta(days=self.retention_days)
        bucket, key, _ = self.store.fs.split_path(self.store._path(self._key(sequence)))
        try:
            self.store.fs.call_s3(
                "put_object",
                Bucket=bucket,
                Key=key,
                Body=body.encode(),
                IfNoneMatch="*",
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=until,
                ChecksumAlgorithm="SHA256",
            )
        except FileExistsError:
            return  # written before (a retry): the locked first version holds
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                return
            if code in {"InvalidRequest", "InvalidBucketState", "ObjectLockConfigurationNotFoundError"}:
                raise ConfigError(
                    f"the anchor bucket {self.store.uri} refuses a locked write ({code}): create it with Object Lock "
                    "enabled, or unset evidence.anchor_uri"
                ) from exc
            raise
        log.info("receipt #%d anchored under Object Lock in %s", sequence, self.store.uri)

    def read(self) -> tuple[list[Anchor], list[BrokenLink]]:
        """Every anchor (the oldest version of each key), and the anchors rewritten since (as problems).

        Also a problem: a bucket without Object Lock (its anchors could be rewritten).

        Raises:
            ConfigError: the bucket does not exist, or refuses to be read with these credentials.
            StorageUnavailableError: the S3 endpoint does not answer.
        """
        try:
            return self._read()
        except (ConfigError, StorageUnavailableError):
            raise
        except FileNotFoundError as exc:
            raise ConfigError(
                f"the anchor bucket of {self.store.uri} does not exist: check evidence.anchor_uri"
            ) from exc
        except PermissionError as exc:
            raise ConfigError(f"the anchor bucket of {self.store.uri} refuses to be read: {exc}") from exc
        except Exception as exc:
            if _unreachable(exc):
                raise StorageUnavailableError(f"the anchor bucket of {self.store.uri} does not answer: {exc}") from exc
            raise

    def _read(self) -> tuple[list[Anchor], list[BrokenLink]]:
        by_key: dict[str, list[str | None]] = {}
        bucket, prefix, _ = self.store.fs.split_path(self.store._path(_ANCHOR_PREFIX + "/"))
        kwargs: dict[str, object] = {"Bucket": bucket, "Prefix": prefix}
        while True:  # S3 lists each key's versions newest first (timestamps have one-second resolution)
            page = self.store.fs.call_s3("list_object_versions", **kwargs)
            for entry in page.get("Versions", []):
                by_key.setdefault(self.store._key(f"{bucket}/{entry['Key']}"), []).insert(0, entry.get("VersionId"))
            if not page.get("IsTruncated"):
                break
            kwargs |= {"KeyMarker": page.get("NextKeyMarker"), "VersionIdMarker": page.get("NextVersionIdMarker")}
        anchors: list[Anchor] = []
        problems: list[BrokenLink] = []
        if not self._locked_bucket(bucket):
            problems.append(
                BrokenLink(
                    sequence=None,
                    key=self.store.uri,
                    problem="the anchor bucket has no Object Lock configuration: its anchors could be rewritten or "
                    "deleted, so they prove nothing (create the bucket with Object Lock enabled)",
                )
            )
        for key, versions in sorted(by_key.items()):
            bodies = [self.store.get(key, version_id) for version_id in versions]  # oldest first
            try:
                first = Anchor.model_validate_json(bodies[0])
            except ValidationError:
                problems.append(BrokenLink(sequence=None, key=self.store.url(key), problem="not a valid anchor"))
                continue
            anchors.append(first.model_copy(update={"where": f"Object Lock anchor {self.store.url(key)}"}))
            if any(b != bodies[0] for b in bodies[1:]):
                problems.append(
                    BrokenLink(
                        sequence=first.sequence,
                        key=self.store.url(key),
                        problem="the anchor was written again with other content (its locked first version holds)",
                    )
                )
        return anchors, problems

    def _locked_bucket(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            found = self.store.fs.call_s3("get_object_lock_configuration", Bucket=bucket)
        except (ClientError, OSError):
            return False
        return found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


def _unreachable(exc: BaseException) -> bool:
    """A connection that failed, as opposed to an answer that refused."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionError"}) or (
        isinstance(exc, ConnectionError | TimeoutError)
    )


def compare_anchors(store: ObjectStore, anchors: list[Anchor]) -> list[BrokenLink]:
    """Each anchor must match the chained receipt it names, byte for byte (by sha256); see the module docstring."""
    present = {
        int(k.rsplit("/", 1)[-1][:-5])
        for k in store.list_keys(CHAIN_PREFIX)
        if k.endswith(".json") and k.rsplit("/", 1)[-1][:-5].isdigit()
    }
    broken = []
    for anchor in sorted(anchors, key=lambda a: (a.sequence, a.where)):
        key = chain_key(anchor.sequence)
        if anchor.sequence not in present:
            broken.append(
                BrokenLink(
                    sequence=anchor.sequence,
                    key=key,
                    problem=f"{anchor.where} holds receipt #{anchor.sequence} of request {anchor.request_id}, which "
                    "the receipt log no longer has: deleted or the log was cut short",
                )
            )
            continue
        if hashlib.sha256(store.get(key)).hexdigest() != anchor.receipt_sha256:
            broken.append(
                BrokenLink(
                    sequence=anchor.sequence,
                    key=key,
                    problem=f"differs from its anchor in {anchor.where}: the receipt was edited and the log resealed",
                )
            )
    return broken
