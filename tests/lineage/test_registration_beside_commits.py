"""Registration beside a stream of commits: a version purged while MLflow catches up is not a failure.

The service registers on its own thread while its commit worker goes on committing, and every
commit deletes the checkpoints its version superseded. The registration reads the constituents of
the version it records first (``Packager.hold``): a version already superseded and purged is
replaced by the newest one, and one purged after that read is still registered whole.
"""

from __future__ import annotations

import mlflow.pyfunc

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import Lineage
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows(users=16)
MODEL = "expunge-beside"


def _open(root) -> tuple[Coordinator, Lineage]:
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="beside", model_name=MODEL)
    lineage = Lineage(tracking, str(root / "store"))
    return Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, local_pool), lineage


def _erase_unregistered(coordinator: Coordinator, index: int) -> int:
    """Commit one erasure without registering it (the service's first stage); its ensemble version."""
    digest = coordinator.hasher.digest(subjects(ROWS)[index])
    receipt = coordinator.forget_digests([digest], request_id=f"stream-{index}", register=False)
    assert receipt.status == "erased"
    assert receipt.model_version_after is not None
    return receipt.model_version_after


def test_a_version_purged_before_its_registration_read_registers_the_newest(tmp_path, monkeypatch):
    coordinator, lineage = _open(tmp_path)
    coordinator.train(ROWS, job(shards=1, slices=2))
    first = _erase_unregistered(coordinator, 3)
    stale = Catalog(coordinator.store).read(first)
    newest = _erase_unregistered(coordinator, 5)  # one shard: every checkpoint of the stale version is purged

    class ListedJustBefore(Catalog):  # the registrar listed the store just before the second commit
        def latest(self):
            return stale

    monkeypatch.setattr("expunge.orchestrator.registry.lineage.Catalog", ListedJustBefore)
    coordinator.register_published()
    version = lineage.client.get_model_version_by_alias(MODEL, "production")
    assert version.tags["expunge.ensemble_version"] == str(newest)


def test_a_version_purged_after_its_registration_read_is_registered_whole(tmp_path, monkeypatch):
    coordinator, lineage = _open(tmp_path)
    coordinator.train(ROWS, job(shards=1, slices=2))
    version = _erase_unregistered(coordinator, 3)
    manifest = Catalog(coordinator.store).read(version)
    checkpoint = Catalog(coordinator.store).shard_manifest(0, manifest.shard_versions[0]).checkpoints[-1].key
    log_ensemble = lineage.runs.log_ensemble

    def purged_meanwhile(*args, **kwargs):  # the next commit's purge, while the run is being logged
        coordinator.store.delete([checkpoint])
        return log_ensemble(*args, **kwargs)

    monkeypatch.setattr(lineage.runs, "log_ensemble", purged_meanwhile)
    coordinator.register_published()
    registered = lineage.client.get_model_version_by_alias(MODEL, "production")
    assert registered.tags["expunge.ensemble_version"] == str(version)
    assert not coordinator.store.exists(checkpoint)
    # Loading checks each copied constituent against its sha256: the copy in MLflow, not the purged checkpoint.
    predictor = mlflow.pyfunc.load_model(registered.source).unwrap_python_model()._predictor
    assert predictor.manifest.version == version
    assert len(predictor.states) == 1
