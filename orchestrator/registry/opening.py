"""Opening a lineage: the parts it composes, connected once, and reconciled before their first use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from expunge.orchestrator.config import StorageConfig, TrackingConfig
from expunge.orchestrator.registry.artifacts import ArtifactEraser
from expunge.orchestrator.registry.chain_anchors import ChainAnchors
from expunge.orchestrator.registry.packaging import Packager
from expunge.orchestrator.registry.runs import RunRecorder
from expunge.orchestrator.registry.scratch import Staging
from expunge.orchestrator.registry.tracking import Registry
from expunge.orchestrator.registry.version_purge import Purger

__all__ = ["LineageParts", "OnFirstUse", "connect"]


@dataclass(frozen=True)
class LineageParts:
    """What an open ``Lineage`` composes: the connection and one object per job."""

    registry: Registry
    staging: Staging
    runs: RunRecorder
    packaging: Packager
    purger: Purger
    anchors: ChainAnchors


def connect(tracking: TrackingConfig, storage: StorageConfig | str) -> LineageParts:
    """Connect to MLflow (``Registry.open``) and build the parts.

    Raises:
        TrackingUnreachable: the tracking server or database does not answer.
        ArtifactStoreNotErasable: model files would go where every copy cannot be deleted.
        ConfigError: an http(s) tracking URI without ``tracking.backend_store_uri``.
    """
    eraser = ArtifactEraser.from_env()
    registry = Registry.open(tracking, storage, check_root=eraser.check)
    staging = Staging.for_tracking(registry.uri)
    return LineageParts(
        registry=registry,
        staging=staging,
        runs=RunRecorder(registry),
        packaging=Packager(registry, staging),
        purger=Purger(registry, eraser),
        anchors=ChainAnchors(registry.client, registry.uri, registry.experiment_id, registry.store_uri),
    )


class OnFirstUse:
    """Connects on first use and runs ``reconcile`` before anything else uses the parts.

    Other threads wait for that first reconcile; the reconcile itself (same thread) gets the parts
    without starting another. A connect or reconcile that fails is tried again on the next use.
    """

    def __init__(self, connect: Callable[[], LineageParts], reconcile: Callable[[], None]) -> None:
        self._connect = connect
        self._reconcile = reconcile
        self._parts: LineageParts | None = None
        self._lock = threading.RLock()
        self._reconciling = False
        #: True once the first reconcile finished.
        self.done = False

    def get(self) -> LineageParts:
        """The parts; the first call connects and reconciles (raises what those raise)."""
        if not self.done:
            self.reconcile_first()
        if self._parts is None:  # only inside the first reconcile, before it connected: never asked
            raise RuntimeError("a Lineage was used before it connected")
        return self._parts

    def connect_now(self) -> None:
        """Connect unless connected (raises what connecting raises); the first use still reconciles first."""
        with self._lock:
            if self._parts is None:
                self._parts = self._connect()

    def reconcile_first(self) -> bool:
        """Connect and run the first reconcile unless done or under way; True when this call ran it."""
        if self.done:
            return False
        with self._lock:
            if self.done or self._reconciling:
                return False
            self._reconciling = True
            try:
                if self._parts is None:
                    self._parts = self._connect()
                self._reconcile()
                self.done = True
            finally:
                self._reconciling = False
            return True
