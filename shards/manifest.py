"""A shard's published bookkeeping: its manifest (slices and checkpoints) and what an operation produced.

Plain pydantic models, without torch: a catalog, a scan or a command's ``--help`` reads them
without loading the training stack (``expunge.shards.shard`` trains and re-exports them).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from expunge.shards.schedule import SliceScope

__all__ = ["STAGED_SLICE", "CheckpointEntry", "ShardManifest", "ShardUpdate", "SliceEntry", "shard_prefix"]

#: Column of staged training input (``Shard.train_staged``) that names each row's slice (int32).
STAGED_SLICE = "__expunge_slice"


def shard_prefix(shard_id: int) -> str:
    return f"shards/{shard_id:04d}"


class SliceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    key: str
    rows: int
    records_sha256: str
    #: sha256 of the stored Parquet bytes (None in manifests written before it was recorded).
    sha256: str | None = None
    #: Epochs of this slice's step; None for a slice of the first training (they share
    #: ``allocate_epochs(training.epochs, B)``; ``expunge.shards.schedule.step_recipes``).
    epochs: int | None = None
    #: What the step trains on: ``prefix`` (slices 0..j) or ``slice`` (its own rows: an ingested tail).
    scope: SliceScope = "prefix"

    def lineage_token(self) -> str:
        """What a checkpoint key hashes for this slice: its record ids, and its recipe when not the default."""
        if self.epochs is None and self.scope == "prefix":
            return self.records_sha256
        return f"{self.records_sha256}:{self.epochs}:{self.scope}"


class CheckpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    step: int  # 0-based slice index this checkpoint closes
    key: str
    #: sha256 of the stored checkpoint bytes (None in manifests written before it was recorded).
    sha256: str | None = None


class ShardManifest(BaseModel):
    """Versioned bookkeeping of one shard; published with an exclusive create."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int = 1
    shard_id: int
    version: int
    parent_version: int | None
    training_fingerprint: str
    slices: tuple[SliceEntry, ...]
    checkpoints: tuple[CheckpointEntry, ...]
    request_id: str | None = None

    def object_keys(self) -> set[str]:
        return {s.key for s in self.slices} | {c.key for c in self.checkpoints}


class ShardUpdate(BaseModel):
    """What a train or erase produced: a new (not yet ensemble-published) manifest and stats."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shard_id: int
    manifest_version: int
    previous_version: int | None
    rows_removed: int = 0
    slices_retrained: tuple[int, ...] = ()
    restarted_from: str | None = None  # checkpoint key, None = from scratch
    seconds: float = 0.0
    #: CPU time (user + system) of this process during the operation, in seconds.
    cpu_seconds: float = 0.0
    superseded_keys: tuple[str, ...] = ()
    new_keys: tuple[str, ...] = ()
    #: Rows an ingest added to this shard.
    rows_added: int = 0
    #: Slices a compaction merged into one (their old indexes); empty when none were.
    slices_merged: tuple[int, ...] = ()
