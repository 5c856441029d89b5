"""Bytes a store holds, by kind of object, and per training row (issue 12's storage cost)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.shards.store import ObjectStore

__all__ = ["ObjectKind", "StorageReport", "classify_key", "stored_bytes", "summarise_sizes"]

ObjectKind = Literal["slices", "checkpoints", "shard_manifests", "ensemble_manifests", "placement", "other"]

_SHARD_OBJECT = re.compile(r"^shards/\d+/(slices|checkpoints|manifests)/")


class StorageReport(BaseModel):
    """Bytes of every current object in a store, by kind; ``*_bytes`` add up to ``total_bytes``.

    ``rows`` is the training rows of the manifest the report was made for, ``bytes_per_row``
    is ``total_bytes / rows`` (0.0 when there are no rows). ``referenced_bytes`` counts only
    the objects that manifest needs (its placement, slices and checkpoints); the rest of the
    total is manifests, receipts, tombstones and anything not yet purged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int
    objects: int
    slice_bytes: int
    checkpoint_bytes: int
    shard_manifest_bytes: int
    ensemble_manifest_bytes: int
    placement_bytes: int
    other_bytes: int
    total_bytes: int
    referenced_bytes: int
    bytes_per_row: float

    def per_row(self) -> dict[ObjectKind, float]:
        """Bytes per training row of each kind (all 0.0 when there are no rows)."""
        by_kind: dict[ObjectKind, int] = {
            "slices": self.slice_bytes,
            "checkpoints": self.checkpoint_bytes,
            "shard_manifests": self.shard_manifest_bytes,
            "ensemble_manifests": self.ensemble_manifest_bytes,
            "placement": self.placement_bytes,
            "other": self.other_bytes,
        }
        return {kind: (size / self.rows if self.rows else 0.0) for kind, size in by_kind.items()}


def classify_key(key: str) -> ObjectKind:
    """The kind of a store key (see the storage layout in docs/architecture.md)."""
    match = _SHARD_OBJECT.match(key)
    if match:
        return {"slices": "slices", "checkpoints": "checkpoints", "manifests": "shard_manifests"}[match.group(1)]  # type: ignore[return-value]
    if key.startswith("ensemble/"):
        return "ensemble_manifests"
    if key.startswith("placement/"):
        return "placement"
    return "other"


def summarise_sizes(sizes: Mapping[str, int], rows: int, referenced: set[str]) -> StorageReport:
    """Pure: a ``StorageReport`` from ``{key: bytes}`` of a store's objects and the keys a manifest needs."""
    totals: dict[ObjectKind, int] = dict.fromkeys(
        ("slices", "checkpoints", "shard_manifests", "ensemble_manifests", "placement", "other"), 0
    )
    for key, size in sizes.items():
        totals[classify_key(key)] += size
    total = sum(sizes.values())
    return StorageReport(
        rows=rows,
        objects=len(sizes),
        slice_bytes=totals["slices"],
        checkpoint_bytes=totals["checkpoints"],
        shard_manifest_bytes=totals["shard_manifests"],
        ensemble_manifest_bytes=totals["ensemble_manifests"],
        placement_bytes=totals["placement"],
        other_bytes=totals["other"],
        total_bytes=total,
        referenced_bytes=sum(size for key, size in sizes.items() if key in referenced),
        bytes_per_row=total / rows if rows else 0.0,
    )


def stored_bytes(store: ObjectStore, manifest: EnsembleManifest, catalog: Catalog) -> StorageReport:
    """Sizes of every current object of ``store`` (one listing), per kind, for ``manifest``'s rows.

    Counts current versions only (older versions on a versioned bucket are not listed; the
    purge deletes them). Raises ``StorageUnavailableError`` when the store cannot be reached
    and ``StorageCorruptError`` when a shard manifest ``manifest`` names is missing.
    """
    sizes = {info.key: info.size for info in store.list_info("")}
    return summarise_sizes(sizes, manifest.rows, catalog.referenced_keys(manifest))
