"""Live predictions and recommendations from the published version of a store (its warm actors or statistics)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from expunge.orchestrator.catalog import EnsembleManifest
from expunge.orchestrator.config import MFConfig
from expunge.orchestrator.errors import ConfigError, UnknownSubjectError
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble, aggregate
from expunge.orchestrator.serving.ready import ServedStatistics, solve_from_scratch
from expunge.orchestrator.session import StoreSession
from expunge.shards.models import SufficientStatisticsModel, model_for, task_of
from expunge.shards.rows import FEATURES, ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID

__all__ = ["LiveEnsemble"]


class LiveEnsemble:
    """Answers ``predict`` and ``recommend`` from the latest published version, never a superseded one.

    Constructible without training or erasure: ``LiveEnsemble(StoreSession(uri, hasher, local_pool))``.
    """

    def __init__(self, session: StoreSession) -> None:
        self.session = session
        self._statistics: tuple[int, StatisticsEnsemble] | None = None  # (ensemble version, its sum)

    def follow_latest(self) -> EnsembleManifest:
        """The published version, re-read from the store: serving never answers from a superseded one.

        Another process may have erased someone since this process last looked; its actors
        and cached statistics would still hold them.
        """
        if self.session.follow_latest():
            self._statistics = None
        return self.session.require_manifest()

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Ensemble predictions, shape (n,) (class probabilities (n, classes) for classifiers).

        Rows of a ratings model need ``subject_id`` (or ``subject_digest``) and ``item_id``; a
        classifier's need ``features``. Unknown subjects, erased ones included, get the
        population's prediction: after an erasure the person is indistinguishable from a newcomer.

        Raises:
            ConfigError: a needed column is missing.
        """
        manifest = self.follow_latest()
        rows = self._canonical(manifest, rows)
        model = model_for(manifest.model)
        if isinstance(model, SufficientStatisticsModel):
            return self.statistics().fit.predict(rows)
        results = self.session.pool.call("predict", {s: (rows,) for s in range(manifest.sharding.shards)})
        ordered = [results[s] for s in range(manifest.sharding.shards)]
        return aggregate([r[0] for r in ordered], [r[1] for r in ordered], model.subject_specific)

    def predict_served(self, served: ServedStatistics, rows: pa.Table) -> np.ndarray:
        """``predict`` from a ready statistics model (``ReadyFits.served``), checked against its version.

        Reads nothing from the store: the service answers this way without waiting for a commit.

        Raises:
            ConfigError: a needed column is missing.
        """
        return served.predict(self._canonical(served.manifest, rows))

    def recommend_served(self, served: ServedStatistics, subject_id: object, k: int = 10) -> list[int]:
        """``recommend`` from a ready statistics model; subjects erased since its version are unknown.

        Raises:
            UnknownSubjectError: the model holds no rows of the subject, or they were erased since.
            ConfigError: ``k < 1``.
        """
        return served.recommend(self.session.hasher.digest(subject_id), k, self.session.store.uri)

    def _canonical(self, manifest: EnsembleManifest, rows: pa.Table) -> pa.Table:
        """``rows`` checked for ``manifest``'s model, with ``subject_digest`` added from ``subject_id``."""
        needed = [ITEM_ID] if task_of(manifest.model) == "rating" else [FEATURES]
        missing = [c for c in needed if c not in rows.column_names]
        if task_of(manifest.model) == "rating" and not {SUBJECT_ID, SUBJECT_DIGEST} & set(rows.column_names):
            missing.append(SUBJECT_ID)
        if missing:
            raise ConfigError(
                f"rows to predict lack column(s) {missing}: a {manifest.model.kind!r} model needs "
                f"{', '.join(needed + ([SUBJECT_ID] if task_of(manifest.model) == 'rating' else []))} "
                f"(got {rows.column_names})"
            )
        if task_of(manifest.model) == "rating":
            _check_items(rows.column(ITEM_ID), int(getattr(manifest.model, "num_items", 0) or 0))
        if SUBJECT_DIGEST not in rows.column_names and SUBJECT_ID in rows.column_names:
            rows = rows.append_column(
                SUBJECT_DIGEST,
                pa.array(self.session.hasher.digest_many(rows.column(SUBJECT_ID).to_pylist()), pa.string()),
            )
        return rows

    def statistics(self) -> StatisticsEnsemble:
        """The summed shard states of a sufficient-statistics model and their fit (cached per version).

        Read from the final checkpoint of each published shard version in the store, so no
        shard actor has to run.

        Raises:
            ConfigError: the published model is not a sufficient-statistics model.
        """
        manifest = self.follow_latest()
        model = model_for(manifest.model)
        if not isinstance(model, SufficientStatisticsModel):
            raise ConfigError(
                f"ensemble v{manifest.version} is a {manifest.model.kind!r} model, not a statistics model"
            )
        if self._statistics is None or self._statistics[0] != manifest.version:
            self._statistics = (manifest.version, solve_from_scratch(self.session.store, manifest))
        return self._statistics[1]

    def recommend(self, subject_id: object, k: int = 10) -> list[int]:
        """The ``k`` items the subject has not rated that the exact ensemble ranks best, best first.

        A sufficient-statistics model ranks with its own top-N scorer (EASE for ``item_stats``)
        over the items someone rated; matrix factorisation ranks every catalogue item by the
        ensemble's predicted rating. Ties go to the smaller item id.

        Raises:
            UnknownSubjectError: the published version holds no rows of the subject (never
                trained on, or erased).
            ConfigError: ``k < 1``, or a model without an item catalogue (a classifier).
        """
        manifest = self.follow_latest()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k={k!r}: ask for a whole number of recommendations, at least 1")
        digest = self.session.hasher.digest(subject_id)
        model = model_for(manifest.model)
        unknown = UnknownSubjectError(
            f"subject {digest[:12]}... (digest) has no rows in ensemble v{manifest.version} of {self.session.store.uri}: "
            "recommendations need a subject the model holds (never trained on, or erased). Check the id and "
            "EXPUNGE_SUBJECT_KEY, or use popular items for newcomers."
        )
        if isinstance(model, SufficientStatisticsModel):
            fit = self.statistics().fit
            if not fit.knows(digest):
                raise unknown
            return fit.recommend(digest, k)
        if not isinstance(manifest.model, MFConfig):
            raise ConfigError(
                f"recommend needs a model with an item catalogue (kind mf or item_stats); ensemble "
                f"v{manifest.version} is {manifest.model.kind!r}"
            )
        cells = self.session.placement_index().cells().get(digest)
        if not cells:
            raise unknown
        catalogue = np.arange(manifest.model.num_items, dtype=np.int64)
        rows = pa.table({ITEM_ID: catalogue, SUBJECT_DIGEST: pa.array([digest] * len(catalogue), pa.string())})
        scores = self.predict(rows)
        scores[self._rated_items(manifest, digest, cells)] = -np.inf
        order = np.argsort(-scores, kind="stable")
        return [int(i) for i in order[np.isfinite(scores[order])][:k]]

    def _rated_items(self, manifest: EnsembleManifest, digest: str, cells: Sequence[Any]) -> np.ndarray:
        """Item ids of the subject's rows, read from the slices that hold them."""
        items: list[np.ndarray] = []
        for cell in cells:
            shard_manifest = self.session.catalog.shard_manifest(cell.shard, manifest.shard_versions[cell.shard])
            table = pq.read_table(io.BytesIO(self.session.store.get(shard_manifest.slices[cell.slice].key)))
            mine = table.filter(pc.equal(table.column(SUBJECT_DIGEST), digest))
            items.append(mine.column(ITEM_ID).to_numpy().astype(np.int64))
        return np.concatenate(items) if items else np.zeros(0, np.int64)

    def constituent_tensors(self) -> dict[int, dict[str, Any]]:
        """Every constituent's weights and optimizer state, by shard (what bit-exactness compares)."""
        manifest = self.session.require_manifest()
        return self.session.pool.call("tensors", {s: () for s in range(manifest.sharding.shards)})


def _check_items(column: pa.ChunkedArray, num_items: int) -> None:
    """Item ids to predict for are integers of the catalogue, ``[0, num_items)`` (0: not known, any >= 0).

    Raises:
        ConfigError: another type, a missing id, or one outside the catalogue (bad input, not a shard fault).
    """
    if not pa.types.is_integer(column.type) or column.null_count:
        raise ConfigError(
            f"item_id must be integers with no missing value (got {column.type}); send item ids as numbers"
        )
    if len(column) == 0:
        return
    low, high = pc.min(column).as_py(), pc.max(column).as_py()
    if low < 0 or (num_items and high >= num_items):
        bound = f"[0, {num_items})" if num_items else "0 or more"
        raise ConfigError(f"item ids must lie in {bound}; found [{low}, {high}]")
