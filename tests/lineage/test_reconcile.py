"""A crash or MLflow outage between the store commit and the registry must not leave an erased subject servable."""

from __future__ import annotations

import pytest

from orchestrator.config import TrackingConfig
from orchestrator.coordinator import Coordinator, local_pool
from orchestrator.registry import PURGED_BY_REQUEST, Lineage
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows()


class _OutageOnce(Lineage):
    """A real Lineage whose first erasure record fails, as an MLflow outage would."""

    failed = False

    def record_erasure(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise ConnectionError("MLflow tracking server unreachable")
        return super().record_erasure(*args, **kwargs)


def test_the_registry_catches_up_with_the_store_on_reopen(tmp_path, hasher):
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="expunge-reconcile")
    store = str(tmp_path / "store")
    coordinator = Coordinator(store, hasher, _OutageOnce(tracking, store), pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    subject = subjects(ROWS)[0]
    with pytest.raises(ConnectionError):
        coordinator.forget([subject], request_id="ticket-7")
    lineage = Lineage(tracking, store)
    assert lineage.recorded_ensemble_version() == 1  # the alias still serves the pre-erasure model

    Coordinator(store, hasher, lineage, pool_factory=local_pool)  # e.g. the retried job starting up
    assert lineage.recorded_ensemble_version() == 2
    latest = lineage.client.get_model_version_by_alias("expunge-reconcile", "production")
    assert latest.tags["expunge.request_id"] == "ticket-7"
    first = lineage.client.get_model_version("expunge-reconcile", "1")
    assert first.tags[PURGED_BY_REQUEST] == "ticket-7"
