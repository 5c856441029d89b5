"""A fresh process without Ray loads ``@production`` and matches the live ensemble; purged versions do not load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, ray_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from expunge.shards.rows import ITEM_ID, SUBJECT_ID
from tests.engine import job
from tests.lineage._support import SERVING_KEY, beyond_notice, email_rows, subjects

pytestmark = pytest.mark.integration

ROWS = email_rows()

# Runs in a new interpreter: no Ray, no Expunge objects, only MLflow and the request frame.
_SERVE = """
import json, os, sys
import numpy as np, pandas as pd, mlflow.pyfunc
frame = pd.read_parquet(sys.argv[1])
out = {}
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@production")
np.save(sys.argv[3] + "/by_digest.npy", model.predict(frame.drop(columns=["subject_id"])))
os.environ["EXPUNGE_SUBJECT_KEY"] = sys.argv[4]
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@production")
np.save(sys.argv[3] + "/by_id.npy", model.predict(frame.drop(columns=["subject_digest"])))
try:
    mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}/1")
    out["purged_loads"] = True
except Exception as exc:
    out["purged_loads"] = False
    out["purged_error"] = type(exc).__name__
    out["purged_message"] = str(exc)
out["ray_imported"] = "ray" in sys.modules
print(json.dumps(out))
"""


def test_a_fresh_process_serves_production_exactly_and_cannot_load_the_purged_version(tmp_path, ray_cluster):
    hasher = SubjectHasher(SERVING_KEY.encode())
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="serve", model_name="expunge-serve")
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=ray_pool)
    coordinator.train(ROWS, job(shards=2, slices=3))
    first_model = lineage.client.get_model_version("expunge-serve", "1").tags["expunge.logged_model_id"]
    assert [p for p in tmp_path.rglob("*") if p.is_file() and first_model in str(p)], "v1 has no files to purge"
    erased = subjects(ROWS)[5]
    receipt = coordinator.forget([erased], request_id="ticket-serve")

    # Requests for known subjects, the erased subject (now unknown) and a never-seen subject.
    frame = ROWS.select([SUBJECT_ID, ITEM_ID]).slice(0, 60).to_pandas()
    frame.loc[len(frame)] = {SUBJECT_ID: "stranger@example.org", ITEM_ID: 3}
    frame.loc[0, SUBJECT_ID] = erased
    frame["subject_digest"] = hasher.digest_many(frame[SUBJECT_ID])
    live = coordinator.predict(pa.Table.from_pandas(frame, preserve_index=False))
    coordinator.close()
    frame.to_parquet(tmp_path / "request.parquet")

    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "EXPUNGE_SUBJECT_KEY"}}
    env["MLFLOW_TRACKING_URI"] = lineage.uri
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE,
            str(tmp_path / "request.parquet"),
            "expunge-serve",
            str(tmp_path),
            SERVING_KEY,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert receipt.registry_version_after == "2"
    assert lineage.current_version() == "2"
    assert np.array_equal(np.load(tmp_path / "by_digest.npy"), live)
    assert np.array_equal(np.load(tmp_path / "by_id.npy"), live)
    assert report["ray_imported"] is False
    assert report["purged_loads"] is False
    purged = lineage.client.get_model_version("expunge-serve", "1")
    assert purged.tags[PURGED_BY_REQUEST] == "ticket-serve"
    assert report["purged_error"] == "PurgedVersionError"
    assert "PURGED by erasure request 'ticket-serve'" in report["purged_message"]
    assert "that was version 2" in report["purged_message"]
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and first_model in str(p)]
    assert leftovers  # the purge notice
    assert beyond_notice(leftovers, first_model) == []
