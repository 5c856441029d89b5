"""Each stored subject's rows at the published version, for the service's per-request receipts (issue 22).

A request's receipt counts the rows its subjects had before the erasure (``policy.split_receipt``),
from the placement of the version the commit acted on. Reading the placement again before every
commit cost a store read and a decode on the commit's critical path; the service is the store's
only writer, so after its own erasure the next version's rows are this version's without the
erased subjects, known without a read. Anything else (an ingest joined, another version than the
one carried forward) reads the placement again.
"""

from __future__ import annotations

from collections.abc import Iterable

from expunge.orchestrator.coordinator import Coordinator

__all__ = ["PlacementRows"]


class PlacementRows:
    """Digest -> stored rows of one published version, carried over the service's own erasures."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._rows: dict[str, int] = {}

    def at(self, coordinator: Coordinator, version: int) -> dict[str, int]:
        """The rows of every subject the placement of ``version`` (the published one) holds.

        Raises:
            StorageCorruptError: the placement cannot be read (``Coordinator.placement_index``).
        """
        if self._version != version:
            self._rows = coordinator.placement_index().rows()
            self._version = version
        return self._rows

    def erased(self, before: int, after: int | None, digests: Iterable[str], joined_ingest: bool) -> None:
        """Version ``after`` was published from ``before`` by an erasure of ``digests`` (and nothing else).

        With an ingest in the same commit (rows added), or when ``before`` is not the version held,
        the next ``at`` reads the placement again.
        """
        if after is None or joined_ingest or self._version != before:
            self._version = None
            return
        gone = set(digests)
        self._rows = {d: n for d, n in self._rows.items() if d not in gone}
        self._version = after
