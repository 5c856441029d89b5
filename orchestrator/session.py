"""The published state of one store that training, erasure and serving act on: catalog, key, version, shard pool."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, PlacementIndex, require_published
from expunge.orchestrator.config import AnyModelConfig, ErasureConfig, StorageConfig, TrainingConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, ExpungeError
from expunge.orchestrator.lease import StoreLease
from expunge.orchestrator.pool import FirstCallPool, InProcessRule, LocalShardPool, RayShardPool, ShardPool
from expunge.shards.store import ObjectStore

__all__ = [
    "PoolFactory",
    "StoreSession",
    "check_key",
    "first_call_pool",
    "in_process_rule",
    "local_pool",
    "on_a_cluster",
    "published",
    "ray_pool",
]

log = logging.getLogger(__name__)

#: Builds the shard pool of a deployment: (storage, training, model, shard -> published shard version).
PoolFactory = Callable[[StorageConfig, TrainingConfig, AnyModelConfig, Mapping[int, int | None]], ShardPool]


def ray_pool(
    storage: StorageConfig, training: TrainingConfig, model: AnyModelConfig, versions: Mapping[int, int | None]
) -> ShardPool:
    """One Ray actor per shard (``expunge.shards.actor.ShardActor``).

    A pool that trains from scratch (no shard has a version yet) puts several shards in one worker
    process when the cluster cannot run them all at once (``RayShardPool(share_processes=True)``).
    """
    fresh = bool(versions) and all(v is None for v in versions.values())
    return RayShardPool(storage, training, model, versions, share_processes=fresh)


def local_pool(
    storage: StorageConfig, training: TrainingConfig, model: AnyModelConfig, versions: Mapping[int, int | None]
) -> ShardPool:
    """Every shard in this process, one after another (tests, small jobs)."""
    return LocalShardPool(storage, training, model, versions)


def first_call_pool(rule: InProcessRule, start_ray: Callable[[str], None]) -> PoolFactory:
    """Shards in this process when ``rule`` allows the first call's shards, else Ray (``start_ray(why)``
    runs first): ``expunge.orchestrator.pool.FirstCallPool``.
    """

    def factory(
        storage: StorageConfig, training: TrainingConfig, model: AnyModelConfig, versions: Mapping[int, int | None]
    ) -> ShardPool:
        return FirstCallPool(storage, training, model, versions, rule=rule, start_ray=start_ray)

    return factory


def in_process_rule(erasure: ErasureConfig, manifest: EnsembleManifest) -> InProcessRule:
    """When a CLI job on ``manifest``'s store retrains its shards here instead of starting Ray.

    The CPU bound counts each shard at its share of the last training from scratch: the most an
    erasure or an ingest of that shard retrains (both start at a slice, never before the first).
    """
    shard_cpu_s = manifest.train_cpu_seconds / max(1, manifest.sharding.shards)
    return InProcessRule(erasure.in_process_max_shards, erasure.in_process_max_cpu_s, shard_cpu_s)


def on_a_cluster() -> bool:
    """A Ray cluster to use: ``RAY_ADDRESS`` names one, or this process already joined one (``ray.init``).

    Reads the environment; jobs ask once, before choosing between ``first_call_pool`` and Ray.
    """
    ray = sys.modules.get("ray")  # not imported to ask: an import costs 0.3 s
    return bool(os.environ.get("RAY_ADDRESS")) or (ray is not None and ray.is_initialized())


def why_ray_at_once(erasure: ErasureConfig, on_cluster: bool, audited: bool = False) -> str:
    """Why a job starts Ray before its first shard call (said in its progress line); "" if it need not.

    ``on_cluster``: ``on_a_cluster()``; ``audited``: every erasure is membership-audited.
    """
    if on_cluster:
        return "a cluster to join: RAY_ADDRESS is set or Ray runs in this process"
    if erasure.in_process_max_shards == 0:
        return "erasure.in_process_max_shards is 0"
    if audited:
        return "an audited erasure (evidence.audit_holdout) runs on Ray actors"
    return ""


def published(storage: StorageConfig | str, hasher: SubjectHasher | None = None) -> tuple[Catalog, EnsembleManifest]:
    """A store's catalog and its published version, checked against ``hasher``'s key when given.

    Raises:
        ConfigError: the store does not exist or was never trained (never treated as empty or
            clean), or ``hasher``'s key is not the one the store was trained with.
    """
    catalog = Catalog(ObjectStore(storage))
    latest = require_published(catalog)
    if hasher is not None:
        check_key(latest, hasher)  # a wrong key would silently find nobody
    return catalog, latest


def check_key(manifest: EnsembleManifest, hasher: SubjectHasher) -> None:
    """Refuse a digest key other than the one the store was trained with (it would match nobody).

    Raises:
        ConfigError: the key differs from the one ``manifest`` records.
    """
    if manifest.key_check is not None and manifest.key_check != hasher.key_check():
        raise ConfigError(
            f"the subject digest key differs from the one ensemble v{manifest.version} was trained with, so "
            "no subject would be found. Set EXPUNGE_SUBJECT_KEY (or privacy.subject_key_env) to the original key."
        )


class StoreSession:
    """One store as this process sees it: the version it acts on and the shard pool serving that version.

    Training, erasure and serving share one session, so a version one of them publishes is the
    version the others act on next. Every method leaves the session at a committed version.
    """

    def __init__(self, storage: StorageConfig | str, hasher: SubjectHasher, pool_factory: PoolFactory = ray_pool):
        self.storage = storage if isinstance(storage, StorageConfig) else StorageConfig(uri=storage)
        self.store = ObjectStore(self.storage)
        #: One writer per store: every commit of this session is fenced by the process's lease.
        self.lease = StoreLease(self.store, self.storage.lease_ttl_s)
        self.catalog = Catalog(self.store, fence=self.lease.check)
        self.hasher = hasher
        self.pool_factory = pool_factory
        self.manifest = self.catalog.latest()
        self._pool: ShardPool | None = None
        #: Run by ``writing`` before anything is committed (``Sealer.seal_before_commit``: an erasure whose
        #: process ended before sealing it must be sealed first, or the commit buries it).
        self.before_commit: Callable[[], None] | None = None
        #: Set when finishing an earlier process's work failed on open, or a seal failed after this process's
        #: own commit: ``writing`` then runs ``before_commit`` again first.
        self.unfinished = False
        self._checked_token: int | None = None  # the lease token ``before_commit`` last ran under

    @contextmanager
    def writing(self, purpose: str) -> Iterator[int]:
        """Hold the write lease for a block that commits (re-entrant); yields the fencing token.

        Under a lease token it has not run under yet (another process may have committed, and ended,
        since this one last held the lease: a fresh hold, or one taken back after it lapsed), or while
        ``unfinished`` is set, ``before_commit`` runs first. Holds that join a held token cost nothing.

        Raises:
            StoreBusyError: another live process holds the lease; the message names the holder.
            ExpungeError: what ``before_commit`` raised (e.g. ``StorageUnavailableError``); nothing written.
        """
        with self.lease.hold(purpose) as token:
            if self.before_commit is not None and (token != self._checked_token or self.unfinished):
                self.before_commit()
                self._checked_token = token
            yield token

    def require_manifest(self) -> EnsembleManifest:
        """The version acted on.

        Raises:
            ConfigError: the store was never trained, or the key is not the store's.
        """
        if self.manifest is None:
            raise ConfigError(f"no trained ensemble in {self.store.uri}; run `expunge train --config FILE.yaml` first")
        check_key(self.manifest, self.hasher)
        return self.manifest

    @property
    def pool(self) -> ShardPool:
        """The shard pool of the version acted on, started on first use."""
        if self._pool is None:
            manifest = self.require_manifest()
            versions = dict(enumerate(manifest.shard_versions))
            self._pool = self.pool_factory(self.storage, manifest.training, manifest.model, versions)
        return self._pool

    @property
    def has_pool(self) -> bool:
        return self._pool is not None

    def new_pool(self, training: TrainingConfig, model: AnyModelConfig, shards: int) -> ShardPool:
        """A fresh pool for training from scratch (the current one is shut down); adopted on commit."""
        self.close()
        return self.pool_factory(self.storage, training, model, dict.fromkeys(range(shards)))

    def adopt(self, manifest: EnsembleManifest, pool: ShardPool | None = None) -> None:
        """Act on ``manifest``, just published by this process; live actors move to its shard versions."""
        self.manifest = manifest
        if pool is not None:
            self._pool = pool
        if self._pool is not None:  # a replaced or restarted actor starts at these versions
            self._pool.published(dict(enumerate(manifest.shard_versions)))

    def follow_latest(self) -> bool:
        """Act on the latest published version (another process may have committed since); True if it moved."""
        latest = self.catalog.latest()
        if latest is not None and (self.manifest is None or latest.version != self.manifest.version):
            self.close()
            self.manifest = latest
            return True
        return False

    def rollback(self, manifest: EnsembleManifest) -> None:
        """Point actors back at the published versions; their unpublished objects are garbage."""
        self.close()
        self.manifest = self.catalog.latest() or manifest

    def abandon(self, manifest: EnsembleManifest, written: Iterable[str]) -> None:
        """After a commit that did not happen (any error at the placement, tombstones or publish): actors
        back to the published versions, and this attempt's objects deleted unless the published version
        references them (its publish went through and only the answer was lost). Best effort: a store
        that does not answer keeps the debris for the purge rule; never raises.
        """
        self.close()  # the actors hold unpublished shard versions: they must never serve or be built on
        self.manifest = manifest
        try:
            self.manifest = self.catalog.latest() or manifest
            self.discard(written)
        except ExpungeError as exc:
            log.warning("could not delete what a failed commit wrote (%s); the next writer's purge does", exc)

    def discard(self, keys: Iterable[str]) -> None:
        """Delete objects of a losing attempt, except any the published version references."""
        latest = self.catalog.latest()
        keep = self.catalog.referenced_keys(latest) if latest is not None else set()
        self.store.delete(k for k in keys if k not in keep)

    def placement_index(self) -> PlacementIndex:
        """The persisted subject placement of the version acted on (digests only)."""
        return self.catalog.read_placement(self.require_manifest().placement_key)

    def close(self) -> None:
        """Stop the shard pool (actors end); the next use of ``pool`` starts a new one."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
