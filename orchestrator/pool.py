"""The seam around Ray: run a method on some shards, in parallel actors or in-process."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from expunge.orchestrator.cluster import absolute_folder
from expunge.orchestrator.config import AnyModelConfig, StorageConfig, TrainingConfig
from expunge.orchestrator.errors import ConfigError, ExpungeError, ShardRetrainFailed, ShardStartTimeout
from expunge.shards.shard import Shard

__all__ = [
    "FirstCallPool",
    "InProcessRule",
    "LocalShardPool",
    "RayShardPool",
    "ShardPool",
    "fit_cpus_per_actor",
    "fit_cpus_per_host",
    "shard_processes",
]

log = logging.getLogger(__name__)


def fit_cpus_per_actor(wanted: float, cluster_cpus: float, actors: int) -> float:
    """CPUs to reserve per shard actor: ``wanted``, lowered so that ``actors`` of them fit in ``cluster_cpus`` (free CPUs).

    Rounded down to 1/1000 CPU (Ray's resource granularity is 1/10000). Never negative.
    """
    fair = math.floor(max(cluster_cpus, 0.0) / max(1, actors) * 1000) / 1000
    return min(wanted, fair)


def fit_cpus_per_host(wanted: float, free_cpus: float, hosts: int, node_cpus: Sequence[float]) -> float:
    """``fit_cpus_per_actor`` for ``hosts`` shard hosts, and never more than the largest node has.

    A host runs one shard at a time, so it asks what a shard asks; with fewer, larger reservations
    than one per shard, each must still fit on one node (``node_cpus``: the alive nodes' CPUs).
    """
    return min(fit_cpus_per_actor(wanted, free_cpus, hosts), max(node_cpus, default=0.0))


def shard_processes(shards: int, node_cpus: Sequence[float], cpus_per_shard: float) -> int:
    """Worker processes to train ``shards`` from scratch in: one per shard the cluster can run at once.

    Shards beyond what the nodes can run at once (``node CPUs / cpus_per_shard`` each, rounded
    down, summed over ``node_cpus``, the alive nodes' CPUs) would only time-share those CPUs, and
    each process pays its own start-up (interpreter, torch and the shard code: about 2.5 s of CPU),
    so they share processes instead. ``cpus_per_shard`` 0 (no reservation): one process per shard.
    Always between 1 and ``shards``.
    """
    if cpus_per_shard <= 0:
        return shards
    fits = sum(math.floor(max(cpus, 0.0) / cpus_per_shard + 1e-9) for cpus in node_cpus)
    return max(1, min(shards, fits))


class _HostedShard:
    """One shard on a ``ShardHost``: ``handle.method.remote(*args)`` as on a ``ShardActor``."""

    def __init__(self, host: Any, shard_id: int) -> None:
        self._host, self._shard_id = host, shard_id

    def __getattr__(self, method: str) -> Any:
        host, shard_id = self._host, self._shard_id

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                return host.call.remote(shard_id, method, *args)

        return _Method


class _Died:
    """A call whose actor died (it may be retried once Ray restarts the actor)."""

    def __init__(self, error: ShardRetrainFailed) -> None:
        self.error = error


class ShardPool(Protocol):
    """Calls ``method`` on the named shards only; shards never named get no call at all."""

    def call(self, method: str, args_by_shard: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]: ...

    def published(self, versions: Mapping[int, int | None]) -> None:
        """The shard manifest versions the store now publishes (a restarted shard reloads these)."""
        ...

    def shutdown(self) -> None: ...


class _ShardsOnDemand(dict[int, Shard]):
    """Shard id -> in-process ``Shard``, each loaded at its published version on first access."""

    def __init__(self, make: Callable[[int], Shard]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, shard_id: int) -> Shard:
        shard = self[shard_id] = self._make(shard_id)
        return shard


class LocalShardPool:
    """In-process shards, one after another: for tests and small jobs without Ray.

    A shard is loaded on its first call (an erasure that touches one shard loads one), at the
    version last ``published``.
    """

    def __init__(
        self,
        storage: StorageConfig,
        training: TrainingConfig,
        model: AnyModelConfig,
        versions: Mapping[int, int | None],
    ) -> None:
        self.versions = dict(versions)
        self.shards: dict[int, Shard] = _ShardsOnDemand(
            lambda i: Shard(i, storage, training, model, self.versions.get(i))
        )

    def call(self, method: str, args_by_shard: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]:
        results = {}
        for shard_id, args in args_by_shard.items():
            try:
                results[shard_id] = getattr(self.shards[shard_id], method)(*args)
            except ExpungeError:
                raise
            except Exception as exc:
                raise ShardRetrainFailed(shard_id, f"{type(exc).__name__}: {exc}") from exc
        return results

    def published(self, versions: Mapping[int, int | None]) -> None:
        """Record the published versions: a shard loaded later starts there (loaded ones wrote them)."""
        self.versions.update(versions)

    def shutdown(self) -> None:
        self.shards.clear()


@dataclass(frozen=True)
class InProcessRule:
    """When a job without a cluster retrains shards in its own process instead of starting Ray.

    ``max_shards``: at most this many shards (0: never). ``max_cpu_s``: and at most this many CPU
    seconds of their from-scratch training together, at ``shard_cpu_s`` per shard (the last
    training's CPU seconds over S: the most an erasure of one shard retrains; 0: unknown, not
    counted). Starting Ray and its actors costs about 6-15 s on two cores; beyond these bounds,
    parallel actors win it back.
    """

    max_shards: int
    max_cpu_s: float = math.inf
    shard_cpu_s: float = 0.0

    def decide(self, shards: int) -> tuple[bool, str]:
        """Whether ``shards`` shards retrain in this process, and why (said in the job's progress)."""
        if shards > self.max_shards:
            return False, f"{shards} shards to retrain, more than erasure.in_process_max_shards ({self.max_shards})"
        cost = shards * self.shard_cpu_s
        if cost > self.max_cpu_s:
            took = f"{cost:.1f}" if cost >= 0.1 else f"{cost:.2g}"  # 12.0, or 0.04 (not 0.0)
            return False, (
                f"{shards} shard(s) whose training took {took} CPU s, more than erasure.in_process_max_cpu_s "
                f"({self.max_cpu_s:g})"
            )
        return True, f"{shards} shard(s) to retrain: in this process, without Ray"


class FirstCallPool:
    """In-process shards or Ray actors, chosen at the first call from the shards it names.

    A job that runs without a cluster (no ``RAY_ADDRESS``) and retrains few shards spends most
    of its time starting Ray (5-13 s on two cores) and its actors (about 1.3 s each): when
    ``rule`` allows the shards named by the first call, they run in this process, one after
    another (``LocalShardPool``), and Ray never starts. Otherwise ``start_ray(why)`` runs, then
    ``RayShardPool``. The choice holds for the pool's life: later calls go to the same kind.
    Both kinds give the same bits (``configure_determinism`` fixes threads and kernels in either).
    """

    def __init__(
        self,
        storage: StorageConfig,
        training: TrainingConfig,
        model: AnyModelConfig,
        versions: Mapping[int, int | None],
        *,
        rule: InProcessRule,
        start_ray: Callable[[str], None],
    ) -> None:
        self._args = (storage, training, model)
        self.versions = dict(versions)
        self.rule = rule
        self._start_ray = start_ray
        self.chosen: LocalShardPool | RayShardPool | None = None

    def _pool(self, shards: int) -> LocalShardPool | RayShardPool:
        if self.chosen is None:
            here, why = self.rule.decide(shards)
            log.info("%s", why)
            if here:
                self.chosen = LocalShardPool(*self._args, self.versions)
            else:
                self._start_ray(why)
                self.chosen = RayShardPool(*self._args, self.versions)
        return self.chosen

    def call(self, method: str, args_by_shard: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]:
        return self._pool(len(args_by_shard)).call(method, args_by_shard)

    def published(self, versions: Mapping[int, int | None]) -> None:
        self.versions.update(versions)
        if self.chosen is not None:
            self.chosen.published(versions)

    def shutdown(self) -> None:
        if self.chosen is not None:
            self.chosen.shutdown()
            self.chosen = None


class RayShardPool:
    """One ``ShardActor`` per shard, created on first use, so an erasure starts only the actors it needs.

    ``share_processes`` (a pool that trains from scratch): when the cluster cannot run every shard
    at once (``shard_processes``), shard ``i`` runs in ``ShardHost`` ``i % processes`` instead,
    several shards to a worker process, one call at a time, with the same bits. A host that dies
    is replaced (never restarted by Ray) and its shards reload their published versions.
    """

    READY_TIMEOUT_S = 300.0

    def __init__(
        self,
        storage: StorageConfig,
        training: TrainingConfig,
        model: AnyModelConfig,
        versions: Mapping[int, int | None],
        restarts: int = 0,
        *,
        share_processes: bool = False,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise ConfigError("Ray is not initialised; call ray.init() (or use the pipelines) first")
        self._ray: Any = ray
        # A relative folder names the driver's folder: actors on a cluster joined by RAY_ADDRESS run
        # in the cluster's working folder, and would write a store of their own there.
        storage = storage.model_copy(update={"uri": absolute_folder(storage.uri)})
        self.storage = storage
        self.training = training
        self.model = model
        self.versions = dict(versions)
        # Reserve no more than what is free now: actors that cannot be placed would wait forever
        # (other pools of this process, or other jobs, may hold CPUs). Ray frees a killed actor's
        # CPUs asynchronously, so this can read 0 right after a pool shut down; the actors then
        # reserve 0 CPU, which always schedules.
        free = float(ray.available_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        #: Worker processes the shards run in; fewer than the shards: ``ShardHost``s (see the class).
        self.processes = len(self.versions)
        node_cpus: list[float] = []
        if share_processes and self.versions:
            nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
            node_cpus += [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes if n.get("Alive")]
            cluster = sum(node_cpus)
            self.processes = shard_processes(len(self.versions), node_cpus, training.cpus_per_shard)
            if self.processes < len(self.versions):
                log.info(
                    "%d shards in %d worker processes (%.2f cluster CPUs, %.2f per shard)",
                    len(self.versions),
                    self.processes,
                    cluster,
                    training.cpus_per_shard,
                )
        self.hosts: dict[int, Any] = {}
        self.cpus_per_actor = (
            fit_cpus_per_host(training.cpus_per_shard, free, self.processes, node_cpus)
            if self.hosted
            else fit_cpus_per_actor(training.cpus_per_shard, free, self.processes)
        )
        if self.cpus_per_actor < training.cpus_per_shard:
            log.info(
                "%d shard actors with %.2f free CPUs: %.3f CPU reserved per actor (asked: %.2f)",
                len(self.versions),
                free,
                self.cpus_per_actor,
                training.cpus_per_shard,
            )
        self.actors: dict[int, Any] = {}
        #: How often Ray restarts a dead shard actor (-1: always). A restarted actor re-runs its
        #: constructor, so ``call`` points it at the published version and runs the call again.
        self.restarts = restarts

    @property
    def hosted(self) -> bool:
        """Whether shards share worker processes (``ShardHost``)."""
        return self.processes < len(self.versions)

    def _host(self, index: int) -> Any:
        if index not in self.hosts:
            from expunge.shards.host import ShardHost

            self.hosts[index] = ShardHost.options(  # type: ignore[attr-defined]
                num_cpus=self.cpus_per_actor, name=None, scheduling_strategy="SPREAD", max_restarts=0
            ).remote(self.storage, self.training, self.model, self.versions)
        return self.hosts[index]

    def actor(self, shard_id: int) -> Any:
        if self.hosted:
            return _HostedShard(self._host(shard_id % self.processes), shard_id)
        if shard_id not in self.actors:
            from expunge.shards.actor import ShardActor

            self.actors[shard_id] = ShardActor.options(  # type: ignore[attr-defined]
                num_cpus=self.cpus_per_actor,
                name=None,
                scheduling_strategy="SPREAD",
                max_restarts=self.restarts,
            ).remote(shard_id, self.storage, self.training, self.model, self.versions.get(shard_id))
        return self.actors[shard_id]

    def published(self, versions: Mapping[int, int | None]) -> None:
        """Record the published shard versions: a restarted actor is pointed at these before a redo."""
        self.versions.update(versions)
        for host in self.hosts.values():
            host.published.remote(dict(versions))  # a shard a host loads later loads these

    def _recovered(self, shard_id: int) -> bool:
        """After an actor died in a call: heal it from the published version; True once it serves again.

        Ray's own restart (``restarts``) is tried first: the restarted actor reloads the published
        version. If Ray does not restart it (``restarts=0``, restarts used up, or a constructor
        that failed on objects a later erasure purged), a new actor replaces it, started at the
        published version: a dead actor never waits for the next erasure to be replaced.
        """
        if self.hosted:
            return self._host_recovered(shard_id % self.processes)
        if shard_id not in self.actors:
            return False
        version = self.versions.get(shard_id)
        actor = self.actors[shard_id]
        errors = (
            self._ray.exceptions.RayActorError,
            self._ray.exceptions.GetTimeoutError,
            self._ray.exceptions.RayTaskError,
        )
        if self.restarts != 0:
            try:
                self._ray.get(actor.ready.remote(), timeout=self.READY_TIMEOUT_S)
                if version is not None:
                    self._ray.get(actor.adopt.remote(version), timeout=self.READY_TIMEOUT_S)
                log.warning("shard actor %d died and was restarted; it reloaded shard version %s", shard_id, version)
                return True
            except errors:
                pass
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(actor, no_restart=True)
        del self.actors[shard_id]
        try:
            self._ray.get(self.actor(shard_id).ready.remote(), timeout=self.READY_TIMEOUT_S)
        except errors:
            return False
        log.warning("shard actor %d died; a new one replaced it at shard version %s", shard_id, version)
        return True

    def _host_recovered(self, index: int) -> bool:
        """A new host in place of dead host ``index``; its shards load their published versions."""
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(self.hosts.pop(index), no_restart=True)
        try:
            self._ray.get(self._host(index).call.remote(index, "pid"), timeout=self.READY_TIMEOUT_S)
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.GetTimeoutError):
            return False
        log.warning("a shard host died; a new one replaced it (its shards reload their published versions)")
        return True

    def call(self, method: str, args_by_shard: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]:
        results = self._call_once(method, args_by_shard)
        died = [i for i, r in results.items() if isinstance(r, _Died)]
        if self.hosted:  # one replacement per dead host, however many of its shards the call named
            died = list({i % self.processes: i for i in reversed(died)}.values())
            recovered = {i % self.processes for i in died if self._recovered(i)}
            retry = {
                i: a
                for i, a in args_by_shard.items()
                if isinstance(results[i], _Died) and i % self.processes in recovered
            }
            if retry:
                results.update(self._call_once(method, retry))
            failures = [r.error for r in results.values() if isinstance(r, _Died)]
            if failures:
                raise failures[0]
            return results
        # A shard's calls are deterministic and write only new objects, so redoing one after its
        # actor died gives what the lost attempt would have given (the lost attempt's debris is
        # purged at the next commit). One redo per call: an actor that dies again fails it.
        retry = {i: args_by_shard[i] for i in died if self._recovered(i)}
        if retry:
            results.update(self._call_once(method, retry))
        failures = [r.error for r in results.values() if isinstance(r, _Died)]
        if failures:
            raise failures[0]
        return results

    def _call_once(self, method: str, args_by_shard: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]:
        refs = {i: getattr(self.actor(i), method).remote(*args) for i, args in args_by_shard.items()}
        # Start-up is bounded so that actors the cluster cannot place fail loudly instead of hanging.
        timeout = self.READY_TIMEOUT_S if method == "ready" else None
        results: dict[int, Any] = {}
        failures: list[ExpungeError] = []
        for shard_id, ref in refs.items():
            try:
                results[shard_id] = self._ray.get(ref, timeout=timeout)
            except self._ray.exceptions.GetTimeoutError:
                failures.append(
                    ShardStartTimeout(
                        f"shard actor {shard_id} did not start within {timeout:.0f}s: the cluster cannot place "
                        f"an actor with {self.cpus_per_actor} CPU(s) (free now: {self._ray.available_resources().get('CPU', 0)}). "
                        "Lower training.cpus_per_shard or add nodes."
                    )
                )
            except self._ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                failures.append(
                    cause
                    if isinstance(cause, ExpungeError)
                    else ShardRetrainFailed(shard_id, f"{type(cause).__name__}: {cause}")
                )
            except self._ray.exceptions.RayActorError as exc:
                results[shard_id] = _Died(ShardRetrainFailed(shard_id, f"actor died: {exc}"))
        if failures:
            raise failures[0]
        return results

    def shutdown(self) -> None:
        for actor in [*self.actors.values(), *self.hosts.values()]:
            self._ray.kill(actor)
        self.actors.clear()
        self.hosts.clear()
