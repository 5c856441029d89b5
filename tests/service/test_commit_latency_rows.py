"""Each receipt's rows come from the placement the commit acted on, carried over the service's own erasures
without a read (issue 22), and read again after an ingest changed them."""

from __future__ import annotations

import pyarrow.compute as pc

from expunge.orchestrator.coordinator import Coordinator
from expunge.shards.rows import SUBJECT_ID
from tests.service.test_service import ROWS, SUBJECTS, _service
from tests.service.test_service_ingest import _batch, _rows


def _count(subject: str) -> int:
    return int(pc.sum(pc.equal(ROWS.column(SUBJECT_ID), subject)).as_py())


def test_receipts_count_each_subjects_rows_and_the_placement_is_read_once_per_foreign_change(
    tmp_path, hasher, monkeypatch
):
    reads: list[int] = []
    original = Coordinator.placement_index

    def counted(self):  # type: ignore[no-untyped-def]
        reads.append(1)
        return original(self)

    monkeypatch.setattr(Coordinator, "placement_index", counted)
    service = _service(tmp_path, hasher, window_ms=0)
    try:
        first = service.forget([SUBJECTS[0]], timeout=120)
        assert first.rows_removed == _count(SUBJECTS[0])
        reads.clear()
        for subject in SUBJECTS[1:4]:
            receipt = service.forget([subject], timeout=120)
            assert receipt.rows_removed == _count(subject)
        assert service.forget(["nobody-ever-stored"], timeout=120).rows_removed == 0
        assert reads == []  # carried over this service's own erasures
        # An ingest adds rows to a known subject: the next receipt counts them (the placement is read again).
        known = SUBJECTS[5]
        service.ingest(_batch(_rows(known, range(17, 20), "more")), request_id="add-0001")
        receipt = service.forget([known], timeout=120)
        assert receipt.rows_removed == _count(known) + 3
        assert reads  # read again after the ingest's version
    finally:
        service.close()
