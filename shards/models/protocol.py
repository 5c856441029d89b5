"""The small protocols a model family implements to be trained and unlearned by Expunge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch

__all__ = [
    "DecrementalStatisticsModel",
    "SisaModel",
    "StatisticsFit",
    "SubjectStatisticsModel",
    "SufficientStatisticsModel",
]


@runtime_checkable
class SisaModel(Protocol):
    """A model family: builds torch modules and turns canonical rows into tensors.

    Expunge owns the loop, the optimizer (Adam), seeding and checkpoints. A fixed-architecture
    model implements ``grow`` as a no-op, ``layout`` as ``{}`` and ``rebuild`` as ``build``
    with any generator. A model with per-subject parameters (a user embedding) adds them
    in ``grow`` for the rows of each new slice, so that a slice's subjects exist only from
    that slice's step on, and erasing them leaves earlier checkpoints valid.
    """

    #: ``rating``: ``predict`` returns one score per row; ``classification``: probabilities.
    task: Literal["rating", "classification"]
    #: True when the module holds per-subject parameters (then the subject's own shard answers).
    subject_specific: bool

    def build(self, generator: torch.Generator) -> torch.nn.Module:
        """A freshly initialised module; draw every random number from ``generator``."""
        ...

    def grow(self, module: torch.nn.Module, slice_rows: pa.Table, generator: torch.Generator) -> None:
        """Register parameters for subjects first seen in this slice (no-op for most models)."""
        ...

    def layout(self, module: torch.nn.Module) -> dict[str, Any]:
        """JSON-able description of grown structure, stored with each checkpoint."""
        ...

    def rebuild(self, layout: dict[str, Any]) -> torch.nn.Module:
        """An empty module with the structure ``layout`` describes (values are loaded after)."""
        ...

    def encode(self, module: torch.nn.Module, rows: pa.Table) -> dict[str, torch.Tensor]:
        """Canonical rows -> tensors (inputs and, when present, targets)."""
        ...

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def predict(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def knows(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool per row: does this module hold the row's subject (only for subject_specific)."""
        ...


@runtime_checkable
class StatisticsFit(Protocol):
    """What a sufficient-statistics model derives from the summed state: it predicts and ranks."""

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Scores for canonical rows (``subject_digest``, ``item_id``); unknown subjects get the subject-free part."""
        ...

    def knows(self, subject_digest: str) -> bool:
        """Does the summed state hold this subject's own rows."""
        ...

    def recommend(self, subject_digest: str, k: int) -> list[int]:
        """The ``k`` best-ranked items the subject has not rated, best first."""
        ...


@runtime_checkable
class SufficientStatisticsModel(Protocol):
    """A model family whose shard state is a sum of per-subject contributions (no gradient training).

    Expunge adds each slice's contribution to the previous step's state (``accumulate``),
    checkpoints the cumulative state after every slice step, and erases by recomputing from
    the first affected slice, as for ``SisaModel``. Contributions must add up *exactly*
    (integers, or values on a fixed dyadic grid summed in float64), so that the state is
    independent of the order and grouping of the additions. Then the ensemble, ``combine``
    over the shards, is bit for bit the state of one model trained on all the data, and no
    aggregator is trained: nothing beyond the shards needs unlearning. A subject's
    contribution may use only that subject's own rows (and non-personal constants).

    The state is a ``torch.nn.Module`` of buffers, so checkpoints, ``tensors()`` and the
    exactness checks treat it like any constituent; ``layout`` gives the buffer sizes and
    subject digests a ``rebuild`` needs.
    """

    #: ``rating``: the fit predicts one score per row.
    task: Literal["rating", "classification"]
    #: True when the state holds per-subject rows (then the subject's own rows answer).
    subject_specific: bool

    def empty(self) -> torch.nn.Module:
        """The state of no rows (the start of step 0)."""
        ...

    def accumulate(self, state: torch.nn.Module, slice_rows: pa.Table) -> torch.nn.Module:
        """The state plus the contributions of one slice's rows (every row of each of its subjects)."""
        ...

    def layout(self, state: torch.nn.Module) -> dict[str, Any]:
        """JSON-able sizes and subject digests, stored with each checkpoint."""
        ...

    def rebuild(self, layout: dict[str, Any]) -> torch.nn.Module:
        """An empty state with the structure ``layout`` describes (values are loaded after)."""
        ...

    def combine(self, states: Sequence[torch.nn.Module]) -> torch.nn.Module:
        """The exact sum of shard states (subjects of different shards are disjoint)."""
        ...

    def fit(self, state: torch.nn.Module) -> StatisticsFit:
        """Derive the predictor from a (combined) state; deterministic, nothing is learned across shards."""
        ...


@runtime_checkable
class DecrementalStatisticsModel(SufficientStatisticsModel, Protocol):
    """A sufficient-statistics model that can also take contributions out again, exactly.

    Then a shard keeps one checkpoint, its final sums, and an erasure or an ingest changes them
    by the contributions of the subjects whose rows changed (out with the old rows, in with the
    new), without a pass over anyone else's rows. Without ``subtract`` a shard re-sums its slices.
    """

    def subtract(
        self, state: torch.nn.Module, part: torch.nn.Module, replacement: torch.nn.Module | None = None
    ) -> torch.nn.Module:
        """``state`` without ``part`` (a state of complete rows of some of its subjects), plus
        ``replacement`` (subjects it no longer holds, e.g. the same subjects' new rows), exactly."""
        ...


@runtime_checkable
class SubjectStatisticsModel(DecrementalStatisticsModel, Protocol):
    """A decremental statistics model whose state keeps every subject's own rows, by subject digest.

    Then an erasure's effect on a sum is known from the sum alone: the erased subjects'
    contributions, rebuilt from what the state stores of them, come out. The service's ready
    path uses it to build a pure erasure's new sum without reading the changed shards.
    """

    def subjects_of(self, state: torch.nn.Module) -> Sequence[str]:
        """The digests of the subjects ``state`` holds rows of."""
        ...

    def without_subjects(self, state: torch.nn.Module, digests: Sequence[str]) -> torch.nn.Module:
        """``state`` without every row of the subjects ``digests`` (all held by it), bit for bit the
        state summed from scratch over everyone else's rows. Raises ``ValueError`` for a digest
        ``state`` does not hold."""
        ...
