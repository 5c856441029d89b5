"""MLflow through ``MlflowClient`` only, one job per module; ``Lineage`` composes them for the coordinator.

``tracking``: the connection, experiment, registered model, safe searches and tag names.
``runs``: the run that explains each version (training, erasure, ingest; and each request that found nobody).
``packaging``: the servable pyfunc, the new version and the alias; ``scratch``: where its files
wait for upload. ``version_purge``: making versions an erasure superseded unloadable; ``artifacts``:
deleting every stored copy of their files; ``purge_notice``: what a purged version says (tags,
description, the notice that makes loading it name the erasure). ``chain_anchors``: the receipt
log's anchors on runs. ``checks``: read-only checks for ``expunge verify``. ``binding``: which registry a store
publishes to (pure). ``commit_records``: a commit's receipt as the store keeps it, for catching up.
``faults``: crash-test hooks. ``opening``: connecting once and reconciling before first use.
``lineage``: the facade.
"""

from __future__ import annotations

from expunge.orchestrator.registry.lineage import Lineage
from expunge.orchestrator.registry.tracking import PURGED_BY_REQUEST, default_tracking_uri

__all__ = ["PURGED_BY_REQUEST", "Lineage", "default_tracking_uri"]
