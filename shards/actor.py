"""The Ray actor for one shard: a thin wrapper that delegates every call to ``Shard``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from expunge.shards.config import AnyModelConfig, StorageConfig, TrainingConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.niceness import apply_niceness
from expunge.shards.shard import Shard, ShardUpdate

__all__ = ["ShardActor"]

log = logging.getLogger(__name__)


@ray.remote
class ShardActor:
    """State is reloaded from storage in ``__init__``, so a restarted actor resumes cleanly."""

    def __init__(
        self,
        shard_id: int,
        storage: StorageConfig,
        training: TrainingConfig,
        model_config: AnyModelConfig,
        manifest_version: int | None,
    ) -> None:
        apply_niceness(training.niceness)  # Ray starts workers at 15: a retrain must not wait behind others
        try:
            self._shard = Shard(shard_id, storage, training, model_config, manifest_version)
        except StorageCorruptError:
            # Ray restarts an actor with the arguments it was first created with; a later erasure
            # may have purged that version's objects. Start empty: the pool adopts the published one.
            log.warning("shard %d: version %s is gone; waiting to adopt the published one", shard_id, manifest_version)
            self._shard = Shard(shard_id, storage, training, model_config, None)

    def ready(self) -> int:
        """Answers once the actor (torch import, state reload) is up."""
        return self._shard.shard_id

    def train(self, slices: Sequence[pa.Table], request_id: str | None = None) -> ShardUpdate:
        return self._shard.train(slices, request_id)

    def train_staged(self, key: str, slices: int, request_id: str | None = None) -> ShardUpdate:
        return self._shard.train_staged(key, slices, request_id)

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of this actor's process so far, in bytes (``getrusage`` ru_maxrss)."""
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes

    def erase(self, subject_digests: Sequence[str], first_affected_slice: int, request_id: str) -> ShardUpdate:
        return self._shard.erase(subject_digests, first_affected_slice, request_id)

    def ingest(
        self,
        appends: Mapping[int, pa.Table],
        request_id: str,
        tail_epochs: int,
        merge_from: int | None = None,
        remove: Sequence[str] = (),
    ) -> ShardUpdate:
        return self._shard.ingest(appends, request_id, tail_epochs=tail_epochs, merge_from=merge_from, remove=remove)

    def adopt(self, manifest_version: int) -> None:
        self._shard.adopt(manifest_version)

    def predict(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return self._shard.predict(rows)

    def tensors(self) -> dict[str, Any]:
        return self._shard.tensors()

    def call_log(self) -> list[str]:
        return self._shard.call_log()

    def niceness(self) -> int:
        """This actor's scheduling niceness (``training.niceness`` when the actor may set it)."""
        from expunge.shards.niceness import current_niceness

        return current_niceness()

    def pid(self) -> int:
        """This actor's process id (for operators and kill tests)."""
        import os

        return os.getpid()
