"""The servable ensemble: a self-contained copy of one published version's constituents, and its predictions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import CustomModelConfig, ItemStatsConfig, MFConfig, PrivacyConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, StorageCorruptError
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble, aggregate
from expunge.shards.manifest import ShardManifest
from expunge.shards.models import SufficientStatisticsModel, model_for
from expunge.shards.rows import FEATURES, ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import TrainedState, load_checkpoint

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ENSEMBLE_ARTIFACT",
    "Constituent",
    "EnsemblePredictor",
    "export_ensemble",
    "read_constituents",
    "read_shard_manifest",
    "rows_from_frame",
]

log = logging.getLogger(__name__)

#: Name of the pyfunc artifact that holds an ``export_ensemble`` folder.
ENSEMBLE_ARTIFACT = "ensemble"
_MANIFEST_FILE = "manifest.json"
_CONSTITUENTS_FILE = "constituents.json"


class Constituent:
    """Where one shard's final checkpoint came from (store key, shard manifest version) and its digest."""

    def __init__(self, shard: int, shard_version: int, checkpoint_key: str, sha256: str, rows: int) -> None:
        self.shard = shard
        self.shard_version = shard_version
        self.checkpoint_key = checkpoint_key
        self.sha256 = sha256
        self.rows = rows

    @property
    def file(self) -> str:
        return f"shards/{self.shard:04d}.pt"

    def as_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "shard_version": self.shard_version,
            "checkpoint_key": self.checkpoint_key,
            "sha256": self.sha256,
            "rows": self.rows,
            "file": self.file,
        }


def read_shard_manifest(store: ObjectStore, shard: int, version: int) -> ShardManifest:
    return Catalog(store).shard_manifest(shard, version)


def read_constituents(store: ObjectStore, manifest: EnsembleManifest) -> list[tuple[Constituent, bytes]]:
    """The final checkpoint of every shard of ``manifest``, in shard order, with its ``Constituent`` record.

    Holds every checkpoint in memory at once (``export_ensemble`` alone reads one at a time).

    Raises:
        StorageCorruptError: a shard manifest lists no checkpoint, or a checkpoint is missing
            (e.g. purged by a newer commit).
    """
    return list(_constituents(store, manifest))


def _constituents(store: ObjectStore, manifest: EnsembleManifest) -> Iterator[tuple[Constituent, bytes]]:
    for shard, version in enumerate(manifest.shard_versions):
        shard_manifest = read_shard_manifest(store, shard, version)
        if not shard_manifest.checkpoints:
            raise StorageCorruptError(
                f"shard {shard} manifest v{version} in {store.uri} lists no checkpoint; retrain into a fresh storage URI"
            )
        key = shard_manifest.checkpoints[-1].key
        data = store.get(key)
        constituent = Constituent(
            shard, version, key, hashlib.sha256(data).hexdigest(), sum(s.rows for s in shard_manifest.slices)
        )
        yield constituent, data


def export_ensemble(
    store: ObjectStore,
    manifest: EnsembleManifest,
    destination: Path,
    read: Iterable[tuple[Constituent, bytes]] | None = None,
) -> list[Constituent]:
    """Copy the final checkpoint of every shard of ``manifest`` into ``destination``.

    The copy (not a reference into the store) is what makes a registered version loadable on
    its own: the store deletes superseded checkpoints on every erasure. ``read``: the
    constituents already read (``read_constituents`` of this manifest); None reads them now.
    """
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "shards").mkdir(exist_ok=True)
    constituents = []
    for constituent, data in read if read is not None else _constituents(store, manifest):
        (destination / constituent.file).write_bytes(data)
        constituents.append(constituent)
    (destination / _MANIFEST_FILE).write_text(manifest.model_dump_json(indent=1))
    (destination / _CONSTITUENTS_FILE).write_text(json.dumps([c.as_json() for c in constituents], indent=1))
    return constituents


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Predict with the thread count the shard actors use, so reductions round the same way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EnsemblePredictor:
    """The ensemble of one exported version, in-process: the same math as ``Coordinator.predict``, no Ray."""

    def __init__(self, manifest: EnsembleManifest, states: list[TrainedState]) -> None:
        self.manifest = manifest
        self.model = model_for(manifest.model)
        self.states = states
        self._statistics: StatisticsEnsemble | None = None  # summed once, on first use

    @classmethod
    def load(cls, directory: str | Path) -> EnsemblePredictor:
        """Load an ``export_ensemble`` folder, checking every checkpoint against its recorded digest."""
        root = Path(directory)
        manifest = EnsembleManifest.model_validate_json((root / _MANIFEST_FILE).read_text())
        model = model_for(manifest.model)
        states = []
        for entry in json.loads((root / _CONSTITUENTS_FILE).read_text()):
            data = (root / entry["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise StorageCorruptError(
                    f"{root / entry['file']} does not match its recorded sha256; the model artifact is damaged. "
                    "Load another version or re-export it from the shard store."
                )
            states.append(load_checkpoint(model, data))
        return cls(manifest, states)

    @property
    def subject_specific(self) -> bool:
        return bool(self.model.subject_specific)

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Scores (ratings) or class probabilities for canonical rows, aggregated as the live ensemble does."""
        import torch

        model = self.model
        if isinstance(model, SufficientStatisticsModel):
            # The exact ensemble of a statistics model: states added up, as Coordinator.statistics does.
            if self._statistics is None:
                self._statistics = StatisticsEnsemble(model, [state.module for state in self.states])
            return self._statistics.fit.predict(rows)
        scores, known = [], []
        with _torch_threads(self.manifest.training.threads_per_shard), torch.no_grad():
            for state in self.states:
                state.module.eval()
                batch = model.encode(state.module, rows)
                scores.append(model.predict(state.module, batch).numpy())
                known.append(model.knows(state.module, batch).numpy())
        return aggregate(scores, known, self.subject_specific)


def _hasher_from_env(env_name: str) -> SubjectHasher | None:
    return SubjectHasher.from_env(env_name) if os.environ.get(env_name) else None


def rows_from_frame(
    frame: pd.DataFrame, manifest: EnsembleManifest, subject_key_env: str = PrivacyConfig().subject_key_env
) -> pa.Table:
    """Turn a serving request (a DataFrame) into canonical rows for ``EnsemblePredictor.predict``.

    Subjects come as ``subject_digest`` (no key needed) or as raw ``subject_id``, which is
    hashed only when the serving process has the digest key in ``subject_key_env``.
    """
    columns: dict[str, pa.Array] = {}
    if SUBJECT_DIGEST in frame.columns:
        columns[SUBJECT_DIGEST] = pa.array(
            ["" if d is None else str(d) for d in frame[SUBJECT_DIGEST].tolist()], pa.string()
        )
    elif SUBJECT_ID in frame.columns:
        hasher = _hasher_from_env(subject_key_env)
        if hasher is None:
            raise ConfigError(
                f"the request has a {SUBJECT_ID!r} column but {subject_key_env} is not set in the serving "
                f"process; send {SUBJECT_DIGEST!r} (the keyed digest) instead, or set {subject_key_env} "
                "to the deployment's digest key"
            )
        columns[SUBJECT_DIGEST] = pa.array(hasher.digest_many(frame[SUBJECT_ID].tolist()), pa.string())
    elif model_for(manifest.model).subject_specific:
        raise ConfigError(
            f"this model answers per subject: add a {SUBJECT_DIGEST!r} column (or {SUBJECT_ID!r} with "
            f"{subject_key_env} set); use an empty digest for unknown subjects"
        )
    if isinstance(manifest.model, MFConfig | ItemStatsConfig):
        if ITEM_ID not in frame.columns:
            raise ConfigError(f"the request needs an {ITEM_ID!r} column (int item ids); found {list(frame.columns)}")
        columns[ITEM_ID] = pa.array(frame[ITEM_ID].to_numpy().astype(np.int64))
    elif isinstance(manifest.model, CustomModelConfig):
        # Your model's ``encode`` reads what it needs: pass every request column through.
        for name in frame.columns:
            if name not in (SUBJECT_ID, SUBJECT_DIGEST):
                columns[name] = pa.array(frame[name].tolist())
    else:
        if FEATURES not in frame.columns:
            raise ConfigError(
                f"the request needs a {FEATURES!r} column (one list of "
                f"{manifest.model.num_features} floats per row); found {list(frame.columns)}"
            )
        columns[FEATURES] = pa.array([list(map(float, f)) for f in frame[FEATURES].tolist()], pa.list_(pa.float32()))
    return pa.table(columns)
