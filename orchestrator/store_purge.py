"""Physical erasure: delete every stored object the published version no longer references."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from expunge.orchestrator.catalog import STAGING_PREFIX, Catalog, EnsembleManifest
from expunge.shards.errors import LinkInStoreError
from expunge.shards.manifest import shard_prefix
from expunge.shards.store import ObjectStore, ObjectVersion

__all__ = ["purge_unreferenced", "purgeable", "select_purgeable"]

log = logging.getLogger(__name__)

_DATA_PARTS = ("/slices/", "/checkpoints/")


def select_purgeable(
    versions: Iterable[ObjectVersion], current: set[str], superseded: set[str], committed_at: datetime
) -> list[str]:
    """Keys to delete after publishing a version (pure).

    Never a key the current version references. Otherwise:

    - every key an earlier *published* version referenced (superseded data: e.g. slices that
      held an erased subject and the checkpoints trained on them), whatever its age;
    - any other key whose newest stored version was written before the commit: debris of a
      crashed or losing writer. A live writer works from the current version, so what it
      writes is newer than the commit and is left alone.

    ``committed_at`` must come from the same clock as the objects' times: the store's own
    timestamp of the published manifest.
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


#: Nonce objects a writer puts to tell its store from one reached by another endpoint name
#: (``registry.ownership``), deleted at once; one a killed writer left goes with the next purge.
PROBE_PREFIX = "probes/"


def _is_data(key: str) -> bool:
    # Staged training input (raw rows) is never referenced: it goes once older than a commit; so does a probe.
    return key.startswith(("placement/", STAGING_PREFIX, PROBE_PREFIX)) or (
        key.startswith("shards/") and any(p in key for p in _DATA_PARTS)
    )


def purge_unreferenced(
    store: ObjectStore, catalog: Catalog, manifest: EnsembleManifest, since: int | None = None
) -> list[ObjectVersion]:
    """Delete (all versions of) data objects that ``manifest`` does not reference; return them.

    ``since``: see ``purgeable``. The log line says what went and why: keys of earlier published
    versions (superseded data), and keys no published version ever referenced (debris of an
    interrupted or losing writer).

    Raises:
        LinkInStoreError: a symbolic link below the store's root; what the listing reached beside it
            (the other shards, the placement, staged input) was purged first, so one linked folder
            never keeps an erased subject's rows in another shard.
    """
    linked: list[LinkInStoreError] = []
    doomed, superseded = _purge_plan(store, catalog, manifest, since, linked)
    deleted = store.delete(doomed)
    if deleted:
        stale = sum(1 for key in doomed if key in superseded)
        why = [
            f"{stale} key(s) of earlier versions (superseded data)" if stale else "",
            f"{len(doomed) - stale} key(s) no version published (debris of an interrupted or losing writer)"
            if len(doomed) > stale
            else "",
        ]
        log.info(
            "purged %d object version(s) that ensemble v%d does not reference: %s",
            len(deleted),
            manifest.version,
            "; ".join(w for w in why if w),
        )
    if linked:
        raise linked[0]
    return deleted


def purgeable(store: ObjectStore, catalog: Catalog, manifest: EnsembleManifest, since: int | None = None) -> list[str]:
    """The keys ``purge_unreferenced`` would delete (read-only).

    ``since``: read only the published versions from ``since`` on for superseded keys (right
    after a commit, its parent: older versions' objects went at their own commits, and any
    debris they left is older than this commit, which ``select_purgeable`` deletes anyway).
    ``None`` reads every version (on open, after a crash).
    """
    return _purge_plan(store, catalog, manifest, since)[0]


def _purge_plan(
    store: ObjectStore,
    catalog: Catalog,
    manifest: EnsembleManifest,
    since: int | None,
    linked: list[LinkInStoreError] | None = None,
) -> tuple[list[str], set[str]]:
    """(keys to delete, keys that earlier published versions referenced) for ``purgeable``.

    ``linked`` given: a listing that meets a symbolic link goes on part by part (each folder
    under ``shards/``, those of no published shard too; the placement; staged input), the parts that meet one are left out and their
    errors appended; otherwise the error is raised.
    """
    current = catalog.referenced_keys(manifest)
    superseded: set[str] = set()
    # Right after a commit (``since``: its parent) the few versions between are read by number, not listed.
    numbers = catalog.versions() if since is None else [n for n in range(since, manifest.version) if catalog.has(n)]
    for number in numbers:
        if number >= manifest.version or (since is not None and number < since):
            continue
        earlier = catalog.read(number)
        superseded.add(earlier.placement_key)
        for shard_id, version in enumerate(earlier.shard_versions):
            if shard_id < len(manifest.shard_versions) and version == manifest.shard_versions[shard_id]:
                continue  # the same shard version: every key of it is current, none is superseded
            if store.exists(f"{shard_prefix(shard_id)}/manifests/{version:08d}.json"):
                superseded |= catalog.shard_manifest(shard_id, version).object_keys()
    # Shard manifests are never data, and they grow by one per shard version: not listed.
    listed = _listed(store, ["shards/", "placement/", STAGING_PREFIX, PROBE_PREFIX], linked)
    if linked:  # a link below shards/: each shard folder on its own (any there), so the others are purged all the same
        parts = [f"shards/{name}/" for name in store.children("shards")]
        listed = _listed(store, [*parts, "placement/", STAGING_PREFIX, PROBE_PREFIX], linked)
    candidates = [v for v in listed if _is_data(v.key)]
    if since is None and not linked:
        # On open: half-written temporary files anywhere (a writer killed mid-write) are debris
        # too; the time rule keeps a live writer's, which are newer than the commit.
        data = {v.key for v in candidates}
        candidates += [v for v in store.list_versions("") if v.key.endswith(".partial") and v.key not in data]
    doomed = select_purgeable(candidates, current, superseded, catalog.published_at(manifest.version))
    return doomed, superseded


def _listed(store: ObjectStore, prefixes: list[str], linked: list[LinkInStoreError] | None) -> list[ObjectVersion]:
    """Every version under ``prefixes`` (shard manifests left out); see ``_purge_plan`` for ``linked``."""
    found: list[ObjectVersion] = []
    for prefix in prefixes:
        try:
            found += store.list_versions(prefix, skip=("manifests",) if prefix.startswith("shards/") else ())
        except LinkInStoreError as exc:
            if linked is None:
                raise
            linked.append(exc)
    return found
