"""A served item_stats version predicts what the live exact ensemble predicts, before and after an erasure."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa

from expunge.orchestrator.config import ItemStatsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.registry import Lineage
from expunge.shards.rows import ITEM_ID, SUBJECT_DIGEST
from tests.engine import job
from tests.lineage._support import email_rows, subjects


def test_an_item_stats_version_serves_the_exact_ensemble(tmp_path, hasher, monkeypatch):
    rows = email_rows(users=30)
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="stats", model_name="expunge-stats")
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    coordinator.train(rows, job(model=ItemStatsConfig(factors=2, neighbours=5), shards=3, slices=2))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lineage.uri)
    people = subjects(rows)
    request = pd.DataFrame(
        {
            SUBJECT_DIGEST: [hasher.digest(people[0])] * 3 + [""] + [hasher.digest(people[5])] * 2,
            ITEM_ID: [0, 4, 9, 4, 1, 2],
        }
    )
    live = coordinator.predict(pa_rows(request))
    served = mlflow.pyfunc.load_model("models:/expunge-stats@production").predict(request)
    assert np.array_equal(served, live)
    coordinator.forget([people[0]])
    after = mlflow.pyfunc.load_model("models:/expunge-stats@production").predict(request)
    assert np.array_equal(after, coordinator.predict(pa_rows(request)))
    assert not np.allclose(after[:3], served[:3])  # the erased subject now gets the subject-free prediction
    # Charts are drawn only when asked for (tracking.charts): none on this erasure's run.
    runs = lineage.client.search_runs([lineage.experiment_id], filter_string="tags.`expunge.kind` = 'erasure'")
    assert runs
    assert all(
        "retrain_seconds.png" not in {a.path for a in lineage.client.list_artifacts(r.info.run_id)} for r in runs
    )


def pa_rows(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)
