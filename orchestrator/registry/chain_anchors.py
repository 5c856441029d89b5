"""The receipt log's anchors in MLflow: each request's place in the chain, tagged on its runs, and read back.

A writer of the shard store can rewrite the receipt log and reseal its hash chain; it cannot
rewrite the tracking database alone. So every run of a request carries the receipt's sequence,
its sha256 and the previous receipt's sha256 (``expunge.chain.*`` tags), and ``verify --log``
compares the log with them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.errors import TrackingUnreachable
from expunge.orchestrator.registry.tracking import REQUEST_TAG, equals_filter, same_store

__all__ = ["PREVIOUS_TAG", "RECEIPT_TAG", "SEQUENCE_TAG", "ChainAnchor", "ChainAnchors"]

log = logging.getLogger(__name__)

SEQUENCE_TAG = "expunge.chain.sequence"
RECEIPT_TAG = "expunge.chain.receipt_sha256"
PREVIOUS_TAG = "expunge.chain.previous_sha256"
#: The value of ``PREVIOUS_TAG`` on the first receipt (MLflow tags cannot be null).
_NO_PREVIOUS = "none"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: MLflow error codes that mean the tracking store did not answer (a refused connection, a 5xx).
_UNREACHABLE = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
_PAGE = 1000


class ChainAnchor(BaseModel):
    """One run's anchor: the request's receipt at ``sequence`` in the store's receipt log (1 = first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: str
    request_id: str
    sequence: int
    receipt_sha256: str
    #: sha256 of the receipt before it; None for the first.
    previous_sha256: str | None


class ChainAnchors:
    """Writes and reads the ``expunge.chain.*`` tags on the runs of one store in one experiment.

    ``experiment_id`` None (the experiment does not exist): nothing to read, nothing tagged.
    """

    def __init__(self, client: Any, uri: str, experiment_id: str | None, store_uri: str) -> None:
        self.client = client  # mlflow.MlflowClient (untyped)
        self.uri = uri
        self.experiment_id = experiment_id
        self.store_uri = store_uri

    def anchor(self, request_id: str, sequence: int, receipt_sha256: str, previous_sha256: str | None) -> list[str]:
        """Tag every run of this store tagged ``expunge.request_id = request_id``; returns their run ids.

        An empty list when the request has no run (yet): the caller decides whether that is an
        error. Setting the same values again is harmless.

        Raises:
            ValueError: ``sequence`` below 1, or a digest that is not 64 lowercase hex digits.
            TrackingUnreachable: the tracking server or database does not answer.
        """
        if sequence < 1:
            raise ValueError(f"a receipt's sequence starts at 1, got {sequence}")
        for name, digest in (("receipt_sha256", receipt_sha256), ("previous_sha256", previous_sha256)):
            if digest is not None and not _SHA256.fullmatch(digest):
                raise ValueError(f"{name} must be 64 lowercase hex digits (a sha256), got {digest!r}")
        from mlflow.entities import RunTag
        from mlflow.utils.search_utils import SearchUtils

        clause = equals_filter(f"tags.`{REQUEST_TAG}`", request_id, SearchUtils.parse_search_filter)
        tags = [
            RunTag(SEQUENCE_TAG, str(sequence)),
            RunTag(RECEIPT_TAG, receipt_sha256),
            RunTag(PREVIOUS_TAG, previous_sha256 or _NO_PREVIOUS),
        ]
        tagged = []
        with _answering(self.uri):
            for run in self._runs(clause):
                if run.data.tags.get(REQUEST_TAG) != request_id:
                    continue  # client-side when no filter could be written for this id
                self.client.log_batch(run.info.run_id, tags=tags)
                tagged.append(str(run.info.run_id))
        log.info("request %s: receipt #%d anchored on %d MLflow run(s)", request_id, sequence, len(tagged))
        return tagged

    def read(self) -> list[ChainAnchor]:
        """Every anchor on a run of this store, ordered by sequence (then run id).

        A run whose ``expunge.chain.*`` tags are incomplete or malformed is left out, with a
        warning: a receipt without a valid anchor is what the caller reports.

        Raises:
            TrackingUnreachable: the tracking server or database does not answer.
        """
        with _answering(self.uri):
            runs = self._runs(f"tags.`{SEQUENCE_TAG}` LIKE '%'")
        anchors = []
        for run in runs:
            tags = run.data.tags
            sequence, receipt = tags.get(SEQUENCE_TAG, ""), tags.get(RECEIPT_TAG, "")
            previous = tags.get(PREVIOUS_TAG, "")
            well_formed = (
                sequence.isdigit()
                and _SHA256.fullmatch(receipt)
                and (previous == _NO_PREVIOUS or _SHA256.fullmatch(previous))
                and REQUEST_TAG in tags
            )
            if not well_formed:
                log.warning("run %s has malformed %s tags; left out", run.info.run_id, SEQUENCE_TAG.rsplit(".", 1)[0])
                continue
            anchors.append(
                ChainAnchor(
                    run_id=str(run.info.run_id),
                    request_id=tags[REQUEST_TAG],
                    sequence=int(sequence),
                    receipt_sha256=receipt,
                    previous_sha256=None if previous == _NO_PREVIOUS else previous,
                )
            )
        return sorted(anchors, key=lambda a: (a.sequence, a.run_id))

    def _runs(self, clause: str | None) -> list[Any]:
        """Runs of this store in the experiment matching ``clause`` (every run when None)."""
        if self.experiment_id is None:
            return []
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=clause or "", max_results=_PAGE, page_token=token
            )
            runs += [r for r in page if same_store(str(r.data.tags.get("expunge.storage", "")), self.store_uri)]
            token = page.token
            if not token:
                return runs


@contextmanager
def _answering(uri: str) -> Iterator[None]:
    """Turn MLflow's "no answer" (a refused connection, a 5xx, a database error) into ``TrackingUnreachable``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in _UNREACHABLE:
            raise
        raise TrackingUnreachable(uri, str(exc).splitlines()[0][:300]) from exc
    except OSError as exc:
        raise TrackingUnreachable(uri, f"{type(exc).__name__}: {exc}"[:300]) from exc
