"""The stored state bound to the receipt log: every file a version uses, hashed, and the check against it.

A commit's receipt carries a ``StateBinding``: for every shard of the published version,
touched or not, the sha256 of its manifest, of each slice (with its index) and of each
checkpoint (with the slice it closes), and the sha256 of the placement index. Verify re-reads
the stored files and compares: a file moved, copied or swapped between shards or steps fails,
even when its manifest was rewritten with matching hashes, because the receipt (chained, and
anchored outside the store) still holds the hashes the commit wrote.

Binding costs one read of each shard manifest (eight at a time on S3) and of the placement; slice and
checkpoint hashes come from the manifests, which record the hash of the bytes the shard wrote,
and files carried over from the previous commit are compared with its binding. Checking costs
one read of every bound file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.errors import StorageCorruptError
from expunge.orchestrator.evidence.receipt_chain import chained_receipts
from expunge.orchestrator.lease import StoreLease
from expunge.orchestrator.receipts import BoundFile, ErasureReceipt, StateBinding
from expunge.shards.manifest import ShardManifest, shard_prefix

__all__ = ["bind_state", "binding_of", "check_state", "shard_manifest_key", "unregistered_training", "unsealed_erasure"]

log = logging.getLogger(__name__)

#: Shard manifests read at once when binding (small JSON objects; S3 latency dominates).
_READERS = 8


def shard_manifest_key(shard: int, version: int) -> str:
    """The store key of shard ``shard``'s manifest version ``version``."""
    return f"{shard_prefix(shard)}/manifests/{version:08d}.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifests(catalog: Catalog, keys: list[str]) -> list[tuple[str, ShardManifest]]:
    """The sha256 and content of each shard manifest, read now (never cached: a manifest rewritten in
    place since the last commit is exactly what binding must see), several at a time."""

    def read(key: str) -> tuple[str, ShardManifest]:
        data = catalog.store.get(key)
        return _sha256(data), ShardManifest.model_validate_json(data)

    if catalog.store.local:  # a local read takes microseconds: threads would cost more than they save
        return [read(key) for key in keys]
    with ThreadPoolExecutor(max_workers=min(_READERS, max(1, len(keys)))) as pool:
        return list(pool.map(read, keys))


def bind_state(catalog: Catalog, manifest: EnsembleManifest, previous: StateBinding | None = None) -> StateBinding:
    """Every file ``manifest`` uses with its sha256, shard and step; see the module docstring.

    ``previous``: the binding of the version this one was derived from. A file carried over
    unchanged (same key) must still hash as it did there; a shard manifest rewritten in place, or
    a carried file whose recorded hash changed, means the store was tampered with between the
    two commits, and is recorded in ``carried_mismatches`` (so the new receipt does not launder it).

    Raises:
        StorageUnavailableError: the store does not answer.
        StorageCorruptError: a shard manifest is missing.
    """
    before = {f.key: f for f in previous.files} if previous is not None else {}
    files: list[BoundFile] = []
    keys = [shard_manifest_key(shard, version) for shard, version in enumerate(manifest.shard_versions)]
    for shard, (key, (sha, shard_manifest)) in enumerate(zip(keys, _manifests(catalog, keys), strict=True)):
        files.append(BoundFile(shard=shard, kind="manifest", step=None, key=key, sha256=sha))
        for entry in shard_manifest.slices:
            digest = entry.sha256 or _sha256(catalog.store.get(entry.key))
            files.append(BoundFile(shard=shard, kind="slice", step=entry.index, key=entry.key, sha256=digest))
        for point in shard_manifest.checkpoints:
            digest = point.sha256 or _sha256(catalog.store.get(point.key))
            files.append(BoundFile(shard=shard, kind="checkpoint", step=point.step, key=point.key, sha256=digest))
    mismatches = tuple(
        f"{_what(f)} ({f.key}) no longer matches the hash receipt of version {previous.ensemble_version} bound: "
        "changed between the two commits"
        for f in files
        if previous is not None and f.key in before and before[f.key].sha256 != f.sha256
    )
    if mismatches:
        log.error("version %d: %d carried file(s) changed since the last commit", manifest.version, len(mismatches))
    return StateBinding(
        ensemble_version=manifest.version,
        placement_key=manifest.placement_key,
        placement_sha256=_sha256(catalog.store.get(manifest.placement_key)),
        files=tuple(files),
        carried_mismatches=mismatches,
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
    problems: list[str] = list(binding.carried_mismatches)
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


def binding_of(catalog: Catalog, manifest: EnsembleManifest) -> tuple[StateBinding | None, int | None]:
    """The binding of ``manifest``'s version in the receipt of the request that published it, and its sequence.

    Only that request's receipt counts (``manifest.request_id``, the batch id for the service):
    a receipt someone appended later binds nothing. (None, None) for a version made by
    training or by an ingest (neither is in the receipt log; ``unregistered_training`` vouches
    for them through MLflow), or when that request's receipt holds no binding (receipts from
    before binding).
    """
    if manifest.kind != "erasure" or manifest.request_id is None:
        return None, None
    # The by-id copy first (one read; the log walk checks it equals the chained receipt), then the log.
    text = catalog.read_request_receipt(manifest.request_id)
    try:
        copy = ErasureReceipt.model_validate_json(text) if text is not None else None
    except ValueError:
        copy = None  # an edited copy: the log walk reports it; read the chain instead
    if copy is not None and copy.state is not None and copy.state.ensemble_version == manifest.version:
        return copy.state, copy.chain_sequence
    for sequence, receipt in reversed(chained_receipts(catalog.store, manifest.request_id)):
        if receipt.state is not None and receipt.state.ensemble_version == manifest.version:
            return receipt.state, sequence
    return None, None


def unsealed_erasure(catalog: Catalog, manifest: EnsembleManifest) -> str | None:
    """Why the receipt log lacks the erasure that published ``manifest`` (its process ended between the
    commit and the seal, or the receipt was deleted), naming its request; None for any other version,
    when a chained receipt of its request names this version, or while a live writer holds the store
    (it seals after its commit: a purge, a registration and an audit come first). Reads the log only
    where ``binding_of`` found no binding."""
    if manifest.kind != "erasure" or manifest.request_id is None:
        return None
    chained = chained_receipts(catalog.store, manifest.request_id)
    if any(r.model_version_after == manifest.version for _, r in chained):
        return None  # not any receipt of that id: one of an earlier version would vouch for a forged one
    if StoreLease(catalog.store).holder() is not None:
        return None
    return (
        f"unsealed erasure: version {manifest.version} was committed by erasure request {manifest.request_id}, "
        "whose receipt of it is not in the receipt log: its process ended before sealing it (the next writer of "
        f"the store, any forget, ingest or train, seals it; `expunge forget --request-id {manifest.request_id}` "
        "with its subjects does at once), the receipt was deleted, or the version was written by hand"
    )


#: What a version of each kind that no chained receipt binds says it was made by.
_UNBOUND_KINDS = {"train": "training", "ingest": "an ingest of new rows"}


def unregistered_training(manifest: EnsembleManifest, registered: Callable[[], set[int]] | None) -> str | None:
    """Why ``manifest`` cannot be trusted as a training (or an ingest), or None.

    A version made by training or by an ingest has no chained receipt to bind it; with a
    registry (``registered``: the store versions MLflow holds a model version of), MLflow must
    know it, or it was written into the store by hand (or its registration has still to finish).
    None when ``manifest`` is an erasure's, or no registry is bound.
    """
    made_by = _UNBOUND_KINDS.get(manifest.kind)
    if made_by is None or registered is None or manifest.version in registered():
        return None
    return (
        f"the published version {manifest.version} says it was made by {made_by}, but MLflow holds no model "
        f"version of it: it was written into the store by hand, or the registration of that {manifest.kind} did "
        "not finish (the next writer of the store registers it; verify again then)"
    )
