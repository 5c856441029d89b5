"""Recipe: run the erasure service on a Ray cluster, warm between requests, until ``--stop``.

    expunge serve --config infra/configs/synthetic.yaml              # starts a local head if none is given
    expunge serve --config job.yaml --address 10.0.0.5:6379          # joins a running cluster
    expunge serve --stop                                              # stops what `serve` started

Creates the detached, named coordinator actor (``service.name`` in ``service.namespace``) and its
shard actors, waits until every shard actor is warm, prints where it runs (JSON) and returns;
the service lives on the cluster. Recommender services then use the SDK:
``RayClient.connect(address=..., namespace=...)``. With no ``--address`` (and no
``RAY_ADDRESS``), a head is started on this machine and recorded, so ``--stop`` ends it too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from expunge.orchestrator.cluster import MAPPED_LOOPBACK, absolute_folder, gcs_answers
from expunge.orchestrator.config import JobConfig, ServiceConfig, TrackingConfig, load_job_config
from expunge.orchestrator.errors import ConfigError, ServiceUnavailableError
from expunge.pipelines._head import HeadInfo, client_address, listening_addresses, read_state, start_head, stop_head
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, progress

__all__ = ["key_file", "main", "recorded_address", "serve", "state_file", "status", "stop"]

log = logging.getLogger(__name__)


def state_file(namespace: str) -> Path:
    """Where ``serve`` records what it started (``EXPUNGE_STATE_DIR``, default ``~/.local/state/expunge``)."""
    root = Path(os.environ.get("EXPUNGE_STATE_DIR", "~/.local/state/expunge")).expanduser()
    return root / f"serve-{namespace}.json"


def key_file(namespace: str) -> Path:
    """Where ``serve`` keeps the subject key for the service of its own head (0600, in a 0700 folder of the state dir)."""
    return state_file(namespace).parent / "keys" / f"subject-{namespace}.key"


def _write_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path``, readable by this user only (never, even briefly, by others)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # mkdir's mode is masked by the umask, and the folder may be older
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.unlink(missing_ok=True)
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(key)
    os.replace(temp, path)


def _hand_over_key(job: JobConfig) -> JobConfig:
    """The job as the service on ``serve``'s own head gets it: the key as a file's path, never its value.

    That head's processes do not inherit the key variable, so no worker holds it; the service
    actor reads the file instead. A key from this process's environment is written to
    ``key_file`` (``--stop`` deletes it); a configured key file is named as it is.
    """
    privacy = job.privacy
    value = os.environ.get(privacy.subject_key_env)
    if value:
        path = key_file(job.service.namespace)
        _write_key_file(path, value)
        privacy = privacy.model_copy(update={"subject_key_file": str(path)})
    return job.model_copy(update={"privacy": privacy})


def recorded_address(namespace: str) -> str:
    """Where clients find the service of ``namespace``: RAY_ADDRESS, else what ``serve`` recorded on this machine.

    Never Ray's ``auto``: that joins whichever cluster runs on this machine, which may be another
    job's, and would send the request to whatever answers there under the service's name.

    Raises:
        ServiceUnavailableError: neither is there; says how to name the cluster or start the service.
    """
    address = os.environ.get("RAY_ADDRESS") or (read_state(state_file(namespace)) or {}).get("address")
    if not address:
        raise ServiceUnavailableError(
            f"no erasure service is recorded for namespace {namespace!r} on this machine ({state_file(namespace)} "
            "does not exist) and RAY_ADDRESS is not set, so there is no cluster to send the request to (a job never "
            "joins a cluster it was not pointed at). Pass --address HOST:PORT (what `expunge serve` printed) or set "
            "RAY_ADDRESS, or start the service here with `expunge serve --config FILE.yaml`"
        )
    return str(address)


def _reachable(address: str) -> bool:
    """``host:port`` answers; ``auto`` and ``ray://`` addresses are left to ``ray.init`` to try."""
    return address == "auto" or "://" in address or gcs_answers(address)


def _connect(address: str, namespace: str) -> None:
    """Join the cluster at ``address``; a loopback head's GCS is reached as 127.0.0.1 or in Ray's spelling of it."""
    from expunge.orchestrator.client import join_cluster

    join_cluster(client_address(address), namespace)


def _anchored(job: JobConfig, tracking: TrackingConfig) -> JobConfig:
    """The job with paths made absolute: the service's processes do not run in this folder."""
    storage = job.storage
    storage = storage.model_copy(update={"uri": absolute_folder(storage.uri)})
    if tracking.enabled and tracking.uri is None:
        tracking = tracking.model_copy(update={"uri": f"sqlite:///{Path.cwd() / 'mlflow.db'}"})
    privacy = job.privacy
    if privacy.subject_key_file:
        privacy = privacy.model_copy(update={"subject_key_file": str(Path(privacy.subject_key_file).resolve())})
    return job.model_copy(update={"storage": storage, "tracking": tracking, "privacy": privacy})


def serve(job: JobConfig, address: str | None, num_cpus: int) -> dict[str, Any]:
    """Start (or find) the service for ``job``; returns what to tell the user (address, namespace, ...).

    Raises:
        ConfigError: no key, an untrained store, a wrong key, or a local store on a multi-node cluster.
    """
    from expunge.orchestrator.lease import StoreLease
    from expunge.orchestrator.registry.ownership import bind_writer
    from expunge.orchestrator.service.recovery import serve_purpose
    from expunge.orchestrator.session import published
    from expunge.shards.models import model_for
    from expunge.shards.store import ObjectStore

    hasher = hasher_from_env(job.privacy)
    _, latest = published(job.storage, hasher)  # refuse an untrained store or a wrong key before starting Ray
    model_for(latest.model)  # and a custom model whose module does not import here (nor would on the workers)
    holder = StoreLease(ObjectStore(job.storage), job.storage.lease_ttl_s).holder()
    if holder is not None and holder.purpose != serve_purpose(job.service.namespace):
        # Another process writes the store (a service of another namespace, a CLI job): refuse before a head starts.
        StoreLease(ObjectStore(job.storage), job.storage.lease_ttl_s).refuse_if_held()
    job = _anchored(job, bind_writer(latest.registry, job.tracking, None, job.storage))
    namespace = job.service.namespace
    lock = state_file(namespace).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as held:
        # One `serve` per namespace at a time on this machine: a second one waits, then finds the
        # head and the service the first one started instead of starting its own.
        fcntl.flock(held, fcntl.LOCK_EX)
        return _serve_locked(job, address, num_cpus, latest.version)


def _serve_locked(job: JobConfig, address: str | None, num_cpus: int, version: int) -> dict[str, Any]:
    from expunge.orchestrator.cluster import alive_node_count, require_shared_storage
    from expunge.orchestrator.service.actor import start_service

    namespace = job.service.namespace
    head: HeadInfo | None = None
    address = address or os.environ.get("RAY_ADDRESS")
    recorded = read_state(state_file(namespace))
    if address is None and recorded is not None:
        address = recorded["address"]  # the head an earlier `serve` started: reuse it
        head = HeadInfo.model_validate(recorded["head"]) if recorded.get("head") else None
        if not _reachable(address):
            log.warning("the Ray head recorded in %s no longer answers; starting a new one", state_file(namespace))
            if head is not None:
                stop_head(head)  # whatever is left of it
            address, head, recorded = None, None, None
    if address is None:
        with progress(f"starting a Ray head on this machine ({job.service.host})"):
            # The key stays out of the head's environment, hence out of every worker's.
            head = start_head(num_cpus, job.service.host, withheld_env=(job.privacy.subject_key_env,))
        address = head.address
    try:
        if head is not None:
            job = _hand_over_key(job)
        with progress(f"connecting to Ray at {address}"):
            _connect(address, namespace)
        import ray

        address = ray.get_runtime_context().gcs_address  # "auto" resolved: what clients and --stop use
        require_shared_storage(job.storage.uri, alive_node_count())
        with progress("starting (or finding) the service and warming its shard actors"):
            handle, created = start_service(job)
            url = ray.get(handle.ready.remote(), timeout=600).get("url")
    except BaseException:
        if head is not None and recorded is None:
            stop_head(head)
            key_file(namespace).unlink(missing_ok=True)
        raise
    path = state_file(namespace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"address": address, "name": job.service.name, "head": head.model_dump() if head else None, "url": url}
        )
    )
    return {
        "address": address,
        "namespace": namespace,
        "name": job.service.name,
        "already_running": not created,
        "url": url,  # the HTTP API, where it really listens (None: service.port 0)
        "storage": job.storage.uri,
        "ensemble_version": version,
        "dashboard_url": head.dashboard_url if head else None,
        "started_head": head is not None,
        "listening": listening_addresses(head) if head else None,  # every port of the head, as bound
        "subject_key_file": job.privacy.subject_key_file,
        "state_file": str(path),
    }


def stop(namespace: str, address: str | None, name: str | None) -> dict[str, Any]:
    """Stop the service in ``namespace`` and, if ``serve`` started the head, that head; returns what was stopped."""
    from expunge.orchestrator.service.actor import stop_service

    path = state_file(namespace)
    recorded = read_state(path) or {}
    given = address
    address = address or recorded.get("address") or os.environ.get("RAY_ADDRESS")
    if address is None:
        typer.echo(  # an answer, not a fault: said plainly (exit 0), as the other jobs' summary lines
            f"no service recorded for namespace {namespace!r} ({path} does not exist) and no --address or "
            "RAY_ADDRESS: nothing to stop",
            err=True,
        )
        return {"namespace": namespace, "service_stopped": False, "head_processes_stopped": 0}
    name = name or recorded.get("name") or "expunge-coordinator"
    stopped = False
    if _reachable(address):
        _connect(address, namespace)
        stopped = stop_service(namespace, name)
    else:
        typer.echo(f"no Ray cluster answers at {address}; nothing to stop there", err=True)
    head_processes = 0
    ours = given is None or _same_address(given, str(recorded.get("address", "")))
    if recorded.get("head") and not ours:
        # --address named another cluster: the head serve started here is not what was asked to stop.
        typer.echo(
            f"the head `expunge serve` started for namespace {namespace!r} (at {recorded.get('address')}) is left "
            f"running: --address named {given}. Stop it with `expunge serve --stop --namespace {namespace}`.",
            err=True,
        )
        return {"namespace": namespace, "service_stopped": stopped, "head_processes_stopped": 0}
    if recorded.get("head"):
        import ray

        ray.shutdown()
        head_processes = stop_head(HeadInfo.model_validate(recorded["head"]))
    if ours:
        path.unlink(missing_ok=True)
        key_file(namespace).unlink(missing_ok=True)
    return {"namespace": namespace, "service_stopped": stopped, "head_processes_stopped": head_processes}


def _same_address(a: str, b: str) -> bool:
    """Whether two ``host:port`` Ray addresses name the same head (loopback spellings are one)."""

    def plain(address: str) -> tuple[str, str]:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        return ("127.0.0.1" if host in ("localhost", MAPPED_LOOPBACK) else host), port

    return plain(a) == plain(b)


def status(namespace: str, address: str | None, name: str | None) -> dict[str, Any]:
    """What the running service reports: counters, pending purges and registrations, the version served.

    Raises:
        ServiceUnavailableError: no cluster recorded or answering, or no service in ``namespace``.
    """
    from expunge.orchestrator.client import RayClient
    from expunge.orchestrator.service.actor import find_service

    recorded = read_state(state_file(namespace)) or {}
    address = address or recorded_address(namespace)
    if not _reachable(address):
        raise ServiceUnavailableError(
            f"no Ray cluster answers at {address}: is the service running? Give the Ray head's address as "
            "`expunge serve` printed it (not the HTTP API's port), or leave --address out to use the recorded one"
        )
    _connect(address, namespace)
    name = name or recorded.get("name") or "expunge-coordinator"
    client = RayClient(find_service(namespace, name), namespace, name, retry_s=30)
    return {
        "namespace": namespace,
        "address": address,
        "url": recorded.get("url"),
        "stats": client.stats().model_dump(),
        "served": client.model_version().model_dump(),
    }


def main(
    config: Path | None = typer.Option(None, help="job config YAML (storage, tracking, privacy, service)"),
    address: str | None = typer.Option(
        None, help="Ray cluster to join (HOST:PORT); default RAY_ADDRESS, else a new local head"
    ),
    namespace: str | None = typer.Option(
        None, help="Ray namespace of the service (default: service.namespace, 'expunge')"
    ),
    storage: str | None = typer.Option(None, help="storage URI (overrides the config)"),
    num_cpus: int = typer.Option(os.cpu_count() or 1, help="CPUs of a head started here"),
    host: str | None = typer.Option(
        None, help="address the HTTP API and a head started here listen on (default service.host, 127.0.0.1)"
    ),
    port: int | None = typer.Option(None, help="HTTP API port (default service.port, 8470; 0: no HTTP API)"),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate: serve HTTPS (with --tls-key)"),
    tls_key: Path | None = typer.Option(None, help="PEM private key of --tls-cert"),
    stop_it: bool = typer.Option(False, "--stop", help="stop the service (and a head `serve` started)"),
    status_only: bool = typer.Option(
        False, "--status", help="print the running service's counters, pending purges and registrations"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the erasure service (a warm coordinator and shard actors) on a Ray cluster, or --stop it.

    Prints JSON on stdout: the address and namespace to give RayClient.connect. Exit 0 when
    serving, stopped or nothing to stop; 2 on bad input (an untrained store, a wrong key, a local
    store on several nodes, a namespace serving another store); 4 when Ray, the store or MLflow
    cannot be reached, or --status finds no running service.
    """
    init_logging(verbose)
    with exit_on_error():
        if status_only:
            service = load_job_config(config).service if config else None
            name = service.name if service else None
            typer.echo(
                json.dumps(status(namespace or (service.namespace if service else "expunge"), address, name), indent=1)
            )
            return
        if stop_it:
            service = load_job_config(config).service if config else None
            outcome = stop(
                namespace or (service.namespace if service else "expunge"), address, service.name if service else None
            )
        else:
            if config is None:
                raise ConfigError("pass --config FILE.yaml (the job whose store the service erases from)")
            job = load_job_config(config)
            updates: dict[str, Any] = {}
            service_updates: dict[str, Any] = {
                name: value
                for name, value in {
                    "namespace": namespace,
                    "host": host,
                    "port": port,
                    "tls_cert": str(tls_cert.resolve()) if tls_cert else None,
                    "tls_key": str(tls_key.resolve()) if tls_key else None,
                }.items()
                if value is not None
            }
            if service_updates:
                try:  # validated: a certificate without its key, or a bad port, is refused here
                    updates["service"] = ServiceConfig.model_validate({**job.service.model_dump(), **service_updates})
                except ValidationError as exc:
                    raise ConfigError(
                        "; ".join(
                            f"--{'-'.join(str(p) for p in e['loc']) or 'service'}: {e['msg']}" for e in exc.errors()
                        )
                    ) from None
            if storage:
                updates["storage"] = job.storage.model_copy(update={"uri": storage})
            outcome = serve(job.model_copy(update=updates), address, num_cpus)
    typer.echo(json.dumps(outcome, indent=1))
    if not stop_it:
        api = (
            f"HTTP API at {outcome['url']} (tokens: `expunge tokens create --config {config} --scope ... --name CLIENT`; "
            f"`Client({outcome['url']!r}, token)`); "
            if outcome.get("url")
            else ""
        )
        typer.echo(
            f"serving: {api}in-cluster (platform team): `RayClient.connect(address={outcome['address']!r}, "
            f"namespace={outcome['namespace']!r})`; stop with `expunge serve --stop --namespace {outcome['namespace']}`",
            err=True,
        )


if __name__ == "__main__":
    typer.run(main)
