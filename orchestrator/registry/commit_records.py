"""What the store says about a commit MLflow has to record: its receipt (kept, or rebuilt) and missed erasures.

Read-only: the registry never writes the store. Used when MLflow catches up with the store
(``Lineage.reconcile``) and when a version's record is finished after a crash.
"""

from __future__ import annotations

import logging

from expunge.orchestrator.catalog import INGEST_RECEIPT_PREFIX, Catalog, EnsembleManifest
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.shards.store import ObjectStore

__all__ = ["erasure_receipt", "ingest_receipt", "joined_ingest_receipt", "missed_erasure"]

log = logging.getLogger(__name__)


def erasure_receipt(store: ObjectStore, manifest: EnsembleManifest) -> ErasureReceipt:
    """The receipt of the erasure that published ``manifest``; a minimal one naming its request when none is kept."""
    stored = Catalog(store).read_receipt(manifest.version)
    if stored:
        return ErasureReceipt.model_validate_json(stored)
    return ErasureReceipt(request_id=manifest.request_id or "unknown", status="erased", subject_digests=())


def ingest_receipt(store: ObjectStore, manifest: EnsembleManifest) -> IngestReceipt:
    """The receipt the ingest that published ``manifest`` kept, or one rebuilt from the manifests.

    A rebuilt receipt (the ingest was killed between its commit and storing its receipt, or the
    stored one is unreadable or names another version) holds the row count and the shards the
    manifests say changed, and says so in ``pending``.
    """
    request_id = manifest.request_id or f"ensemble-v{manifest.version}"
    text = Catalog(store).read_ingest_receipt(request_id)
    if text is not None:
        try:
            stored = IngestReceipt.model_validate_json(text)
        except ValueError:
            log.warning("ingest %s: its stored receipt is unreadable; recording from the manifests", request_id)
        else:
            if stored.status == "ingested" and stored.model_version_after == manifest.version:
                return stored
    before = Catalog(store).read(manifest.parent_version) if manifest.parent_version is not None else None
    kept = before.shard_versions if before is not None else ()
    untouched = tuple(s for s, v in enumerate(manifest.shard_versions) if s < len(kept) and kept[s] == v)
    rows = manifest.rows - (before.rows if before is not None else 0)
    return IngestReceipt(
        request_id=request_id,
        status="ingested",
        batch_digest="unknown",
        rows_in_batch=rows,
        rows_added=rows,
        untouched_shards=untouched,
        full_retrain_cpu_seconds=manifest.train_cpu_seconds,
        model_version_before=manifest.parent_version,
        model_version_after=manifest.version,
        committed_at=manifest.created_at,
        pending=(
            f"receipt: no receipt of this version at {INGEST_RECEIPT_PREFIX}/{request_id}.json when MLflow recorded "
            "the ingest; rebuilt from the "
            "ensemble manifests (row count and untouched shards only)",
        ),
    )


def joined_ingest_receipt(
    store: ObjectStore, receipt: ErasureReceipt, manifest: EnsembleManifest
) -> IngestReceipt | None:
    """The receipt of the ingest whose batch joined the erasure that published ``manifest``, if any.

    None when none joined, or when the ingest kept no readable receipt (a crash between the commit
    and storing it): its run is then left out, and the erasure's run and version still record the commit.
    """
    if receipt.joined_ingest is None:
        return None
    text = Catalog(store).read_ingest_receipt(receipt.joined_ingest)
    try:
        return IngestReceipt.model_validate_json(text) if text is not None else None
    except ValueError:
        log.warning("ingest %s joined ensemble v%d: its receipt is unreadable", receipt.joined_ingest, manifest.version)
        return None


def missed_erasure(catalog: Catalog, manifest: EnsembleManifest, recorded: int) -> EnsembleManifest | None:
    """The newest erasure version published before ``manifest`` and after store version ``recorded``, if any.

    ``recorded``: the newest store version MLflow holds a model version of. Walks ``manifest``'s
    parents back to it, so it reads nothing when the registry is up to date.
    """
    version = manifest.parent_version
    while version is not None and version > recorded:
        earlier = catalog.read(version)
        if earlier.kind == "erasure":
            return earlier
        version = earlier.parent_version
    return None
