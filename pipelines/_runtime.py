"""Shared set-up for the pipeline recipes: logging, Ray, the digest key, MLflow lineage, progress."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from expunge.orchestrator.cluster import check_address, client_address, gcs_answers
from expunge.orchestrator.config import JobConfig, PrivacyConfig, StorageConfig, TrackingConfig, load_job_config
from expunge.orchestrator.digests import SubjectHasher, key_weakness
from expunge.orchestrator.errors import (
    ClusterUnavailableError,
    ConfigError,
    ErasureWaitTimeout,
    ExpungeError,
    ServiceUnavailableError,
    ShardRetrainFailed,
    ShardStartTimeout,
    StorageConflictError,
    StoreBusyError,
    TrackingUnreachable,
)
from expunge.shards.errors import StorageUnavailableError
from expunge.shards.niceness import WORKER_NICENESS_ENV

if TYPE_CHECKING:  # the registry loads MLflow's client and torch: a job's --help and bad input need neither
    from expunge.orchestrator.registry import Lineage

__all__ = [
    "MLFLOW_BESIDE",
    "StageClock",
    "StageTime",
    "connecting_beside",
    "deferred_lineage",
    "demo_hasher",
    "exit_on_error",
    "hasher_from_env",
    "init_logging",
    "init_ray",
    "job_and_store",
    "key_configured",
    "make_lineage",
    "progress",
    "stage",
    "timed_by",
    "writable_output",
]

log = logging.getLogger(__name__)


#: Progress and status go to stderr so that stdout stays one machine-readable result.
_STDERR = Console(stderr=True)


def init_logging(verbose: bool = False) -> None:
    """Warnings only by default (progress lines say what is happening); ``--verbose`` for every step."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # --verbose means every step of Expunge's own, not the debug chatter of its libraries.
    logging.getLogger("expunge").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # MLflow sets its own logger level when it is first imported (later, lazily): tell it too.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


#: Exit status of a typed error (README "Exit codes"): bad input, or a retryable failure.
EXIT_BAD_INPUT = 2
EXIT_RETRY = 4
#: Failures of the request's circumstances, not of its input: a lost race, a dead shard actor, an
#: unreachable store or tracking server. Submitting the same request again finishes or redoes it.
_RETRYABLE = (
    ClusterUnavailableError,
    StorageConflictError,
    ShardRetrainFailed,
    ShardStartTimeout,
    StorageUnavailableError,
    TrackingUnreachable,
    ServiceUnavailableError,
    ErasureWaitTimeout,
    StoreBusyError,
)

#: What ``ray.init`` raises when Ray's processes do not start or the cluster does not answer.
_RAY_START_FAILURES = (RuntimeError, ConnectionError, TimeoutError, OSError)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn a typed ``ExpungeError`` into one ``error: ...`` line on stderr and the documented exit code.

    Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except ExpungeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_RETRY if isinstance(exc, _RETRYABLE) else EXIT_BAD_INPUT) from exc


def writable_output(path: Path, option: str = "--output") -> None:
    """Refuse, before any work, an output file the command could not write at its end.

    Raises:
        ConfigError: ``path`` is a folder, or its folder does not exist (exit 2; nothing was run).
    """
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name (e.g. {path / 'results.json'})")
    if not path.parent.is_dir():
        raise ConfigError(
            f"{option} {path}: the folder {path.parent} does not exist; create it or give a file in an existing folder"
        )


@contextmanager
def progress(what: str, quiet: bool = False) -> Iterator[None]:
    """Show ``what`` with a spinner on stderr while it runs, then one line with its duration."""
    if quiet:
        yield
        return
    began = time.perf_counter()
    with _STDERR.status(f"{what}..."):
        yield
    _STDERR.print(f"[green]✓[/green] {what} ({time.perf_counter() - began:.1f} s)", highlight=False)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``), else start a local one.

    Raises:
        ClusterUnavailableError: Ray did not start (or the cluster did not answer) within Ray's own
            timeouts, e.g. a port it needs is taken. Infrastructure: exit 4, not a bug.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        # Ray starts workers at niceness 15; Expunge's own cluster starts them at 0 (shards/niceness.py).
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    what = f"joining the Ray cluster at RAY_ADDRESS={address}" if address else "starting Ray on this machine"
    check_address(address)  # bad input (exit 2), not an unreachable cluster
    given = address
    if address and "://" not in address and address != "auto":
        address = client_address(address)  # a loopback head given as 127.0.0.1:PORT: Ray's own spelling
    if address and "://" not in address and address != "auto" and not gcs_answers(address):
        # ray.init retries an address nobody answers for many minutes, printing a warning a second.
        raise ClusterUnavailableError(
            what,
            f"no Ray cluster answers at {given} (nothing listens there, or a server that is not a Ray head's GCS "
            "does): start the cluster, or fix or unset RAY_ADDRESS",
        )
    try:
        _start_ray(ray, address, num_cpus)
    except Exception as exc:
        # Ray reports processes that do not come up in time as RuntimeError ("Failed to start GCS"),
        # ConnectionError, TimeoutError, OSError, or a bare Exception ("The current node timed out
        # during startup"). Anything else (a TypeError, ...) is a bug and keeps its traceback.
        if not isinstance(exc, _RAY_START_FAILURES) and type(exc) is not Exception:
            raise
        if ray.is_initialized():
            ray.shutdown()
        raise ClusterUnavailableError(what, f"{type(exc).__name__}: {str(exc)[:1500]}") from exc


def _start_ray(ray: Any, address: str | None, num_cpus: int | None) -> None:
    if address:
        # A real cluster: its own authentication settings (RAY_AUTH_MODE / RAY_AUTH_TOKEN) apply.
        ray.init(address=address, log_to_driver=False)
    else:
        # The private local cluster Expunge starts: token authentication, chosen explicitly (Ray
        # warns on every start when the mode is left to its default). A user's own setting wins.
        if "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
            # Ray caches its config at import; refresh it as Ray's own token set-up does.
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )


def hasher_from_env(privacy: PrivacyConfig = PrivacyConfig()) -> SubjectHasher:
    """The configured key: ``privacy.subject_key_env``, else ``privacy.subject_key_file`` (ConfigError naming both)."""
    return SubjectHasher.from_settings(privacy)


def key_configured(privacy: PrivacyConfig) -> bool:
    """Whether a key is configured (its variable set, or a key file named) rather than left to a demo's file."""
    return bool(os.environ.get(privacy.subject_key_env) or privacy.subject_key_file)


def demo_hasher(workdir: Path, privacy: PrivacyConfig = PrivacyConfig()) -> SubjectHasher:
    """The configured key if set; otherwise a demo key kept in ``<workdir>/subject.key`` (0600)."""
    if key_configured(privacy):
        return hasher_from_env(privacy)
    key_file = workdir / "subject.key"
    if not key_file.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
        log.info("no %s set: generated a demo digest key in %s", privacy.subject_key_env, key_file)
    key = key_file.read_text().strip()
    weakness = key_weakness(key)
    if weakness is not None:
        raise ConfigError(
            f"the demo key in {key_file} is too weak: {weakness}. Delete the file to have the demo make a "
            f"fresh one, or set {privacy.subject_key_env}. Nothing was changed."
        )
    return SubjectHasher(key.encode())


def job_and_store(config: Path | None, storage: str | None) -> tuple[JobConfig | None, StorageConfig]:
    """The job config (if ``--config`` was given) and the store: ``--storage`` overrides the config's.

    Raises:
        ConfigError: neither was given, or the config file is missing or invalid.
    """
    job = load_job_config(config) if config else None
    if job is None and not storage:
        raise ConfigError("pass --storage URI or --config FILE.yaml")
    store = job.storage if job else StorageConfig(uri=storage or "")
    return job, store.model_copy(update={"uri": storage}) if storage else store


def make_lineage(tracking: TrackingConfig, storage: StorageConfig | str, *, deferred: bool = False) -> Lineage | None:
    """The store's MLflow lineage (None with tracking off); ``deferred``: it connects on first use
    (``Lineage(deferred=True)``, see ``connecting_beside``), otherwise now, reconciling."""
    if not tracking.enabled:
        return None
    from expunge.orchestrator.registry import Lineage

    return Lineage(tracking, storage, deferred=deferred)


def deferred_lineage(tracking: TrackingConfig, storage: StorageConfig | str) -> Lineage | None:
    """``make_lineage(..., deferred=True)``: nothing is read or written before its first use."""
    return make_lineage(tracking, storage, deferred=True)


#: The name under which ``connecting_beside`` reports its thread's work to a ``StageClock``.
MLFLOW_BESIDE = "MLflow connect (beside Ray start)"


@contextmanager
def connecting_beside(lineage: Lineage | None) -> Iterator[None]:
    """Connect ``lineage`` to MLflow in a thread while the block runs (imports, database, experiment).

    The first use still reconciles first, on the caller's thread. A connect error is raised when
    the block ends, as connecting there would have; if the block raises, its error wins (the
    connect error is logged and met again at the lineage's first use).
    """
    if lineage is None or lineage.is_open:
        yield
        return
    clock = _CLOCK.get()  # threads start with an empty context: report to the caller's clock by hand
    failure: list[Exception] = []

    def connect() -> None:
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            lineage.connect()
        except Exception as exc:  # raised on the caller's thread below
            failure.append(exc)
        finally:
            if clock is not None:
                clock.add_overlapped(MLFLOW_BESIDE, time.perf_counter() - began, time.thread_time() - cpu)

    thread = threading.Thread(target=connect, name="expunge-mlflow-connect", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        thread.join()
        if failure:
            log.warning("MLflow could not connect while Ray started: %s", failure[0])
        raise
    thread.join()
    if failure:
        raise failure[0]


# ----- where a job's time goes (``expunge benchmark profile``) --------------------------------------


@dataclass
class StageTime:
    """One stage's share of a job: wall and CPU seconds, exclusive of the stages nested in it.

    ``cpu_s``: this process; ``cluster_cpu_s``: the processes it started (Ray's GCS, raylet and
    workers, which run the shard actors; ``ProcessTreeCPU``), None where not measured. ``calls``:
    how often the stage ran.
    """

    name: str
    phase: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cluster_cpu_s: float | None = 0.0
    calls: int = 0
    #: Done by another thread beside the other stages: not part of any total.
    overlapped: bool = False


class ProcessTreeCPU:
    """CPU seconds (user + system) used so far by the processes this one started, and theirs (``/proc``).

    Each process counts up to the last time it was seen: one that exits between two readings
    loses what it used since the first. Calling it returns None where ``/proc`` cannot be read.
    """

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self._seen: dict[tuple[int, int], float] = {}  # (pid, start tick) -> CPU seconds
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __call__(self) -> float | None:
        parents: dict[int, int] = {}
        cpu: dict[int, tuple[int, float]] = {}
        try:
            entries = [e for e in os.listdir("/proc") if e.isdigit()]
        except OSError:
            return None
        for entry in entries:
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    text = stat.read().decode("ascii", "replace")
            except OSError:  # gone since the listing
                continue
            fields = text[text.rfind(")") + 2 :].split()  # stat(5) after "pid (comm) ": state, ppid, ...
            parents[int(entry)] = int(fields[1])
            # utime and stime are fields 14 and 15 of stat(5), starttime 22 (here 11, 12 and 19).
            cpu[int(entry)] = (int(fields[19]), (int(fields[11]) + int(fields[12])) / self._tick)
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(children.get(self.root, []))
        while todo:
            pid = todo.pop()
            started, seconds = cpu[pid]
            self._seen[(pid, started)] = seconds
            todo.extend(children.get(pid, []))
        return sum(self._seen.values())


class StageClock:
    """Wall and CPU seconds per named stage and phase; a stage inside another is counted once, in itself.

    ``phase`` names what the stages belong to (``cold``, ``warm``); set it between stages. Stages
    are entered through ``stage(name)`` while the clock is active (``timed_by``).
    """

    def __init__(self, cluster_cpu: Callable[[], float | None] | None = None) -> None:
        self.phase = "cold"
        self._cluster_cpu = cluster_cpu or ProcessTreeCPU()
        self._lock = threading.Lock()
        self._stages: dict[tuple[str, str], StageTime] = {}
        self._open: list[list[float]] = []  # per open stage: nested wall, CPU and cluster CPU so far

    def _now(self) -> tuple[float, float, float | None]:
        return time.perf_counter(), time.process_time(), self._cluster_cpu()

    def add(self, name: str, wall_s: float, cpu_s: float, cluster_cpu_s: float | None) -> None:
        """Count ``name`` as measured elsewhere (e.g. interpreter start and imports, before the clock existed)."""
        self._record(name, wall_s, cpu_s, cluster_cpu_s)
        self._count_in_enclosing(wall_s, cpu_s, cluster_cpu_s)

    def add_overlapped(self, name: str, wall_s: float, cpu_s: float) -> None:
        """Count ``name`` as work another thread did beside the stages (e.g. MLflow opening while Ray starts).

        Its wall time overlaps theirs and its CPU time is in theirs too (``cpu_s`` is process-wide):
        totals leave it out. Safe to call from any thread.
        """
        self._record(name, wall_s, cpu_s, None, overlapped=True)

    def _record(
        self, name: str, wall_s: float, cpu_s: float, cluster_cpu_s: float | None, overlapped: bool = False
    ) -> None:
        with self._lock:
            entry = self._stages.setdefault(
                (self.phase, name), StageTime(name=name, phase=self.phase, overlapped=overlapped)
            )
            self._add_to(entry, wall_s, cpu_s, cluster_cpu_s)

    @staticmethod
    def _add_to(entry: StageTime, wall_s: float, cpu_s: float, cluster_cpu_s: float | None) -> None:
        entry.wall_s += wall_s
        entry.cpu_s += cpu_s
        entry.cluster_cpu_s = (
            None if entry.cluster_cpu_s is None or cluster_cpu_s is None else entry.cluster_cpu_s + cluster_cpu_s
        )
        entry.calls += 1

    def _count_in_enclosing(self, wall_s: float, cpu_s: float, cluster_cpu_s: float | None) -> None:
        if self._open:  # the enclosing stage does not count this time again
            nested = self._open[-1]
            nested[0] += wall_s
            nested[1] += cpu_s
            nested[2] += cluster_cpu_s or 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` of the current phase."""
        wall, cpu, cluster = self._now()
        self._open.append([0.0, 0.0, 0.0])
        try:
            yield
        finally:
            nested = self._open.pop()
            end_wall, end_cpu, end_cluster = self._now()
            cluster_s = None if cluster is None or end_cluster is None else end_cluster - cluster
            self._record(
                name,
                end_wall - wall - nested[0],
                end_cpu - cpu - nested[1],
                None if cluster_s is None else cluster_s - nested[2],
            )
            self._count_in_enclosing(end_wall - wall, end_cpu - cpu, cluster_s)

    def stages(self, phase: str | None = None) -> list[StageTime]:
        """The stages measured (of ``phase``, or all), in the order they first ran."""
        return [s for s in self._stages.values() if phase is None or s.phase == phase]


_CLOCK: ContextVar[StageClock | None] = ContextVar("expunge_stage_clock", default=None)


@contextmanager
def timed_by(clock: StageClock) -> Iterator[StageClock]:
    """Make ``clock`` the one ``stage`` reports to while the block runs (in this thread's context)."""
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a block as stage ``name`` of the job; a no-op unless a ``StageClock`` is active."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    with clock.stage(name):
        yield
