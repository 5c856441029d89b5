"""The commit point of an erasure: tombstones first, then the next ensemble version (exclusive create)."""

from __future__ import annotations

from expunge.orchestrator.catalog import EnsembleManifest, PlacementIndex
from expunge.orchestrator.erasure.routing import RoutingPlan
from expunge.orchestrator.errors import ExpungeError
from expunge.orchestrator.ingest import PreparedIngest
from expunge.orchestrator.session import StoreSession
from expunge.shards.manifest import ShardUpdate

__all__ = ["commit_erasure"]


def commit_erasure(
    session: StoreSession,
    manifest: EnsembleManifest,
    index: PlacementIndex,
    plan: RoutingPlan,
    updates: dict[int, ShardUpdate],
    request_id: str,
    ingest: PreparedIngest | None = None,
    text: dict[str, str | None] | None = None,
) -> EnsembleManifest:
    """Tombstone the subjects and publish the next version (the commit point).

    With ``ingest`` (a batch joining the erasure), the version also holds the batch's rows and
    its placement; it is still an erasure (its receipt binds it, ``verify --request`` checks it).
    ``text``: the request's ``ticket`` and ``reason`` (screened), kept in its tombstone entry so that a
    receipt rebuilt after a crash still carries them.

    Raises:
        StorageConflictError: another writer published first; what this attempt wrote is deleted.
        ExpungeError: any other failure before the publish (the store did not answer, the lease was
            lost): nothing published, the actors reload the published versions, the attempt's objects go.
    """
    versions = list(manifest.shard_versions)
    for shard, update in updates.items():
        versions[shard] = update.manifest_version
    found = sorted(plan.found)
    placement = ingest.placement_after(set(found)) if ingest is not None and ingest.plan else index.without(set(found))
    written = [k for u in updates.values() for k in u.new_keys]
    joined = ingest is not None and ingest.plan is not None  # its rows go in with this commit
    try:
        placement_key = session.catalog.write_placement(placement)
        written.append(placement_key)
        new_manifest = EnsembleManifest(
            version=manifest.version + 1,
            parent_version=manifest.version,
            kind="erasure",
            request_id=request_id,
            sharding=manifest.sharding,
            training=manifest.training,
            model=manifest.model,
            shard_versions=tuple(versions),
            placement_key=placement_key,
            rows=manifest.rows + sum(u.rows_added - u.rows_removed for u in updates.values()),
            key_check=manifest.key_check,
            train_seconds=manifest.train_seconds,
            train_cpu_seconds=manifest.train_cpu_seconds,
            registry=manifest.registry,
            lease_token=session.lease.token,
        )
        # Tombstones first: from here on no training admits these people again, even if the
        # commit below fails (the retry then completes the erasure they asked for).
        session.catalog.append_tombstones(
            "erased",
            found,
            request_id,
            rows={d: sum(index.entries[d].values()) for d in found},
            # Only where rows are added beside (an ingest joined): then the shards' row counts cannot tell
            # a rebuilt receipt what each lost. Elsewhere the entry stays readable by earlier versions.
            shard_rows={shard: update.rows_removed for shard, update in updates.items()} if joined else None,
            joined_ingest=ingest.request_id if joined and ingest is not None else None,
            reason=(text or {}).get("reason"),
            ticket=(text or {}).get("ticket"),
        )
        session.catalog.publish(new_manifest)
    except ExpungeError:
        # Any failure, a lost race or a store that did not answer: the actors hold shard versions no
        # published version names; they must not be built on by a retry (which would publish them
        # with a placement that does not know their rows). What this attempt wrote goes.
        session.abandon(manifest, written)
        raise
    session.adopt(new_manifest)
    return new_manifest
