"""An item_stats fit gives the same bits whatever BLAS thread count its process had (issue 22)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import model_for
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID

threadpoolctl = pytest.importorskip("threadpoolctl")

ITEMS = 120


def _state():
    rows = synthetic_ratings(SyntheticRatingsConfig(users=200, items=ITEMS, ratings_per_user=30, seed=3))
    rows = rows.append_column(SUBJECT_DIGEST, pc.cast(rows.column(SUBJECT_ID), pa.string()))
    model = model_for(ItemStatsConfig(num_items=ITEMS, factors=6))
    return model, model.contribution(rows)


def test_a_fit_has_the_same_bits_on_one_blas_thread_or_several():
    # OpenBLAS splits the inverse and the eigensolver by thread count, and the split changes the
    # last bits: a service with two cores and a verifier with one would serve different models.
    model, state = _state()
    fits = {}
    for threads in (1, 2, 4):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            fits[threads] = model.fit(state)
    for name in ("ranking", "factors", "similarity", "item_bias"):
        reference = np.asarray(getattr(fits[1], name))
        for threads in (2, 4):
            assert np.asarray(getattr(fits[threads], name)).tobytes() == reference.tobytes(), (name, threads)
