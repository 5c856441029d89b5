"""Physical erasure: delete every stored object the published version no longer references."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from orchestrator.catalog import Catalog, EnsembleManifest
from shards.shard import ShardManifest, shard_prefix
from shards.store import ObjectStore, ObjectVersion

__all__ = ["purge_unreferenced", "select_purgeable"]

log = logging.getLogger(__name__)

_DATA_PARTS = ("/slices/", "/checkpoints/")


def select_purgeable(
    versions: Iterable[ObjectVersion], current: set[str], superseded: set[str], committed_at: datetime
) -> list[str]:
    """Keys to delete after publishing a version (pure).

    - anything an older manifest referenced and the current one does not (superseded data:
      e.g. slices that held an erased subject and checkpoints trained on them);
    - anything no manifest references that was written before the commit (left behind by a
      crashed or losing writer; a live writer works from the current version, so every object
      it writes is newer than the commit).
    """
    newest: dict[str, datetime | None] = {}
    for version in versions:
        seen = newest.get(version.key)
        if version.modified is not None and (seen is None or version.modified > seen):
            newest[version.key] = version.modified
        else:
            newest.setdefault(version.key, version.modified)
    doomed = []
    for key, modified in newest.items():
        if key in current:
            continue
        if key in superseded or (modified is not None and modified < committed_at):
            doomed.append(key)
    return sorted(doomed)


def _is_data(key: str) -> bool:
    return key.startswith("placement/") or (key.startswith("shards/") and any(p in key for p in _DATA_PARTS))


def purge_unreferenced(store: ObjectStore, catalog: Catalog, manifest: EnsembleManifest) -> list[ObjectVersion]:
    """Delete (all versions of) data objects that ``manifest`` does not reference; return them."""
    current: set[str] = {manifest.placement_key}
    superseded: set[str] = set()
    for shard_id, version in enumerate(manifest.shard_versions):
        for key in store.list_keys(f"{shard_prefix(shard_id)}/manifests"):
            number = int(key.rsplit("/", 1)[1].split(".")[0])
            if number > version:
                continue  # a newer, unpublished attempt: not ours to judge
            keys = ShardManifest.model_validate_json(store.get(key)).object_keys()
            (current if number == version else superseded).update(keys)
    for number in catalog.versions():
        if number < manifest.version:
            superseded.add(catalog.read(number).placement_key)
    superseded -= current
    candidates = [v for v in store.list_versions("shards/") + store.list_versions("placement/") if _is_data(v.key)]
    committed_at = datetime.fromisoformat(manifest.created_at)
    doomed = select_purgeable(candidates, current, superseded, committed_at)
    deleted = store.delete(doomed)
    if deleted:
        log.info("purged %d object version(s) no longer referenced by ensemble v%d", len(deleted), manifest.version)
    return deleted
