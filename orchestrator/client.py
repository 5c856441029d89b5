"""The Ray-driver SDK, the platform team's in-cluster path: ``RayClient`` talks to a running ``expunge serve``.

    from expunge import RayClient

    client = RayClient.connect(address="auto", namespace="expunge")
    receipt = client.forget(["user-7"], idempotency_key="GDPR-2026-0042")
    client.wait(receipt.request_id, stage="registered", timeout=60)
    top = client.recommend("user-8", k=10)

Every call is a Ray actor call to the service. A call that the service's crash interrupts is
sent again once Ray has restarted it, with the same idempotency key (``forget`` makes one up
when none is given), so a request is erased once and its receipt is the same.

It joins the Ray cluster, so it needs the server install and a Ray credential: recommender
services use the HTTP client ``expunge.Client`` (``expunge.client``) instead.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from expunge.orchestrator.cluster import check_address, client_address, gcs_answers
from expunge.orchestrator.errors import ConfigError, ExpungeError, ServiceUnavailableError
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.service.policy import check_subject_list, check_timeout

if TYPE_CHECKING:
    from expunge.orchestrator.service.journal import RequestStatus
    from expunge.orchestrator.service.views import ServedVersion, ServiceStats

__all__ = ["RayClient", "join_cluster"]

log = logging.getLogger(__name__)


def join_cluster(address: str | None, namespace: str) -> None:
    """``ray.init`` for Expunge's clients: token authentication unless told otherwise, and a quick typed error.

    Expunge's clusters use Ray token authentication (``expunge serve`` starts heads with it); a
    client that does not say so is refused by the cluster, so ``RAY_AUTH_MODE=token`` is set
    here when the environment leaves it unset (the token itself comes from ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or Ray's default token file). ``address``: ``host:port``, ``ray://…``,
    ``"auto"`` or None (``RAY_ADDRESS``, else a cluster on this machine).

    Raises:
        ConfigError: the address is not ``host:port`` (``check_address``), or nothing answers there
            (checked before Ray's own minute-long retries).
    """
    import ray

    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")  # Ray reads its settings at import: refresh them, as its own token set-up does
    target = given = os.environ.get("RAY_ADDRESS") if address in (None, "auto") else address
    check_address(target)
    if target and "://" not in target and target != "auto":
        address = target = client_address(target)  # a loopback head given as 127.0.0.1:PORT: Ray's own spelling
    if target and "://" not in target and target != "auto" and not gcs_answers(target):
        raise ConfigError(
            f"no Ray cluster answers at {given}: start one with `expunge serve --config FILE.yaml` (it prints the "
            "address), or check the address (and RAY_ADDRESS): the Ray head's host:port, not the HTTP API's port"
        )
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(
            f"could not join the Ray cluster at {given or address!r} ({exc}); check the address, and for a cluster "
            "with token authentication RAY_AUTH_TOKEN (or the token file)"
        ) from exc


class RayClient:
    """A connection to one Expunge service (a detached coordinator actor on a Ray cluster).

    ``retry_s``: how long a call keeps trying while the service restarts after a crash, in seconds.
    """

    def __init__(self, handle: Any, namespace: str, name: str, retry_s: float = 300.0) -> None:
        import ray

        self._ray: Any = ray
        self._handle = handle
        self.namespace = namespace
        self.name = name
        self.retry_s = retry_s
        self._owns_ray = False

    @classmethod
    def connect(
        cls,
        address: str | None = "auto",
        namespace: str = "expunge",
        name: str = "expunge-coordinator",
        retry_s: float = 300.0,
    ) -> RayClient:
        """Join the cluster at ``address`` ("auto": the local one or RAY_ADDRESS) and find the service.

        Raises:
            ConfigError: ``address`` (or RAY_ADDRESS) is not ``host:port``, ``ray://...`` or ``auto``.
            ServiceUnavailableError: no cluster at ``address``, or no service there under ``name``
                in ``namespace`` (start one with ``expunge serve``).
        """
        import ray

        from expunge.orchestrator.service.actor import find_service

        owns_ray = False
        check_address(os.environ.get("RAY_ADDRESS") if address in (None, "auto") else address)  # bad input: exit 2
        if not ray.is_initialized():
            try:
                join_cluster(address, namespace)
            except ConfigError as exc:
                raise ServiceUnavailableError(str(exc)) from exc
            owns_ray = True
        client = cls(find_service(namespace, name), namespace, name, retry_s)
        client._owns_ray = owns_ray
        return client

    def close(self) -> None:
        """Leave the cluster if ``connect`` joined it (the service keeps running)."""
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    # ----- calls ---------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Run ``method`` on the service; typed errors come back as themselves; retried across restarts."""
        ray = self._ray
        deadline = time.monotonic() + self.retry_s
        pause = 0.2
        while True:
            try:
                return ray.get(getattr(self._handle, method).remote(*args), timeout=timeout)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, ExpungeError):
                    raise cause from None
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                try:  # a restarting actor keeps its name; a stopped one loses it
                    ray.get_actor(self.name, namespace=self.namespace)
                except ValueError:
                    raise ServiceUnavailableError(
                        f"the Expunge service {self.name!r} in namespace {self.namespace!r} was stopped; start it "
                        "with `expunge serve`, then submit again with the same idempotency key"
                    ) from exc
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError(
                        f"the Expunge service {self.name!r} did not come back within {self.retry_s:.0f} s ({exc}); "
                        "check the cluster, then submit again with the same idempotency key"
                    ) from exc
                log.warning("the Expunge service is restarting (%s); calling again", type(exc).__name__)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def forget(
        self,
        subject_ids: Sequence[object],
        *,
        idempotency_key: str | None = None,
        reason: str | None = None,
        timeout: float | None = None,
        ticket: str | None = None,
    ) -> ErasureReceipt:
        """Erase the subjects; returns once the erasure is committed and served (stage one of two).

        ``subject_ids``: a list of ids (the identity rule of ``expunge.shards.identity`` applies).
        ``idempotency_key``: the same key always returns the same receipt (e.g. the ticket
        number); made up when omitted, so this call's own retries are safe. ``reason``: free
        text stored with the request (never personal data). ``ticket``: the requester's
        reference (e.g. the privacy desk's case number); both are screened, and text naming a
        person is refused (``PersonalDataInTextError``) with nothing stored. The receipt's
        ``registered_at`` is None until MLflow has the new version: ``wait(..., "registered")``.

        Raises:
            ConfigError: an empty list, too many subjects, a bad key, a key used for other subjects.
            InvalidSubjectIdError: an id the identity rule refuses. Nothing is changed on either.
            ErasureWaitTimeout: not committed within ``timeout`` seconds (the request goes on).
        """
        ids = check_subject_list(subject_ids)  # here too: list("12") would name two people
        key = idempotency_key if idempotency_key is not None else f"sdk-{uuid.uuid4().hex}"
        receipt: ErasureReceipt = self._call("forget", ids, key, reason, check_timeout(timeout), ticket)
        return receipt

    def submit(
        self,
        subject_ids: Sequence[object],
        *,
        idempotency_key: str | None = None,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> str:
        """Journal an erasure request and return its id at once (before any retrain); ``forget`` without waiting.

        ``ticket``: the caller's reference (screened like ``reason``); ``status`` finds the request by it.
        """
        ids = check_subject_list(subject_ids)
        key = idempotency_key if idempotency_key is not None else f"sdk-{uuid.uuid4().hex}"
        request_id: str = self._call("submit", ids, key, reason, ticket)
        return request_id

    def status(self, request_id: str) -> RequestStatus:
        """The ``RequestStatus`` of the request a request id, an idempotency key or a ticket names.

        Stage (accepted, committed, registered, failed) and timestamps.

        Raises:
            UnknownRequestError: the service's journal holds no such request.
        """
        return self._call("status", request_id)

    def wait(
        self, request_id: str, stage: Literal["committed", "registered"] = "committed", timeout: float | None = None
    ) -> RequestStatus:
        """Block until the request reaches ``stage``; returns its ``RequestStatus``.

        Raises:
            ErasureWaitTimeout: ``timeout`` seconds passed first (the request goes on).
            UnknownRequestError: no such request.
        """
        return self._call("wait", request_id, stage, timeout)

    def ingest(self, rows: pa.Table | Mapping[str, Sequence[object]], request_id: str | None = None) -> IngestReceipt:
        """Add new rows to the served model; returns their ``IngestReceipt`` once committed and served.

        ``rows``: a table (or a mapping of columns) with ``record_id``, ``subject_id`` and the
        model's targets (``item_id`` and ``rating`` for ratings models). Only the shards that get
        rows retrain, from their first new slice; rows of erased people are refused and counted,
        rows whose record id the store holds are left out. The ingest waits for the erasures
        submitted before it. ``request_id``: names it in the store and MLflow (made up when
        omitted, so this call's own retries return the first receipt); the same id with other
        rows is refused. MLflow registers the new version shortly after (``model_version``).

        Raises:
            DataValidationError: bad rows, every problem listed; nothing was written.
            IdempotencyConflictError: ``request_id`` already names an ingest of other rows.
            ConfigError: a bad request id. StoreBusyError, StorageUnavailableError: for now (call again).
        """
        from expunge.orchestrator.service.ingestion import columns_table  # the engine's imports only when needed

        table = rows if isinstance(rows, pa.Table) else columns_table(rows)
        named = request_id if request_id is not None else f"ingest-{uuid.uuid4().hex[:24]}"
        receipt: IngestReceipt = self._call("ingest", table, named)
        return receipt

    def predict(self, rows: pa.Table | Sequence[dict[str, Any]]) -> np.ndarray:
        """Ensemble predictions, shape (n,), for rows with ``subject_id`` and ``item_id`` (ratings models).

        Subjects the model does not hold (erased ones included) get the population's prediction.

        Raises:
            ConfigError: a column the model needs is missing.
        """
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        result: np.ndarray = self._call("predict", table)
        return result

    def recommend(self, subject_id: object, k: int = 10) -> list[int]:
        """The ``k`` item ids the subject has not rated that the exact ensemble ranks best, best first.

        Raises:
            UnknownSubjectError: the served version holds no rows of the subject (never seen, or erased).
        """
        items: list[int] = self._call("recommend", subject_id, k)
        return items

    def model_version(self) -> ServedVersion:
        """The ``ServedVersion``: ensemble (store) version and MLflow registry version served now."""
        return self._call("model_version")

    def stats(self) -> ServiceStats:
        """The service's ``ServiceStats``: requests, batches, shard retrains, peak memory."""
        return self._call("stats")
