"""Recipe: erase data subjects from a trained store and print the erasure receipt.

    expunge forget --storage ./expunge-store --subject 42 --subject 77
    expunge forget --config job.yaml --subjects-file tickets.txt --ticket DESK-0042 --reason "Art. 17 request"
    expunge forget --config job.yaml --subject 42 --audit-holdout held-out.parquet   (audited: docs/verification.md)
    python -m expunge.pipelines.forget ...   (the same, as ``ray job submit`` runs it)

Exit 0 when every named subject was found and erased, 3 when any had no data (the receipt is
printed and stored all the same), 2 on bad input (a ``--reason`` or ``--ticket`` naming a person
included: nothing is stored), 4 when another writer won a race.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from expunge.orchestrator.cluster import alive_node_count, require_shared_storage
from expunge.orchestrator.config import (
    ErasureConfig,
    EvidenceConfig,
    JobConfig,
    PrivacyConfig,
    StorageConfig,
    TrackingConfig,
    load_job_config,
)
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, ExpungeError
from expunge.orchestrator.lease import StoreLease
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.screening import screen_request_text
from expunge.pipelines._runtime import (
    connecting_beside,
    deferred_lineage,
    exit_on_error,
    hasher_from_env,
    init_logging,
    init_ray,
    job_and_store,
    progress,
    stage,
)
from expunge.pipelines.store_settings import warn_overridden_settings
from expunge.shards.store import ObjectStore

if TYPE_CHECKING:  # loaded by ``opened``: the coordinator, the pool and the registry load torch and MLflow
    from expunge.orchestrator.coordinator import Coordinator, PoolFactory
    from expunge.orchestrator.pool import ShardPool
    from expunge.orchestrator.registry import Lineage

__all__ = ["EXIT_NOT_FOUND", "erase", "main", "opened", "read_subjects", "run"]

#: Pauses between retries of steps left pending after a commit (purge, registration), in seconds.
_PENDING_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Exit status when at least one named subject had no data (README "Exit codes").
EXIT_NOT_FOUND = 3

log = logging.getLogger(__name__)


def read_subjects(subjects: list[str], subjects_file: Path | None) -> list[str]:
    """Subjects from flags and/or a file, in canonical form under the identity rule (``expunge.shards.identity``).

    The file holds one id per line: UTF-8 with or without a byte-order mark, LF or CRLF line
    ends; blank lines and lines starting with ``#`` are skipped. A refused id (empty flag,
    file not UTF-8) raises ``InvalidSubjectIdError`` naming where it is.
    """
    from expunge.shards.identity import canonical_subject_ids, parse_subjects_file

    found = canonical_subject_ids(subjects, "the --subject flags", "--subject")
    if subjects_file is not None:
        if subjects_file.is_dir():
            raise ConfigError(f"subjects file {str(subjects_file)!r} is a folder; name a file with one id per line")
        if not subjects_file.is_file():
            raise ConfigError(f"subjects file {str(subjects_file)!r} does not exist")
        try:
            data = subjects_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"subjects file {str(subjects_file)!r} cannot be read: {exc}") from exc
        found += parse_subjects_file(data, f"subjects file {str(subjects_file)!r}")
    if not found:
        if subjects_file is not None:
            raise ConfigError(
                f"subjects file {str(subjects_file)!r} names nobody (only blank lines or # comments); "
                "put one subject id per line"
            )
        raise ConfigError("name at least one subject with --subject ID or --subjects-file FILE")
    return found


def run(
    storage: StorageConfig,
    subjects: list[str],
    tracking: TrackingConfig | None,
    privacy: PrivacyConfig,
    request_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    evidence: EvidenceConfig | None = None,
    ticket: str | None = None,
    reason: str | None = None,
    erasure: ErasureConfig | None = None,
) -> ErasureReceipt:
    """Erase ``subjects`` from the store; MLflow is the registry the store records unless told otherwise.

    ``evidence``: the job's evidence settings; with ``audit_holdout`` set the erasure runs the
    membership-inference audit (its record's sha256 goes into the receipt). ``ticket`` and
    ``reason``: the requester's reference and why, screened and stored in the receipt.
    ``erasure``: how shards are retrained (``in_process_max_shards``: without a cluster, few shards
    retrain in this process and Ray never starts).

    Raises:
        ConfigError: no key, no trained store, a tracking config naming another registry, or an
            unusable ``evidence.audit_holdout``.
        PersonalDataInTextError: ``ticket`` or ``reason`` names a subject, an e-mail address or a
            phone number. Each of these is raised before Ray starts; nothing is stored.
    """
    with stage("checks before Ray (key, request, store, lease)"):
        hasher = hasher_from_env(privacy)  # fail on a missing key before starting anything
        if request_id is not None:
            check_request_id(request_id)
        screen_request_text(reason, ticket, subjects)  # free text naming a person: refused before anything starts
    erasure = erasure or ErasureConfig()
    with opened(
        storage,
        hasher,
        tracking,
        tracking_uri,
        evidence=evidence,
        erasure=erasure,
    ) as coordinator:
        audited = evidence is not None and evidence.audit_holdout is not None
        return erase(coordinator, subjects, request_id, ticket=ticket, reason=reason, audited=audited)


@contextmanager
def opened(
    storage: StorageConfig,
    hasher: SubjectHasher,
    tracking: TrackingConfig | None,
    tracking_uri: str | None = None,
    *,
    evidence: EvidenceConfig | None = None,
    erasure: ErasureConfig | None = None,
    pool_wrapper: Callable[[ShardPool], ShardPool] | None = None,
    lineage_factory: Callable[[TrackingConfig, StorageConfig], Lineage | None] = deferred_lineage,
) -> Iterator[Coordinator]:
    """The coordinator of a trained store, on Ray, recording to its registry; its actors stop on exit.

    Everything that can be refused is checked before Ray starts. MLflow connects in a thread while
    Ray starts (``connecting_beside``); the lineage reconciles at its first use, when the
    coordinator opens, as before.

    Without a cluster to join (``RAY_ADDRESS`` unset, Ray not initialised in this process) and no
    audit, Ray starts only if the first shard call names more shards than ``erasure`` (default
    ``ErasureConfig()``) lets this process retrain (``in_process_max_shards``,
    ``in_process_max_cpu_s``); otherwise they retrain here (``orchestrator.pool.FirstCallPool``). ``pool_wrapper`` and
    ``lineage_factory`` are seams for measuring (``expunge benchmark profile``) and tests.

    Raises:
        ConfigError: no trained store, a wrong key, a tracking config naming another registry, an
            unusable ``evidence.audit_holdout``, or a custom model whose module does not import.
        StoreBusyError: a service holds the store.
        ClusterUnavailableError: Ray did not start.
        TrackingUnreachable: the tracking server or database does not answer (raised once Ray started).
    """
    with stage("imports of the erasure (coordinator, torch)"):  # not at module level: `forget --help` needs none
        from expunge.orchestrator.coordinator import Coordinator, ray_pool
        from expunge.orchestrator.evidence.membership import configured_audit
        from expunge.orchestrator.registry.ownership import bind_writer
        from expunge.orchestrator.session import (
            first_call_pool,
            in_process_rule,
            on_a_cluster,
            published,
            why_ray_at_once,
        )
        from expunge.shards.models import model_for

    with stage("checks before Ray (key, request, store, lease)"):
        evidence = evidence or EvidenceConfig()
        configured_audit(evidence)  # a missing or unusable hold-out: refused now (rows stay cached for the erasure)
        _, latest = published(storage, hasher)  # a wrong key would find nobody: refuse before starting Ray
        model_for(latest.model)  # a custom model's module must import here, and in the shard actors: refuse now
        tracking = bind_writer(latest.registry, tracking, tracking_uri, storage)
        # One lease token for the whole job (a served store is refused here, at once): the coordinator's
        # recovery on open and the erasure join it (the lease is re-entrant within a process), so the
        # job takes one token and tidies the lease history once (it took one for each, each tidying).
        lease = StoreLease(ObjectStore(storage), storage.lease_ttl_s)
        lease.acquire("expunge forget")
    try:
        lineage = lineage_factory(tracking, storage)  # deferred: nothing read or written yet

        def start_ray(why: str = "") -> None:
            what = f"starting Ray ({why})" if why else "starting Ray"
            with progress(what), stage("Ray start"), connecting_beside(lineage):
                init_ray()
            require_shared_storage(storage.uri, alive_node_count())  # before any shard writes

        erasure = erasure or ErasureConfig()
        pool_factory: PoolFactory = ray_pool
        why = why_ray_at_once(erasure, on_a_cluster(), audited=evidence.audit_holdout is not None)
        if not why:  # Ray starts at the first shard call, if at all
            pool_factory = first_call_pool(in_process_rule(erasure, latest), start_ray)
        else:
            start_ray(why)
        if pool_wrapper is not None:
            pool_factory = _wrapped(pool_factory, pool_wrapper)
        with stage("coordinator open (recovery check)"):
            coordinator = Coordinator(storage, hasher, lineage, pool_factory=pool_factory, evidence=evidence)
        try:
            yield coordinator
        finally:
            with stage("actors stop"):
                coordinator.close()
    finally:
        lease.release()


def _wrapped(factory: PoolFactory, wrapper: Callable[[ShardPool], ShardPool]) -> PoolFactory:
    def wrapped(*args: Any) -> ShardPool:
        return wrapper(factory(*args))

    return wrapped


def erase(
    coordinator: Coordinator,
    subjects: list[str],
    request_id: str | None = None,
    *,
    ticket: str | None = None,
    reason: str | None = None,
    audited: bool = False,
) -> ErasureReceipt:
    """One erasure request through ``coordinator``; steps left pending after the commit are retried with backoff.

    Raises what ``Coordinator.forget`` raises; after the commit nothing fails the request (what is
    still pending is named in ``receipt.pending`` and on stderr). ``audited``: the coordinator's
    evidence settings audit every erasure (said in the progress line).
    """
    what = f"erasing {len(subjects)} subject(s)" + (" and auditing the erasure" if audited else "")
    with progress(what), stage("erasure (rest)"):
        receipt = coordinator.forget(subjects, request_id, ticket=ticket, reason=reason)
    # Committed: never reported failed. What could not be done after the commit is retried here
    # with backoff, then left to the next writer of the store (named in receipt.pending).
    for pause in _PENDING_RETRY_PAUSES_S:
        if not receipt.pending:
            break
        time.sleep(pause)
        receipt = coordinator.erasure.finish_pending(receipt)
    for step in receipt.pending:
        typer.echo(f"warning: committed, but still pending (retried by the next writer of the store): {step}", err=True)
    return receipt


def main(
    subject: list[str] = typer.Option([], "--subject", help="subject id to erase (repeatable)"),
    subjects_file: Path | None = typer.Option(None, help="file with one subject id per line"),
    config: Path | None = typer.Option(None, help="job config YAML (for storage, tracking, privacy)"),
    storage: str | None = typer.Option(None, help="storage URI (overrides the config)"),
    tracking_uri: str | None = typer.Option(
        None,
        help="MLflow tracking URI (default: the one the store recorded at training; another one is refused, but for a copy of a store whose recorded registry serves the original)",
    ),
    request_id: str | None = typer.Option(
        None, help="request id to record (default: generated); with --service, the idempotency key"
    ),
    service: bool = typer.Option(
        False, "--service", help="send the request to the running `expunge serve` (warm) instead of erasing here"
    ),
    namespace: str | None = typer.Option(None, help="with --service: its Ray namespace (default: the config's)"),
    address: str | None = typer.Option(
        None, help="with --service: the Ray cluster (default: RAY_ADDRESS, else what `expunge serve` recorded)"
    ),
    timeout: float = typer.Option(
        600.0,
        min=1.0,
        metavar="S",
        help="with --service: seconds to wait for the commit; then exit 4, the request going on "
        "(`expunge requests` shows it; a service waits out a store that does not answer)",
    ),
    ticket: str | None = typer.Option(
        None, help="the requester's reference (e.g. the privacy desk's case number); screened, stored in the receipt"
    ),
    reason: str | None = typer.Option(
        None, help="why (e.g. 'Art. 17 request'); screened: text naming a person is refused (exit 2)"
    ),
    audit_holdout: Path | None = typer.Option(
        None,
        help="held-out rows (Parquet file or folder, or MovieLens file) for a membership audit of this erasure "
        "(overrides evidence.audit_holdout)",
    ),
    in_process_max_shards: int | None = typer.Option(
        None,
        min=0,
        help="without a Ray cluster: retrain at most this many shards in this process instead of starting Ray "
        "(overrides erasure.in_process_max_shards; 0: always start Ray)",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what each step does"),
) -> None:
    """Erase subjects: delete their rows and retrain only the shards that held them.

    Prints the ErasureReceipt (JSON) on stdout. Exit 0 when every subject was found and erased,
    3 when any had no data (receipt still printed and stored), 2 on bad input, 4 on a conflict
    or an unreachable service. With --service the running service does the work (returns once
    committed and served) and --request-id is the idempotency key.
    """
    init_logging(verbose)
    with exit_on_error():
        if service:
            if audit_holdout is not None:
                raise ConfigError(
                    "--audit-holdout does not apply with --service: the service audits every erasure by its own "
                    "config (evidence.audit_holdout, set before `expunge serve`)"
                )
            job = load_job_config(config) if config else None
            receipt = through_service(
                read_subjects(subject, subjects_file),
                namespace or (job.service.namespace if job else "expunge"),
                address,
                request_id,
                ticket=ticket,
                reason=reason,
                timeout=timeout,
            )
            _report(receipt)
            return
        job, store = job_and_store(config, storage)
        warn_overridden_settings(job, store, "this erasure")
        evidence = job.evidence if job else EvidenceConfig()
        if audit_holdout is not None:
            evidence = evidence.model_copy(update={"audit_holdout": str(audit_holdout)})
        receipt = run(
            store,
            read_subjects(subject, subjects_file),
            job.tracking if job else None,
            job.privacy if job else PrivacyConfig(),
            request_id,
            tracking_uri,
            evidence=evidence,
            ticket=ticket,
            reason=reason,
            erasure=_erasure_settings(job, in_process_max_shards),
        )
    _report(receipt, store)


def _erasure_settings(job: JobConfig | None, in_process_max_shards: int | None) -> ErasureConfig:
    erasure = job.erasure if job else ErasureConfig()
    if in_process_max_shards is not None:
        erasure = erasure.model_copy(update={"in_process_max_shards": in_process_max_shards})
    return erasure


def through_service(
    subjects: list[str],
    namespace: str,
    address: str | None,
    idempotency_key: str | None,
    *,
    ticket: str | None = None,
    reason: str | None = None,
    timeout: float | None = None,
) -> ErasureReceipt:
    """Erase through the running service (``expunge serve``): warm, journalled, coalesced.

    ``ticket`` and ``reason`` are screened here first, then by the service, and stored with the request.
    ``timeout``: seconds to wait for the commit (None: for as long as it takes).

    Raises:
        PersonalDataInTextError: ``ticket`` or ``reason`` names a person (before connecting).
        ServiceUnavailableError: no service answers in ``namespace`` at ``address``.
        ErasureWaitTimeout: not committed within ``timeout`` (the request goes on).
    """
    screen_request_text(reason, ticket, subjects)
    from expunge.orchestrator.client import RayClient
    from expunge.pipelines.serve import recorded_address

    client = RayClient.connect(address=address or recorded_address(namespace), namespace=namespace)
    try:
        with progress(f"erasing {len(subjects)} subject(s) through the service"):
            return client.forget(
                subjects, idempotency_key=idempotency_key, reason=reason, ticket=ticket, timeout=timeout
            )
    finally:
        client.close()


def _report(receipt: ErasureReceipt, storage: StorageConfig | None = None) -> None:
    """Print the receipt; exit 3 when a named subject had no data. ``storage``: where to look up the requests
    that erased the subjects erased earlier, to name them (a killed forget run again without its request id
    finds its subjects erased: its requester is pointed at the erasure that did it)."""
    typer.echo(receipt.model_dump_json(indent=1))
    if receipt.not_found_digests:
        earlier = f"{len(receipt.already_erased_digests)} of them erased earlier"
        if receipt.already_erased_digests and storage is not None:
            from expunge.orchestrator.catalog import Catalog
            from expunge.orchestrator.evidence.references import erased_by

            try:
                by = list(
                    dict.fromkeys(erased_by(Catalog(ObjectStore(storage)), receipt.already_erased_digests).values())
                )
            except ExpungeError as exc:  # the receipt is out: naming them is a courtesy
                log.debug("could not read who erased them earlier: %s", exc)
                by = []
            if by:
                earlier += f", by request {', '.join(by)}: `expunge verify --request {by[-1]}` checks that erasure"
        typer.echo(
            f"{len(receipt.not_found_digests)} of {len(receipt.subject_digests)} subject(s) had no data "
            f"(digests in not_found_digests; {earlier}); request {receipt.request_id} is recorded",
            err=True,
        )
        raise typer.Exit(EXIT_NOT_FOUND)


if __name__ == "__main__":
    typer.run(main)
