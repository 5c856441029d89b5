"""Fault injection before every MLflow step of recording a commit; used only by crash tests.

``EXPUNGE_FAULT_AT_MLFLOW=<step>`` (one of ``ERASURE_STEPS``) fails the first time that step is
reached in this process; ``EXPUNGE_FAULT_MODE`` (shared with the store's ``EXPUNGE_FAULT_AT_WRITE``)
says how: ``raise`` (default) raises ``InjectedFault``, ``kill`` ends the process at once, as a
crash would. Unset (always, outside crash tests): no effect.
"""

from __future__ import annotations

import os

from expunge.orchestrator.errors import ConfigError
from expunge.shards.store import InjectedFault

__all__ = ["ERASURE_STEPS", "FAULT_AT_MLFLOW", "INGEST_STEPS", "TRAINING_STEPS", "fault_point"]

FAULT_AT_MLFLOW = "EXPUNGE_FAULT_AT_MLFLOW"

#: Every step of an erasure's record, in the order they run (a training has no purge steps).
ERASURE_STEPS = (
    "run.create",  # the erasure (or training) run
    "run.log",  # its params, metrics and digest tags
    "run.inputs",  # manifest artifact and dataset inputs
    "model.create",  # the LoggedModel entry
    "model.stage",  # weights copied to the staging folder, pyfunc saved there
    "model.upload",  # staged files uploaded to the LoggedModel
    "model.finalize",  # LoggedModel marked READY
    "version.create",  # the registered model version
    "alias.move",  # the alias moves to it
    "purge.alias",  # aliases left on superseded versions removed
    "purge.artifacts",  # every stored copy of a superseded LoggedModel's files deleted
    "purge.delete_model",  # the LoggedModel soft-deleted
    "purge.gc",  # the LoggedModel record hard-deleted
    "purge.notice",  # the purge notice written where a superseded version's files were
    "purge.tags",  # superseded versions tagged and described as purged
    "run.receipt",  # registry versions and receipt logged on the run
    "run.chart",  # retrain chart
    "run.end",  # run terminated
)
TRAINING_STEPS = tuple(s for s in ERASURE_STEPS if not s.startswith("purge.") and s not in {"run.receipt", "run.chart"})
#: An ingest's record: a training's steps plus the receipt on the run (no chart; its purge steps
#: run only when the registry missed an erasure before it, ``Lineage.record_ingest``).
INGEST_STEPS = tuple(s for s in ERASURE_STEPS if not s.startswith("purge.") and s != "run.chart")


def fault_point(step: str) -> None:
    """Called before each MLflow step; fails here when ``EXPUNGE_FAULT_AT_MLFLOW`` names this step."""
    target = os.environ.get(FAULT_AT_MLFLOW)
    if not target:
        return
    if target not in ERASURE_STEPS:
        raise ConfigError(f"{FAULT_AT_MLFLOW}={target!r} names no MLflow step; use one of {list(ERASURE_STEPS)}")
    if target != step:
        return
    if os.environ.get("EXPUNGE_FAULT_MODE", "raise") == "kill":
        os._exit(137)
    raise InjectedFault(f"injected fault before MLflow step {step}")
