"""The Ray seam of the erasure service: a detached, named, restartable actor around ``ErasureService``.

``start_service`` creates it (or finds it running); ``find_service`` looks it up; ``stop_service``
stops it and, with it, the shard actors it owns. Ray restarts the actor after a crash
(``max_restarts=-1``); the new instance reads the journal and finishes what was open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray

from expunge.orchestrator.api.server import HttpServer
from expunge.orchestrator.config import AnyModelConfig, JobConfig, ServiceConfig, StorageConfig, TrainingConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import (
    ConfigError,
    ExpungeError,
    ServiceUnavailableError,
    StorageUnavailableError,
    StoreBusyError,
    TrackingUnreachable,
)
from expunge.orchestrator.pool import RayShardPool, ShardPool
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.core import ErasureService, ServedVersion, ServiceStats
from expunge.orchestrator.service.journal import RequestStatus
from expunge.orchestrator.service.subject_key import require_key_on_cluster
from expunge.orchestrator.service.watch import DeadlineWatch
from expunge.shards.niceness import apply_niceness
from expunge.shards.store import ObjectStore

__all__ = ["ServiceActor", "find_service", "start_service", "stop_service"]

log = logging.getLogger(__name__)

#: Concurrent calls one service actor serves (waiting calls hold one each).
MAX_CONCURRENCY = 256
#: Environment the service actor needs from the process that starts it (when set there).
_PASSED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_DISABLE_TELEMETRY",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "EXPUNGE_FAULT_AT_WRITE",
    "EXPUNGE_FAULT_MODE",
    "EXPUNGE_FAULT_MATCH",
    "EXPUNGE_FAULT_ONCE",
    "EXPUNGE_FAULT_AT_MLFLOW",
)
#: Credentials never passed (a runtime env is kept in the GCS and shown in the dashboard): the nodes' own
#: (their environment, an instance role, IRSA) serve, as a unit; a missing one is only warned about.
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@ray.remote(num_cpus=0)
def _has_env(names: list[str]) -> list[bool]:
    """Which of ``names`` are set in a cluster worker's environment."""
    return [name in os.environ for name in names]


def _restartable_pool(restarts: int) -> Any:
    def factory(
        storage: StorageConfig, training: TrainingConfig, model: AnyModelConfig, versions: Mapping[int, int | None]
    ) -> ShardPool:
        return RayShardPool(storage, training, model, versions, restarts=restarts)

    return factory


#: How long a restarted service waits for another writer to release the store, in seconds.
_RESTART_LEASE_WAIT_S = 3600.0


class _ServiceActor:
    """Thin wrapper: every method delegates to ``ErasureService`` (``expunge.orchestrator.service.core``).

    Created with ``max_restarts=-1``: Ray re-runs this constructor after a crash, and the new
    service reads the journal and finishes what was open.
    """

    def __init__(self, job_json: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        job = JobConfig.model_validate_json(job_json)
        apply_niceness(job.training.niceness)  # the single writer must not wait behind Ray's nice-15 peers
        # Its threads wait on file, store and MLflow writes all the time: at Python's 5 ms switch interval
        # each wait cost up to 5 ms more behind a busy thread (registration lagged by tens of seconds).
        sys.setswitchinterval(job.service.switch_interval_ms / 1000)
        hasher = SubjectHasher.from_settings(job.privacy)  # the node's variable, else its key file
        # Restarted by Ray after a crash: wait for the store's lease (a CLI job may hold it now) and
        # for unreachable infrastructure (S3, MLflow) to come back, rather than die for good in this
        # constructor. Started by `expunge serve`: refused at once, with the typed error.
        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        deadline = time.monotonic() + (_RESTART_LEASE_WAIT_S if restarted else 0.0)
        pause = 1.0
        while True:
            try:
                lineage = Lineage(job.tracking, job.storage) if job.tracking.enabled else None
                self._service = ErasureService(
                    job,
                    hasher,
                    lineage,
                    _restartable_pool(job.service.shard_restarts),
                    lease_wait_s=_RESTART_LEASE_WAIT_S if restarted else 0.0,
                )
                break
            except (StorageUnavailableError, TrackingUnreachable, StoreBusyError) as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("the restarted service waits for %s (%s)", type(exc).__name__, exc)
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
        self._http: HttpServer | None = None
        self.url: str | None = None
        if job.service.port:
            try:
                self._http = HttpServer(self._service, job.service)
                self.url = self._http.start()
            except BaseException:
                self._service.close()
                raise
        self._watch = DeadlineWatch(self._service.lifecycle, job.service.due_days_warning)
        self._watch.start()

    def ready(self) -> dict[str, Any]:
        # The store this service erases from and its published version.
        manifest = self._service.coordinator.require_manifest()
        return {"storage": self._service.coordinator.store.uri, "ensemble_version": manifest.version, "url": self.url}

    def submit(
        self, subject_ids: list[object], idempotency_key: str | None, reason: str | None, ticket: str | None = None
    ) -> str:
        return self._service.submit(subject_ids, idempotency_key, reason, ticket)

    def forget(
        self,
        subject_ids: list[object],
        idempotency_key: str | None,
        reason: str | None,
        timeout: float | None,
        ticket: str | None = None,
    ) -> ErasureReceipt:
        return self._service.forget(subject_ids, idempotency_key, reason, timeout, ticket)

    def status(self, request_id: str) -> RequestStatus:
        return self._service.status(request_id)

    def wait(self, request_id: str, stage: Literal["committed", "registered"], timeout: float | None) -> RequestStatus:
        return self._service.wait(request_id, stage, timeout)

    def ingest(self, rows: pa.Table, request_id: str | None) -> IngestReceipt:
        return self._service.ingest(rows, request_id)

    def predict(self, rows: pa.Table) -> np.ndarray:
        return self._service.predict(rows)

    def recommend(self, subject_id: object, k: int) -> list[int]:
        return self._service.recommend(subject_id, k)

    def model_version(self) -> ServedVersion:
        return self._service.model_version()

    def stats(self) -> ServiceStats:
        return self._service.stats()

    def exact_solve_seconds(self) -> float:
        return self._service.exact_solve_seconds()

    def pid(self) -> int:
        return os.getpid()

    def shard_actor_pids(self) -> dict[int, int]:
        """Process ids of the warm shard actors (for kill tests and operators)."""
        pool = self._service.coordinator.pool
        return {s: int(p) for s, p in pool.call("pid", {s: () for s in getattr(pool, "actors", {})}).items()}

    def shutdown(self) -> None:
        self._watch.stop()
        if self._http is not None:
            self._http.stop()
        self._service.close()


ServiceActor: Any = ray.remote(_ServiceActor)


def find_service(namespace: str, name: str) -> Any:
    """The running service actor's handle.

    Raises:
        ServiceUnavailableError: none runs under that name and namespace on this cluster.
    """
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise ServiceUnavailableError(
            f"no Expunge service {name!r} in Ray namespace {namespace!r} on this cluster: start it with "
            f"`expunge serve --config FILE.yaml --namespace {namespace}` (or check --address / RAY_ADDRESS)"
        ) from exc


def start_service(job: JobConfig, timeout_s: float = 600.0) -> tuple[Any, bool]:
    """Create the detached service actor (or find it running); returns ``(handle, created)``.

    Waits until the service has read its journal and started every shard actor.

    Raises:
        ConfigError: a node of the cluster cannot read the digest key, or holds another one (checked
            here, before anything starts; the key never travels through Ray), or the namespace
            already runs a service for another store.
        ExpungeError: the service failed to start (e.g. no trained store); the error says why.
    """
    service: ServiceConfig = job.service
    handle: Any = None
    with contextlib.suppress(ValueError):
        handle = ray.get_actor(service.name, namespace=service.namespace)
    if handle is not None:
        described: dict[str, Any] = ray.get(handle.ready.remote(), timeout=timeout_s)
        serving = described["storage"]
        if serving != ObjectStore(job.storage).uri:
            raise ConfigError(
                f"namespace {service.namespace!r} already runs service {service.name!r} for the store {serving}, not "
                f"{job.storage.uri}: stop it first (`expunge serve --stop --namespace {service.namespace}`) or give "
                "this store its own namespace (--namespace or service.namespace)"
            )
        return handle, False
    # Fail here, not in a restarting actor: every node must give the service the key itself.
    require_key_on_cluster(job.privacy, _local_key_check(job))
    env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
    credentials = [name for name in _CREDENTIAL_ENV if name in os.environ]
    on_cluster: list[bool] = ray.get(_has_env.remote(credentials))
    missing = [name for name, present in zip(credentials, on_cluster, strict=True) if not present]
    if missing:
        log.warning(
            "the cluster's environment lacks %s (set in this process): the service uses the nodes' own credentials "
            "(an instance role, IRSA, ~/.aws); Expunge never passes secrets through Ray (docs/security.md)",
            ", ".join(missing),
        )
    created: Any = ServiceActor.options(
        name=service.name,
        namespace=service.namespace,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=MAX_CONCURRENCY,
        num_cpus=0,
        runtime_env={"env_vars": env},
    ).remote(job.model_dump_json())
    handle = created
    try:
        ray.get(handle.ready.remote(), timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:
        ray.kill(handle, no_restart=True)
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise cause from None
    except ray.exceptions.RayActorError as exc:
        ray.kill(handle, no_restart=True)
        typed = _typed_cause(exc)
        if typed is not None:
            raise typed from None
        raise ServiceUnavailableError(f"the service actor did not start: {exc}") from exc
    return handle, True


def _local_key_check(job: JobConfig) -> str | None:
    """The key check of the key this process holds, to compare with the nodes'; None when it holds none."""
    try:
        return SubjectHasher.from_settings(job.privacy).key_check()
    except ConfigError:
        return None


def _typed_cause(exc: BaseException) -> ExpungeError | None:
    """The ``ExpungeError`` an actor's constructor raised, however Ray wrapped it: ``cause`` chains, and
    an ``ActorDiedError`` that holds the constructor's ``RayTaskError`` as its first argument."""
    seen: object = exc
    for _ in range(6):
        if isinstance(seen, ExpungeError):
            return seen
        wrapped = getattr(seen, "cause", None)
        if wrapped is None:
            args = getattr(seen, "args", ())
            wrapped = args[0] if args and isinstance(args[0], BaseException) else None
        if wrapped is None:
            return None
        seen = wrapped
    return None


def stop_service(namespace: str, name: str) -> bool:
    """Stop the service and its shard actors; False when none was running. Queued requests stay journalled."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    try:
        ray.get(handle.shutdown.remote(), timeout=600)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        log.warning("the service did not shut down cleanly; killing it")
    ray.kill(handle, no_restart=True)
    return True
