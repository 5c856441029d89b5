"""Shared set-up for the pipeline recipes: logging, Ray, the digest key, MLflow lineage, progress."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

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
from expunge.orchestrator.registry import Lineage
from expunge.shards.errors import StorageUnavailableError
from expunge.shards.niceness import WORKER_NICENESS_ENV

__all__ = [
    "demo_hasher",
    "exit_on_error",
    "hasher_from_env",
    "init_logging",
    "init_ray",
    "job_and_store",
    "key_configured",
    "make_lineage",
    "progress",
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
        ray.init(log_to_driver=False)
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


def make_lineage(tracking: TrackingConfig, storage: StorageConfig | str) -> Lineage | None:
    return Lineage(tracking, storage) if tracking.enabled else None
