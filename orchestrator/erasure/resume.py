"""Resuming a request: the receipt of an erasure that committed before a crash, and who was erased already."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, TombstoneEntry
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.receipt_chain import chained_receipts
from expunge.orchestrator.receipts import ErasureReceipt, ShardRetrain
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.session import StoreSession
from expunge.shards.manifest import ShardManifest

__all__ = ["already_erased", "erased_rows", "erased_shard_rows", "finish_committed", "rebuild_receipt"]

log = logging.getLogger(__name__)


def finish_committed(
    session: StoreSession,
    lineage: Lineage | None,
    request_id: str,
    digests: Sequence[str],
    seal: Callable[[ErasureReceipt], ErasureReceipt],
) -> ErasureReceipt | None:
    """The receipt of ``request_id`` if an erasure with that id already committed, finishing its record.

    A crash after the store commit (in MLflow, or before the receipt log) leaves the store
    erased but the request unanswered; its retry must not look like a miss. The registry is
    already reconciled on open (``Eraser.finish_interrupted``); this completes the receipt log
    (``seal``: ``Sealer.seal``).

    Raises:
        ConfigError: the id was used by an erasure of other subjects (ids name one request), or its subjects
            hold data again (re-admitted since: answering the old receipt would say they are erased).
    """
    version = next(
        (
            v
            for v in sorted(session.catalog.versions(), reverse=True)
            if (m := session.catalog.read(v)).kind == "erasure" and m.request_id == request_id
        ),
        None,
    )
    if version is None:
        return None
    done = [r for _, r in chained_receipts(session.store, request_id) if r.status == "erased"]
    stored = done[-1] if done else None
    if stored is None and (text := session.catalog.read_receipt(version)) is not None:
        stored = ErasureReceipt.model_validate_json(text)
    if stored is None:  # crashed between the commit and the per-version receipt
        stored = rebuild_receipt(session.catalog, version, request_id, digests)
    if set(stored.subject_digests) != set(digests):
        stored = _with_unplaced(session.catalog, stored, digests)
    if set(stored.subject_digests) != set(digests):
        raise ConfigError(
            f"request id {request_id!r} already erased other subjects (ensemble v{version}); "
            "each request needs its own id: use a new --request-id, or omit it"
        )
    erased = [d for d in stored.subject_digests if d not in set(stored.not_found_digests)]
    latest = session.catalog.latest()
    if latest is not None and session.catalog.read_placement(latest.placement_key).cells(erased):
        raise ConfigError(
            f"request id {request_id!r} erased its subjects at ensemble v{version}, but some hold data again "
            "(re-admitted and given rows since): erasing them again is a new request; use a new --request-id, or omit it"
        )
    if done:
        return stored
    if lineage is not None and stored.registry_version_after is None:
        stored = stored.model_copy(update={"registry_version_after": lineage.current_version()})
    log.info("request %s had committed ensemble v%d before a crash: finishing its receipt", request_id, version)
    return seal(stored)


def _with_unplaced(catalog: Catalog, stored: ErasureReceipt, digests: Sequence[str]) -> ErasureReceipt:
    """``stored`` naming ``digests`` when it names some of them and none of the others holds data.

    A receipt rebuilt on open after a kill (``Sealer.unsealed``) knows only the subjects the
    request found (its tombstone entry); a retry naming the others too is the same request, and
    those had no data. Any other difference (a named subject absent from a retry, or one that holds
    rows now) leaves ``stored`` as it is: the id named other subjects.
    """
    own = list(dict.fromkeys(digests))
    extra = [d for d in own if d not in set(stored.subject_digests)]
    if not set(stored.subject_digests) <= set(own) or not extra:
        return stored
    latest = catalog.latest()
    if latest is None or catalog.read_placement(latest.placement_key).cells(extra):
        return stored
    not_found = (*stored.not_found_digests, *extra)
    return stored.model_copy(
        update={
            "subject_digests": tuple(own),
            "not_found_digests": not_found,
            "already_erased_digests": already_erased(catalog, not_found),
        }
    )


def already_erased(catalog: Catalog, not_found: Sequence[str]) -> tuple[str, ...]:
    """The digests among ``not_found`` that an earlier erasure of this store removed (tombstoned)."""
    if not not_found:
        return ()
    erased = catalog.tombstones()
    return tuple(d for d in not_found if d in erased)


def rebuild_receipt(catalog: Catalog, version: int, request_id: str, digests: Sequence[str]) -> ErasureReceipt:
    """The receipt of the erasure that published ``version``, from durable facts alone.

    Who was found and their rows come from the placement of the version before; which shards
    retrained, from which slice and checkpoint, and how many rows each lost, from comparing
    the two versions' shard manifests. Used when a crash lost the receipt written at the commit:
    it says what a run without the crash said, except times (``seconds`` are 0).
    """
    after = catalog.read(version)
    before = catalog.read(after.parent_version) if after.parent_version is not None else None
    if before is None:
        raise ConfigError(f"ensemble v{version} has no parent version: it is a training, not an erasure")
    rows = erased_rows(catalog, after)
    by_shard = erased_shard_rows(catalog, after)
    own = list(dict.fromkeys(digests))
    found = [d for d in own if d in rows]
    not_found = tuple(d for d in own if d not in rows)
    decremental = _decremental(after)
    shards: list[ShardRetrain] = []
    for shard, (old_v, new_v) in enumerate(zip(before.shard_versions, after.shard_versions, strict=True)):
        if old_v == new_v:
            continue
        # Old rows less new ones, unless the entry recorded them: an ingest joining the commit adds rows.
        old, new = catalog.shard_manifest(shard, old_v), catalog.shard_manifest(shard, new_v)
        removed = (
            by_shard.get(shard, 0) if by_shard else sum(s.rows for s in old.slices) - sum(s.rows for s in new.slices)
        )
        shards.append(_shard_retrain(shard, old, new, decremental, removed))
    retrained = {s.shard for s in shards}
    return ErasureReceipt(
        request_id=request_id,
        status="erased" if found else "not_found",
        subject_digests=tuple(own),
        not_found_digests=not_found,
        already_erased_digests=already_erased(catalog, not_found),
        rows_removed=sum(rows.get(d, 0) for d in found),
        shards=tuple(shards),
        untouched_shards=tuple(s for s in range(after.sharding.shards) if s not in retrained),
        full_retrain_seconds=after.train_seconds,
        full_retrain_cpu_seconds=after.train_cpu_seconds,
        model_version_before=before.version,
        model_version_after=after.version,
        committed_at=catalog.published_at(version).isoformat(),
        joined_ingest=entry.joined_ingest if (entry := _entry(catalog, after)) is not None else None,
        ticket=entry.ticket if entry is not None else None,
        reason=entry.reason if entry is not None else None,
    )


def _entry(catalog: Catalog, manifest: EnsembleManifest) -> TombstoneEntry | None:
    """The tombstone entry the request of ``manifest`` wrote just before its commit (the newest, if a lost
    race made it write two), when it recorded rows."""
    entries = [
        e
        for e in catalog.tombstone_log()
        if e.action == "erased" and e.request_id == manifest.request_id and len(e.rows) == len(e.subject_digests)
    ]
    return entries[-1] if entries and entries[-1].rows else None


def erased_shard_rows(catalog: Catalog, manifest: EnsembleManifest) -> dict[int, int]:
    """Shard -> rows removed by the erasure that published ``manifest``, as its tombstone entry recorded
    them; empty for entries written before they were (the shards' old rows less their new ones then tell,
    unless an ingest joined the commit)."""
    entry = _entry(catalog, manifest)
    return dict(entry.shard_rows) if entry is not None else {}


def _decremental(manifest: EnsembleManifest) -> bool:
    """Whether ``manifest``'s model changes its sums in place (one checkpoint) rather than retraining slices."""
    from expunge.shards.models import model_for
    from expunge.shards.models.protocol import DecrementalStatisticsModel

    return isinstance(model_for(manifest.model), DecrementalStatisticsModel)


def _shard_retrain(shard: int, old: ShardManifest, new: ShardManifest, decremental: bool, removed: int) -> ShardRetrain:
    """What one shard's update did, from its manifests before and after, as ``Shard.update`` reports it: the
    slices whose rows changed (all from the first of them on, for a model that retrains), where it restarted,
    and the first slice that lost rows (an ingest joining the commit may have changed an earlier one)."""
    changed = [
        i
        for i, entry in enumerate(new.slices)
        if i >= len(old.slices) or old.slices[i].records_sha256 != entry.records_sha256
    ]
    first = min(changed, default=min(len(old.slices), len(new.slices)))
    lost = [i for i in changed if i < len(old.slices) and new.slices[i].rows < old.slices[i].rows]
    if decremental:  # its final sums changed by the changed subjects' rows
        retrained, restarted = tuple(changed), (old.checkpoints[-1].key if old.checkpoints else None)
    else:
        kept = [c for c in old.checkpoints if c.step == first - 1]
        retrained, restarted = tuple(range(first, len(new.slices))), (kept[0].key if first > 0 and kept else None)
    return ShardRetrain(
        shard=shard,
        first_affected_slice=min(lost, default=first),
        slices_retrained=retrained,
        restarted_from=restarted,
        rows_removed=removed,
        seconds=0.0,
    )


def erased_rows(catalog: Catalog, manifest: EnsembleManifest) -> dict[str, int]:
    """Digest -> rows removed by the erasure that published ``manifest``.

    Read from the tombstone entry its request wrote just before the commit (the newest, if a
    lost race made it write two). Entries from before rows were recorded: the placement of the
    version before, if still stored.
    """
    entry = _entry(catalog, manifest)
    if entry is not None:
        return dict(zip(entry.subject_digests, entry.rows, strict=True))
    if manifest.parent_version is None:
        return {}
    before = catalog.read(manifest.parent_version)
    if not catalog.store.exists(before.placement_key):
        return {}
    rows = catalog.read_placement(before.placement_key).rows()
    after = (
        catalog.read_placement(manifest.placement_key).rows() if catalog.store.exists(manifest.placement_key) else {}
    )
    return {d: n for d, n in rows.items() if d not in after}
