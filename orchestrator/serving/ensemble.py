"""Training-free aggregation of constituents (nothing here is fitted on data across shards, so nothing to unlearn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from expunge.shards.models import StatisticsFit, SufficientStatisticsModel

__all__ = ["Refit", "StatisticsEnsemble", "aggregate"]


def aggregate(scores: Sequence[np.ndarray], known: Sequence[np.ndarray], subject_specific: bool) -> np.ndarray:
    """Mean of constituent scores or class probabilities.

    With per-subject parameters, a row is answered by the shards that hold its subject (its
    own shard under subject-aware placement); rows of subjects no shard holds get the mean
    over every shard (each falls back to its subject-free part, e.g. item biases).
    """
    if not scores:
        raise ValueError("aggregate needs at least one constituent")
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in scores])  # (S, N) or (S, N, C)
    if not subject_specific:
        return stacked.mean(axis=0)
    mask = np.stack([np.asarray(k, dtype=bool) for k in known]).astype(np.float64)  # (S, N)
    while mask.ndim < stacked.ndim:
        mask = mask[..., None]
    counts = mask.sum(axis=0)
    own = (stacked * mask).sum(axis=0) / np.where(counts > 0, counts, 1.0)
    return np.where(counts > 0, own, stacked.mean(axis=0))


class StatisticsEnsemble:
    """The exact ensemble of a sufficient-statistics model: the shard states added up, then fitted once.

    Adding is the whole aggregation (exact sums, see ``SufficientStatisticsModel``): the
    result is the state one model trained on every shard's rows would hold, so the ensemble
    costs no accuracy and nothing but the shards needs unlearning.

    Raises:
        ValueError: a subject occurs in two shards (its rows were split by row placement).
    """

    def __init__(
        self,
        model: SufficientStatisticsModel,
        states: Sequence[torch.nn.Module],
        *,
        refit: Refit | None = None,
    ) -> None:
        """Sum ``states`` and fit the sum. ``refit``: fit with the model's ``refit`` (same bits; the fit
        keeps what the next refit can start from, and takes what ``refit.previous`` kept); a model
        without ``refit``, or ``refit`` None, fits with ``fit``."""
        self.model = model
        self.state = model.combine(states)
        again = getattr(model, "refit", None) if refit is not None else None
        if again is not None and refit is not None:
            self.fit: StatisticsFit = again(self.state, refit.previous)
        else:
            self.fit = model.fit(self.state)


@dataclass(frozen=True)
class Refit:
    """Fit an ensemble's state with the model's optional ``refit``, after ``previous`` (or None: the first).

    ``previous``: the fit served before, whose kept inputs the new fit takes; ``item_stats`` carries
    them over when the new state is the previous one without some subjects
    (``ItemStatsModel.refit``), and the fit keeps two or three I x I matrices for the next one.
    Same bits as ``fit``. The ready solve passes it (``serving/ready.py``).
    """

    previous: StatisticsFit | None = None
