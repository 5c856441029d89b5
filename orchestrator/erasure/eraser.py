"""The forget path: route subjects to their shards, retrain only those, commit, purge, register, receipt.

Read top to bottom, ``Eraser.forget_digests`` is the whole erasure of a request:
route (``erasure.routing``) -> retrain the affected shard actors from their first affected slice
(``expunge.orchestrator.pool``) -> publish the new version (``catalog``) -> purge what it no longer
references (``store_purge``) -> record it in MLflow (``registry``) -> chain the receipt
(``evidence.receipt_chain``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

from expunge.orchestrator.catalog import EnsembleManifest, PlacementIndex
from expunge.orchestrator.config import EvidenceConfig
from expunge.orchestrator.erasure.commit import commit_erasure
from expunge.orchestrator.erasure.pending import finish_pending, readmit
from expunge.orchestrator.erasure.pending import pending_step as _pending
from expunge.orchestrator.erasure.prefetch import Prefetch, discard_prefetch, erase_calls, start_prefetch
from expunge.orchestrator.erasure.resume import already_erased, finish_committed
from expunge.orchestrator.erasure.routing import RoutingPlan, route
from expunge.orchestrator.erasure.sealing import Sealer
from expunge.orchestrator.errors import (
    ConfigError,
    ExpungeError,
    LinkInStoreError,
    PersonalDataInTextError,
    RegistryOfAnotherStoreError,
    StorageConflictError,
    StorageCorruptError,
    StoreBusyError,
)
from expunge.orchestrator.evidence.membership import ErasureAudit, configured_audit
from expunge.orchestrator.ingest import PreparedIngest
from expunge.orchestrator.receipts import ErasureReceipt, ShardRetrain, utc_now
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.screening import names_subject, screen_free_text, screen_request_text
from expunge.orchestrator.session import StoreSession
from expunge.orchestrator.store_purge import purge_unreferenced, purgeable
from expunge.shards.manifest import ShardUpdate

__all__ = ["Eraser"]

log = logging.getLogger(__name__)


class Eraser:
    """Erases subjects from one store: only the shards that hold them retrain, from their first affected slice.

    Constructible without training or serving: ``Eraser(StoreSession(uri, hasher, local_pool), lineage)``.
    """

    def __init__(
        self, session: StoreSession, lineage: Lineage | None = None, evidence: EvidenceConfig | None = None
    ) -> None:
        self.session = session
        self.lineage = lineage
        self.sealer = Sealer(session, lineage, evidence)
        session.before_commit = self.sealer.seal_before_commit
        if evidence is not None:
            configured_audit(evidence)  # a held-out file that cannot be read is refused now, not per request

    def finish_interrupted(self) -> None:
        """Finish what a crash may have interrupted right after a commit (the store purge, then the registry):
        a pre-erasure model version must not stay servable, nor its objects stored."""
        if self.session.manifest is None:
            return
        if (
            self.lineage is None
            and not self.sealer.unsealed()
            and not purgeable(self.session.store, self.session.catalog, self.session.manifest)
        ):
            return  # nothing to finish: opening a store writes nothing
        try:
            self.session.lease.acquire("recovery")
        except StoreBusyError as exc:  # the live writer finishes its own work
            log.info("not finishing interrupted work: %s", exc)
            return
        try:
            purge_unreferenced(self.session.store, self.session.catalog, self.session.manifest)
            self._sync_lineage()
            self.sealer.seal_unsealed()  # a process killed after its commit: the receipt log gets its receipt
        except (LinkInStoreError, RegistryOfAnotherStoreError):  # a person must set it right: refused now
            raise
        except ExpungeError as exc:  # it stays to do: this process's next commit and every later writer try again
            self.session.unfinished = True
            log.warning("could not finish what an earlier run left (%s); it is tried again before a commit", exc)
        finally:
            self.session.lease.release()

    def forget(
        self,
        subject_ids: Sequence[object],
        request_id: str | None = None,
        audit: ErasureAudit | None = None,
        *,
        ticket: str | None = None,
        reason: str | None = None,
    ) -> ErasureReceipt:
        """Erase every row of the subjects and retrain only the shards that held them.

        ``audit`` (e.g. ``expunge.MembershipAudit``) is called before any shard is retrained
        and after the commit; its record's sha256 goes into the receipt. ``ticket`` and
        ``reason``: the requester's reference and why, screened (``expunge.orchestrator.screening``)
        and kept in the receipt and on the MLflow run. Every receipt is sealed
        (``erasure.sealing``: bound to the stored state, chained, anchored) and recorded in
        MLflow when a lineage is set.

        Raises:
            ConfigError: no subject named, a bad request id, an id that named other subjects, or
                a ticket or reason that is not 1-1000 printable characters on one line.
            InvalidSubjectIdError: an id the identity rule refuses (``expunge.shards.identity``).
            PersonalDataInTextError: the ticket, reason or request id names a subject of the request, an
                e-mail address or a phone number. Nothing is changed on any error.
        """
        if not subject_ids:
            raise ConfigError("an erasure request needs at least one subject id")
        if request_id is not None:
            check_request_id(request_id)
        from expunge.shards.identity import canonical_subject_ids

        canonical = canonical_subject_ids(subject_ids, "the request")
        reason, ticket = screen_request_text(reason, ticket, canonical)
        if request_id is not None and names_subject(request_id, canonical):  # kept in receipts, MLflow, file names
            raise PersonalDataInTextError(
                "the request id names a subject of the request; it is stored with the receipt and shown in MLflow, so "
                "use a case number instead (e.g. GDPR-2026-0042), or omit it. Nothing was stored"
            )
        digests = list(dict.fromkeys(self.session.hasher.digest_many(subject_ids)))
        return self.forget_digests(digests, request_id, audit, ticket=ticket, reason=reason)

    def forget_digests(
        self,
        digests: Sequence[str],
        request_id: str | None = None,
        audit: ErasureAudit | None = None,
        *,
        register: bool = True,
        resume: bool = True,
        ticket: str | None = None,
        reason: str | None = None,
        ingest: PreparedIngest | None = None,
        prefetched: Prefetch | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> ErasureReceipt:
        """``forget`` for subjects already digested with this store's key (the service's entry point).

        ``register=False`` stops at the store commit (the live actors serve the new version and
        the receipt is chained); the caller registers later with ``register_published``.
        ``resume=False`` is the caller's promise that no earlier attempt used ``request_id``, which
        skips looking for one (a scan of every stored version). ``ingest``: a batch prepared on
        the published version (``Ingester.prepare(..., erasing=digests)``) that joins this commit,
        so each shard retrains once for both; its receipt is then ``ingest.receipt``. When
        nobody is found, or the batch holds nothing new, it is left to the caller
        (``ingest.receipt`` stays None; ``Ingester.run`` does it alone). ``prefetched``: this
        request's retrain, started early (``prefetch``); used if it matches, else discarded.
        ``after_commit``: called right after the publish, before the purge and the seal (its errors
        are logged, never raised: the request is committed).

        Raises:
            ConfigError: no digest, a bad request id, or an id that named other subjects.
            StorageConflictError: another writer published first (nothing changed; submit again).
            StoreBusyError: another process holds the store's write lease (e.g. a running service).
            ShardRetrainFailed: a shard actor failed or died (nothing published; submit again).
        """
        if not digests:
            raise ConfigError("an erasure request needs at least one subject id")
        reason, ticket = screen_request_text(reason, ticket, ())  # raw ids were screened by the caller
        screen_free_text("request id", request_id, ())  # kept in receipts, tombstones, MLflow and log lines
        self.session.follow_latest()
        self.session.require_manifest()  # an untrained store or a wrong key: refused before anything is written
        with self.session.writing("expunge forget"):
            try:
                receipt = self._forget_digests(
                    digests,
                    request_id,
                    audit,
                    register=register,
                    resume=resume,
                    text={"ticket": ticket, "reason": reason},
                    ingest=ingest,
                    prefetched=prefetched,
                    after_commit=after_commit,
                )
            finally:  # a failure before its retrain was taken: the actors must not keep unpublished states
                if prefetched is not None and not prefetched.taken:
                    discard_prefetch(self.session, prefetched, self.session.manifest)
        if register:
            self.sealer.anchor()  # MLflow has the request's runs now: anchor the receipt log there too
        return receipt

    def _forget_digests(
        self,
        digests: Sequence[str],
        request_id: str | None,
        audit: ErasureAudit | None,
        *,
        register: bool,
        resume: bool,
        text: dict[str, str | None],
        ingest: PreparedIngest | None = None,
        prefetched: Prefetch | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> ErasureReceipt:
        began = time.perf_counter()
        self._refresh(sync=register)
        manifest = self.session.require_manifest()
        request_id = check_request_id(request_id or f"req-{uuid.uuid4().hex[:12]}")
        digests = list(dict.fromkeys(digests))
        audit = audit or configured_audit(self.sealer.evidence)  # evidence.audit_holdout: every erasure audited
        if prefetched is not None and (
            resume
            or ingest is not None
            or audit is not None
            or not prefetched.matches(manifest.version, request_id, digests)
        ):
            discard_prefetch(self.session, prefetched, manifest)
            prefetched = None
        committed = (
            finish_committed(self.session, self.lineage, request_id, digests, self.sealer.seal) if resume else None
        )
        if committed is not None:
            return committed  # a retry of a request that already committed: the same receipt, once
        if ingest is not None and ingest.manifest.version != manifest.version:
            raise StorageConflictError(
                f"the batch joining request {request_id} was planned on version {ingest.manifest.version}, and the "
                f"store is at {manifest.version}; prepare it again"
            )
        index = self.session.catalog.read_placement(manifest.placement_key)
        plan = route(digests, index.cells(digests))
        if not plan.found:
            return self._not_found(manifest, request_id, digests, plan, began, register, text)
        if audit is not None:
            # The only moment both exist: the subjects' rows and the constituents trained on them.
            audit.before_retrain(self.session.catalog, manifest, sorted(plan.found), self.session.hasher)
        updates, retrain_seconds = self._retrain(manifest, index, plan, request_id, ingest, prefetched)
        new_manifest = commit_erasure(self.session, manifest, index, plan, updates, request_id, ingest, text)
        if after_commit is not None:
            try:
                after_commit()
            except Exception:  # committed: nothing after the commit point fails the request
                log.exception("request %s: the step after its commit failed; the request stands", request_id)
        # The commit point is behind us: from here on nothing fails the request. A step that cannot
        # be done now is named in ``receipt.pending`` and retried (``finish_pending``).
        pending: list[str] = []
        deleted = []
        try:
            deleted = purge_unreferenced(self.session.store, self.session.catalog, new_manifest, since=manifest.version)
        except ExpungeError as exc:
            pending.append(_pending("purge", exc))
        receipt = ErasureReceipt(
            request_id=request_id,
            status="erased",
            subject_digests=tuple(digests),
            not_found_digests=plan.not_found,
            already_erased_digests=already_erased(self.session.catalog, plan.not_found),
            rows_removed=sum(u.rows_removed for u in updates.values()),
            **text,
            shards=tuple(
                ShardRetrain(
                    shard=s,
                    # A shard that only took rows of a batch joining this erasure: from its first changed slice.
                    first_affected_slice=plan.first_affected_slice.get(s, min(u.slices_retrained, default=0)),
                    slices_retrained=u.slices_retrained,
                    restarted_from=u.restarted_from,
                    rows_removed=u.rows_removed,
                    seconds=u.seconds,
                )
                for s, u in sorted(updates.items())
            ),
            untouched_shards=tuple(s for s in range(manifest.sharding.shards) if s not in updates),
            seconds=time.perf_counter() - began,
            retrain_seconds=retrain_seconds,
            full_retrain_seconds=manifest.train_seconds,
            retrain_cpu_seconds=sum(u.cpu_seconds for u in updates.values()),
            full_retrain_cpu_seconds=manifest.train_cpu_seconds,
            model_version_before=manifest.version,
            model_version_after=new_manifest.version,
            deleted_objects=tuple(str(v) for v in deleted),
            committed_at=utc_now(),
            joined_ingest=ingest.request_id if ingest is not None and ingest.plan is not None else None,
        )
        try:
            self.session.catalog.write_receipt(new_manifest.version, receipt.model_dump_json(indent=1))
        except ExpungeError as exc:
            pending.append(_pending("receipt", exc))
        receipt = self._record(receipt.model_copy(update={"pending": tuple(pending)}), new_manifest, audit, register)
        if ingest is not None and ingest.plan is not None:  # the batch's receipt, registered with this version
            ingest.finish(ingest, new_manifest, updates, retrain_seconds, False, receipt.registry_version_after)
        log.info(
            "request %s: erased %d row(s) from shard(s) %s in %.2fs",
            request_id,
            receipt.rows_removed,
            receipt.affected_shards,
            receipt.seconds,
        )
        return receipt

    def _not_found(
        self,
        manifest: EnsembleManifest,
        request_id: str,
        digests: Sequence[str],
        plan: RoutingPlan,
        began: float,
        register: bool,
        text: dict[str, str | None],
    ) -> ErasureReceipt:
        """Nothing to erase: the receipt says so, and still enters the audit trail."""
        log.info("request %s: no rows for %d subject(s); nothing changed", request_id, len(digests))
        registered = self.lineage.current_version() if self.lineage and register else None
        missed = ErasureReceipt(
            request_id=request_id,
            status="not_found",
            subject_digests=tuple(digests),
            not_found_digests=plan.not_found,
            already_erased_digests=already_erased(self.session.catalog, plan.not_found),
            **text,
            untouched_shards=tuple(range(manifest.sharding.shards)),
            seconds=time.perf_counter() - began,
            model_version_before=manifest.version,
            model_version_after=manifest.version,
            registry_version_before=registered,
            registry_version_after=registered,
            committed_at=utc_now(),
        )
        # The audit trail shows every request, not only those that erased something.
        missed = self.sealer.seal(missed)
        if self.lineage is not None and register:
            self.lineage.record_request(missed, manifest)
        return missed

    def _retrain(
        self,
        manifest: EnsembleManifest,
        index: PlacementIndex,
        plan: RoutingPlan,
        request_id: str,
        ingest: PreparedIngest | None = None,
        prefetched: Prefetch | None = None,
    ) -> tuple[dict[int, ShardUpdate], float]:
        """Retrain each affected shard from its first affected slice, in parallel; returns updates and seconds.

        ``prefetched``: the same retrain, already started (``prefetch``): its results are taken.

        Raises:
            StorageConflictError: another writer published while the shards retrained.
            ExpungeError: a shard failed (nothing published; the actors point back at the published version).
        """
        per_shard = erase_calls(index, plan, request_id)
        pool = self.session.pool
        method, calls = "erase", dict[int, tuple[object, ...]](per_shard)
        if ingest is not None and ingest.plan is not None:  # one retrain per shard: rows in, the subjects' out
            method, calls = "ingest", ingest.shard_calls({s: args[0] for s, args in per_shard.items()})
        try:
            if prefetched is not None:
                return prefetched.take()
            # Start the affected actors first (a no-op when warm) so that retrain_seconds is
            # retraining alone, like the manifest's train_seconds it is compared with.
            pool.call("ready", {s: () for s in calls})
            began = time.perf_counter()
            updates: dict[int, ShardUpdate] = pool.call(method, calls)
            return updates, time.perf_counter() - began
        except StorageCorruptError as exc:
            self.session.rollback(manifest)
            current = self.session.manifest
            if current is not None and current.version != manifest.version:
                raise StorageConflictError(
                    f"ensemble v{current.version} was published while request {request_id} ran "
                    f"from v{manifest.version}; nothing was changed. Submit the request again."
                ) from exc
            raise
        except ExpungeError:
            self.session.rollback(manifest)
            raise

    def prefetch(self, digests: Sequence[str], request_id: str) -> Prefetch | None:
        """``erasure.prefetch.start_prefetch``: start ``request_id``'s retrain on the published version."""
        return start_prefetch(self.session, configured_audit(self.sealer.evidence) is not None, digests, request_id)

    def _record(
        self, receipt: ErasureReceipt, manifest: EnsembleManifest, audit: ErasureAudit | None, register: bool
    ) -> ErasureReceipt:
        """Register the committed version in MLflow (unless ``register`` is off), audit it, chain the receipt."""
        if self.lineage is not None and register:
            try:
                parent = self.lineage.current_version()
                version = self.lineage.record_erasure(receipt, manifest, parent)
                receipt = receipt.model_copy(
                    update={
                        "registry_version_before": parent,
                        "registry_version_after": version,
                        "registered_at": utc_now(),
                    }
                )
            except Exception as exc:  # any MLflow failure: committed all the same, retried
                receipt = receipt.model_copy(update={"pending": (*receipt.pending, _pending("registration", exc))})
        if audit is not None:
            try:
                receipt = receipt.model_copy(
                    update={"audit_sha256": audit.after_commit(self.session.catalog, manifest, receipt)}
                )
            except Exception as exc:  # committed: an audit that cannot finish is recorded, never a failure
                cause = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("request %s: the membership audit did not complete (%s)", receipt.request_id, cause)
                receipt = receipt.model_copy(update={"audit_error": cause})
        return self._chain(receipt)

    def _chain(self, receipt: ErasureReceipt) -> ErasureReceipt:
        """Seal ``receipt`` into the receipt log; if the store refuses, the receipt says so (pending)."""
        try:
            return self.sealer.seal(receipt)
        except ExpungeError as exc:
            return receipt.model_copy(update={"pending": (*receipt.pending, _pending("receipt log", exc))})

    def finish_pending(self, receipt: ErasureReceipt) -> ErasureReceipt:
        """``erasure.pending.finish_pending``: retry the steps ``receipt.pending`` names."""
        return finish_pending(self.session, receipt, self._sync_lineage, self._chain)

    def readmit(self, subject_ids: Sequence[object], reason: str, request_id: str | None = None) -> int:
        """``erasure.pending.readmit``: lift the tombstones of subjects who gave new consent."""
        return readmit(self.session, subject_ids, reason, request_id)

    def register_published(self) -> str | None:
        """Bring MLflow up to the published version (new version, alias moved, every earlier one purged): the
        second stage of a service erasure (``forget_digests(register=False)``); a no-op when the registry
        already has it or tracking is off. Returns the registry version serving now."""
        if self.lineage is None:
            return None
        self.lineage.reconcile()
        self.sealer.anchor()  # the new runs exist now: anchor their receipts in MLflow
        return self.lineage.current_version()

    def _sync_lineage(self) -> None:
        """Finish what a crash or an MLflow outage left undone in the registry (``Lineage.reconcile``: a
        version MLflow missed recorded, every version older than the newest erasure purged, interrupted
        runs closed), then anchor this process's newest receipt in MLflow (a retried registration's too)."""
        if self.lineage is not None and self.session.manifest is not None:
            self.lineage.reconcile()
            self.sealer.anchor()

    def _refresh(self, sync: bool = True) -> None:
        """Act on the latest published version (another process may have committed since)."""
        self.session.follow_latest()
        if sync:
            self._sync_lineage()
