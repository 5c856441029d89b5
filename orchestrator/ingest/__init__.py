"""Ingest: add new rows to a trained store, retraining only the shards that receive them (docs/ingest.md)."""

from expunge.orchestrator.ingest.ingester import Ingester
from expunge.orchestrator.ingest.prepared import PreparedIngest
from expunge.orchestrator.ingest.slice_policy import IngestLimits, IngestPlan, plan_ingest

__all__ = ["IngestLimits", "IngestPlan", "Ingester", "PreparedIngest", "plan_ingest"]
