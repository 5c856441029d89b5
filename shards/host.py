"""The Ray actor for several shards in one worker process, used when training from scratch oversubscribes the CPUs."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import ray

from expunge.shards.config import AnyModelConfig, StorageConfig, TrainingConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.niceness import apply_niceness, current_niceness
from expunge.shards.shard import Shard

__all__ = ["ShardHost"]

log = logging.getLogger(__name__)


@ray.remote
class ShardHost:
    """Hosts the shards given to it, each a ``Shard`` loaded on its first call, one call at a time.

    Each shard behaves as in its own ``ShardActor`` (its calls, state and bits are the same: every
    shard fixes torch's threads and deterministic kernels itself); what is shared is the process,
    so its start-up (interpreter, torch and the shard code, about 2.5 s of CPU) is paid once, not
    once per shard. A restarted or replacement host loads each shard at ``versions``.
    """

    def __init__(
        self,
        storage: StorageConfig,
        training: TrainingConfig,
        model_config: AnyModelConfig,
        versions: Mapping[int, int | None],
    ) -> None:
        apply_niceness(training.niceness)  # Ray starts workers at 15: a retrain must not wait behind others
        self._args = (storage, training, model_config)
        self._versions = dict(versions)
        self._shards: dict[int, Shard] = {}

    def _shard(self, shard_id: int) -> Shard:
        if shard_id not in self._shards:
            version = self._versions.get(shard_id)
            try:
                self._shards[shard_id] = Shard(shard_id, *self._args, version)
            except StorageCorruptError:
                # As ``ShardActor``: the version it was created for may have been purged since; start
                # empty, and the pool points it at the published one.
                log.warning("shard %d: version %s is gone; waiting to adopt the published one", shard_id, version)
                self._shards[shard_id] = Shard(shard_id, *self._args, None)
        return self._shards[shard_id]

    def call(self, shard_id: int, method: str, *args: Any) -> Any:
        """``method(*args)`` on shard ``shard_id``; the process-wide ones (``pid``, ``niceness``,
        ``peak_rss_bytes``) answer for the host."""
        if method == "pid":
            return os.getpid()
        if method == "niceness":
            return current_niceness()
        if method == "peak_rss_bytes":
            import resource
            import sys

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes
        if method == "ready":
            self._shard(shard_id)  # loaded now: start-up is not training time
            return shard_id
        if method == "adopt":
            self._versions[shard_id] = args[0]
        return getattr(self._shard(shard_id), method)(*args)

    def published(self, versions: Mapping[int, int | None]) -> None:
        """The published shard versions: a shard first loaded after this loads its version here."""
        self._versions.update(versions)
