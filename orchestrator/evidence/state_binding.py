"""The stored state bound to the receipt log: every file a version uses, hashed, and the check against it.

A commit's receipt carries a ``StateBinding``: for every shard of the published version,
touched or not, the sha256 of its manifest, of each slice (with its index) and of each
checkpoint (with the slice it closes), and the sha256 of the placement index. Verify re-reads
the stored files and compares: a file moved, copied or swapped between shards or steps fails,
even when its manifest was rewritten with matching hashes, because the receipt (chained, and
anchored outside the store) still holds the hashes the commit wrote.

Binding costs one read of each shard manifest (cached: manifests are create-once) and of the
placement; slice and checkpoint hashes come from the manifests, which record the hash of the
bytes the shard wrote. Checking costs one read of every bound file.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.errors import StorageCorruptError
from expunge.orchestrator.evidence.receipt_chain import chain_key, chained_sequences
from expunge.orchestrator.receipts import BoundFile, ErasureReceipt, StateBinding
from expunge.shards.shard import ShardManifest, shard_prefix

__all__ = ["bind_state", "check_state", "newest_binding", "shard_manifest_key"]

log = logging.getLogger(__name__)

_CACHED = 4096
_cache: OrderedDict[tuple[str, str], tuple[str, ShardManifest]] = OrderedDict()
_cache_lock = threading.Lock()


def shard_manifest_key(shard: int, version: int) -> str:
    """The store key of shard ``shard``'s manifest version ``version``."""
    return f"{shard_prefix(shard)}/manifests/{version:08d}.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(catalog: Catalog, key: str) -> tuple[str, ShardManifest]:
    """The sha256 and parsed content of a shard manifest, read once per process (they are create-once)."""
    slot = (catalog.store.uri, key)
    with _cache_lock:
        hit = _cache.get(slot)
    if hit is not None:
        return hit
    data = catalog.store.get(key)
    found = (_sha256(data), ShardManifest.model_validate_json(data))
    with _cache_lock:
        _cache[slot] = found
        while len(_cache) > _CACHED:
            _cache.popitem(last=False)
    return found


def bind_state(catalog: Catalog, manifest: EnsembleManifest) -> StateBinding:
    """Every file ``manifest`` uses with its sha256, shard and step; see the module docstring.

    Raises:
        StorageUnavailableError: the store does not answer.
        StorageCorruptError: a shard manifest is missing.
    """
    files: list[BoundFile] = []
    for shard, version in enumerate(manifest.shard_versions):
        key = shard_manifest_key(shard, version)
        sha, shard_manifest = _manifest(catalog, key)
        files.append(BoundFile(shard=shard, kind="manifest", step=None, key=key, sha256=sha))
        for entry in shard_manifest.slices:
            digest = entry.sha256 or _sha256(catalog.store.get(entry.key))
            files.append(BoundFile(shard=shard, kind="slice", step=entry.index, key=entry.key, sha256=digest))
        for point in shard_manifest.checkpoints:
            digest = point.sha256 or _sha256(catalog.store.get(point.key))
            files.append(BoundFile(shard=shard, kind="checkpoint", step=point.step, key=point.key, sha256=digest))
    return StateBinding(
        ensemble_version=manifest.version,
        placement_key=manifest.placement_key,
        placement_sha256=_sha256(catalog.store.get(manifest.placement_key)),
        files=tuple(files),
    )


def _what(file: BoundFile) -> str:
    if file.kind == "manifest":
        return f"the manifest of shard {file.shard}"
    if file.kind == "slice":
        return f"slice {file.step} of shard {file.shard}"
    return f"the checkpoint after slice {file.step} of shard {file.shard}"


def check_state(catalog: Catalog, manifest: EnsembleManifest, binding: StateBinding) -> list[str]:
    """Problems found comparing the stored state of ``manifest`` with ``binding``; empty when they agree.

    Reads every bound file once (and the placement). Checks that the published version uses
    exactly the bound files (same shard manifests, same placement) and that each file's bytes
    still hash to what the commit recorded.
    """
    problems: list[str] = []
    if manifest.version != binding.ensemble_version:
        return [f"the receipt binds ensemble version {binding.ensemble_version}, not version {manifest.version}"]
    if manifest.placement_key != binding.placement_key:
        problems.append("the published version names another placement index than the one its receipt binds")
    bound_manifests = {f.shard: f.key for f in binding.files if f.kind == "manifest"}
    for shard, version in enumerate(manifest.shard_versions):
        key = shard_manifest_key(shard, version)
        if bound_manifests.get(shard) != key:
            problems.append(f"shard {shard} now uses manifest {key}, which its receipt does not bind")
    if len(bound_manifests) != len(manifest.shard_versions):
        problems.append(
            f"the receipt binds {len(bound_manifests)} shard(s), the published version has "
            f"{len(manifest.shard_versions)}"
        )
    for file in (
        *binding.files,
        BoundFile(shard=-1, kind="manifest", step=None, key=binding.placement_key, sha256=binding.placement_sha256),
    ):
        what = "the placement index" if file.shard < 0 else _what(file)
        try:
            data = catalog.store.get(file.key)
        except StorageCorruptError:
            problems.append(f"{what} ({file.key}) is missing: deleted after the commit")
            continue
        if _sha256(data) != file.sha256:
            problems.append(
                f"{what} ({file.key}) is not the file the commit wrote: its content changed (moved, copied or "
                "swapped in)"
            )
    if problems:
        log.warning("stored state of version %d differs from its receipt: %s", manifest.version, problems[0])
    return problems


def newest_binding(catalog: Catalog, version: int) -> tuple[StateBinding | None, int | None]:
    """The binding of ensemble ``version`` in the newest chained receipt that holds one, and its sequence.

    Reads receipts from the newest back to the first one older than ``version``; (None, None)
    when no receipt binds it (a version made by training, or receipts from before binding).
    """
    for sequence in reversed(chained_sequences(catalog.store)):
        try:
            receipt = ErasureReceipt.model_validate_json(catalog.store.get(chain_key(sequence)))
        except ValueError:
            continue  # an unreadable receipt: the log walk reports it
        if receipt.state is not None and receipt.state.ensemble_version == version:
            return receipt.state, sequence
        if receipt.model_version_after is not None and receipt.model_version_after < version:
            break
    return None, None
