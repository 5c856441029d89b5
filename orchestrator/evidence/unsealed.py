"""Which published erasures the receipt log lacks: committed by a process that ended before sealing them.

Receipts are chained in commit order, so every erasure version up to the newest sealed one has a
receipt (one that lacks it was *buried*: a later commit went ahead without sealing it), and an
erasure version after it has none yet (*unsealed*: its writer is still sealing it, or ended first).
``unsealed_versions`` finds the second kind cheaply, for every writer before it commits
(``erasure.sealing.Sealer.seal_before_commit``); ``sealing_gaps`` finds both, for ``verify --log``.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from pydantic import ValidationError

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.evidence.receipt_chain import chain_key, chained_sequences
from expunge.orchestrator.receipts import ErasureReceipt

__all__ = ["buried_problem", "sealing_gaps", "unsealed_versions"]

log = logging.getLogger(__name__)


def _chained(catalog: Catalog, sequence: int) -> ErasureReceipt | None:
    try:
        return ErasureReceipt.model_validate_json(catalog.store.get(chain_key(sequence)))
    except ValidationError:
        return None  # unreadable: ``walk_chain`` reports it


def _copy(catalog: Catalog, request_id: str) -> ErasureReceipt | None:
    """The by-id copy of ``request_id``'s newest receipt, written right after it is chained (None: none, or
    unreadable)."""
    text = catalog.read_request_receipt(request_id)
    try:
        return ErasureReceipt.model_validate_json(text) if text is not None else None
    except ValidationError:
        return None


def _sealed(catalog: Catalog, manifest: EnsembleManifest) -> bool:
    """Whether the receipt log holds the receipt of ``manifest``'s request naming that version (its by-id
    copy says so in one read)."""
    assert manifest.request_id is not None
    copy = _copy(catalog, manifest.request_id)
    if copy is not None and copy.chain_sequence is not None and copy.model_version_after == manifest.version:
        return True
    return any(  # a request committed again later (a resumed batch), or its copy damaged: the log itself
        (r := _chained(catalog, s)) is not None
        and r.request_id == manifest.request_id
        and r.model_version_after == manifest.version
        for s in chained_sequences(catalog.store)
    )


def unsealed_versions(catalog: Catalog) -> list[EnsembleManifest]:
    """Erasure versions newer than the newest sealed one whose receipt the log lacks, oldest first.

    Every erasure appends its tombstone entry just before its commit, so the newest erased entries
    say where to look: walking them newest first, the first whose request's receipt is chained (its
    by-id copy, one read) gives the newest sealed version; only when some entry came after it (an
    erasure unsealed, or one whose commit failed) are the manifests after that version read, for
    those requests. Requests that found nobody (no entry) cost nothing. Reads only.
    """
    latest = catalog.latest()
    if latest is None:
        return []
    after, pending = 0, set[str]()
    for entry in reversed([e for e in catalog.tombstone_log() if e.action == "erased"]):
        copy = _copy(catalog, entry.request_id)
        if copy is not None and copy.chain_sequence is not None and copy.model_version_after is not None:
            after = copy.model_version_after
            break
        pending.add(entry.request_id)
    found: list[EnsembleManifest] = []
    manifest: EnsembleManifest | None = latest if pending else None
    while manifest is not None and manifest.version > after:
        if manifest.kind == "erasure" and manifest.request_id in pending and not _sealed(catalog, manifest):
            found.append(manifest)
        manifest = catalog.read(manifest.parent_version) if manifest.parent_version is not None else None
    return found[::-1]


def sealing_gaps(catalog: Catalog, latest: EnsembleManifest) -> tuple[list[EnsembleManifest], list[EnsembleManifest]]:
    """(buried, unsealed): every published erasure version whose receipt the log lacks, split at the newest
    sealed one. Reads every chained receipt and every published manifest once."""
    sealed: dict[int, set[str]] = defaultdict(set)
    for sequence in chained_sequences(catalog.store):
        receipt = _chained(catalog, sequence)
        if receipt is not None and receipt.status == "erased" and receipt.model_version_after is not None:
            sealed[receipt.model_version_after].add(receipt.request_id)
    after = max(sealed, default=0)
    buried: list[EnsembleManifest] = []
    unsealed: list[EnsembleManifest] = []
    for version in sorted(v for v in catalog.versions() if v <= latest.version):
        manifest = catalog.read(version)
        if manifest.kind != "erasure" or manifest.request_id is None or manifest.request_id in sealed.get(version, ()):
            continue
        (buried if version < after else unsealed).append(manifest)
    return buried, unsealed


def buried_problem(manifest: EnsembleManifest) -> str:
    """What ``verify --log`` says of a buried erasure (``sealing_gaps``)."""
    return (
        f"version {manifest.version} was committed by erasure request {manifest.request_id}, whose receipt is not in "
        "the receipt log although later erasures' receipts are: a later writer committed over it before it was "
        f"sealed (buried). `expunge forget --request-id {manifest.request_id}` with its subjects seals it now"
    )
