"""Resuming a request: the receipt of an erasure that committed before a crash, and who was erased already."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.receipt_chain import append_receipt, chained_receipts
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.session import StoreSession

__all__ = ["already_erased", "finish_committed"]

log = logging.getLogger(__name__)


def finish_committed(
    session: StoreSession, lineage: Lineage | None, request_id: str, digests: Sequence[str]
) -> ErasureReceipt | None:
    """The receipt of ``request_id`` if an erasure with that id already committed, finishing its record.

    A crash after the store commit (in MLflow, or before the receipt log) leaves the store
    erased but the request unanswered; its retry must not look like a miss. The registry is
    already reconciled on open (``Eraser.finish_interrupted``); this completes the receipt log.

    Raises:
        ConfigError: the id was used by an erasure of other subjects (ids name one request).
    """
    version = next(
        (
            v
            for v in sorted(session.catalog.versions(), reverse=True)
            if (m := session.catalog.read(v)).kind == "erasure" and m.request_id == request_id
        ),
        None,
    )
    if version is None:
        return None
    done = [r for _, r in chained_receipts(session.store, request_id) if r.status == "erased"]
    stored = done[-1] if done else None
    if stored is None and (text := session.catalog.read_receipt(version)) is not None:
        stored = ErasureReceipt.model_validate_json(text)
    if stored is None:  # crashed between the commit and the per-version receipt
        parent = session.catalog.read(version - 1) if version > 1 else None
        stored = ErasureReceipt(
            request_id=request_id,
            status="erased",
            subject_digests=tuple(digests),
            rows_removed=(parent.rows - session.catalog.read(version).rows) if parent else 0,
            model_version_before=version - 1,
            model_version_after=version,
        )
    if set(stored.subject_digests) != set(digests):
        raise ConfigError(
            f"request id {request_id!r} already erased other subjects (ensemble v{version}); "
            "each request needs its own id: use a new --request-id, or omit it"
        )
    if done:
        return stored
    if lineage is not None and stored.registry_version_after is None:
        stored = stored.model_copy(update={"registry_version_after": lineage.current_version()})
    log.info("request %s had committed ensemble v%d before a crash: finishing its receipt", request_id, version)
    return append_receipt(session.store, stored)


def already_erased(catalog: Catalog, not_found: Sequence[str]) -> tuple[str, ...]:
    """The digests among ``not_found`` that an earlier erasure of this store removed (tombstoned)."""
    if not not_found:
        return ()
    erased = catalog.tombstones()
    return tuple(d for d in not_found if d in erased)
