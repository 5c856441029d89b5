"""The receipt log: hash-chained receipts, the walk that names the first broken link, concurrent appends."""

from __future__ import annotations

import json
import threading

import pytest

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.receipt_chain import append_receipt, chain_key, chained_receipts, walk_chain
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.store import ObjectStore
from tests.engine import job


def _receipt(request_id: str, status: str = "not_found") -> ErasureReceipt:
    return ErasureReceipt(request_id=request_id, status=status, subject_digests=(f"d-{request_id}",))  # type: ignore[arg-type]


@pytest.fixture
def log_of_four(tmp_path) -> ObjectStore:
    store = ObjectStore(str(tmp_path / "store"))
    for n in range(1, 5):
        append_receipt(store, _receipt(f"req-{n}"))
    return store


def test_each_receipt_holds_the_hash_of_the_one_before_and_the_walk_passes(log_of_four):
    store = log_of_four
    first, second = (ErasureReceipt.model_validate_json(store.get(chain_key(n))) for n in (1, 2))
    assert (first.chain_sequence, first.previous_receipt_sha256) == (1, None)
    assert second.chain_sequence == 2
    assert second.previous_receipt_sha256 is not None
    report = walk_chain(store)
    assert report.intact, report.broken
    assert report.receipts == 4
    # The by-id copy is the chained receipt, byte for byte.
    assert Catalog(store).read_request_receipt("req-3") == store.get(chain_key(3)).decode()


def test_deleting_a_receipt_from_the_middle_is_named(log_of_four):
    log_of_four.delete([chain_key(2), "receipts/requests/req-2.json"])
    report = walk_chain(log_of_four)
    assert not report.intact
    assert report.first_broken is not None
    assert report.first_broken.sequence == 2
    assert "missing" in report.first_broken.problem


def test_editing_a_receipt_is_named(log_of_four):
    store = log_of_four
    edited = json.loads(store.get(chain_key(2)))
    edited["subject_digests"] = ["someone-else"]
    store.put(chain_key(2), json.dumps(edited, indent=1).encode())
    report = walk_chain(store)
    assert report.first_broken is not None
    assert report.first_broken.sequence == 2  # its by-id copy still holds what was chained
    # ... and receipt 3 holds the hash receipt 2 no longer has.
    assert any(b.sequence == 3 and "#2 was edited" in b.problem for b in report.broken)


def test_editing_a_receipt_and_its_copy_alike_is_named_at_the_next_link(log_of_four):
    store = log_of_four
    edited = json.loads(store.get(chain_key(2)))
    edited["subject_digests"] = ["someone-else"]
    data = json.dumps(edited, indent=1).encode()
    store.put(chain_key(2), data)
    Catalog(store).write_request_receipt("req-2", data.decode())
    report = walk_chain(store)
    assert report.first_broken is not None
    assert report.first_broken.sequence == 3
    assert "#2 was edited" in report.first_broken.problem


def test_editing_the_newest_receipt_is_caught_by_its_by_id_copy(log_of_four):
    store = log_of_four
    edited = json.loads(store.get(chain_key(4)))
    edited["rows_removed"] = 99
    store.put(chain_key(4), json.dumps(edited, indent=1).encode())
    report = walk_chain(store)
    assert [b.sequence for b in report.broken] == [4]
    assert "edited" in report.broken[0].problem


def test_editing_only_the_by_id_copy_is_caught(log_of_four):
    store = log_of_four
    Catalog(store).write_request_receipt("req-1", store.get(chain_key(1)).decode().replace("not_found", "erased"))
    report = walk_chain(store)
    assert report.first_broken is not None
    assert report.first_broken.key == "receipts/requests/req-1.json"


def test_reordering_two_receipts_is_named(log_of_four):
    store = log_of_four
    two, three = store.get(chain_key(2)), store.get(chain_key(3))
    store.put(chain_key(2), three)
    store.put(chain_key(3), two)
    report = walk_chain(store)
    assert report.first_broken is not None
    assert report.first_broken.sequence == 2
    assert "reordered" in report.first_broken.problem


def test_cutting_off_the_newest_receipts_is_caught_by_the_mlflow_witness(log_of_four):
    store = log_of_four
    store.delete([chain_key(4), "receipts/requests/req-4.json"])
    assert walk_chain(store).intact  # the store alone cannot tell a log cut short ...
    report = walk_chain(store, witnessed_request_ids=[f"req-{n}" for n in range(1, 5)])
    assert not report.intact  # ... an independent record of the requests can
    assert "req-4" in report.broken[0].problem


def test_a_repeated_request_id_keeps_both_receipts_in_the_log(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    append_receipt(store, _receipt("ticket-7"))
    append_receipt(store, _receipt("ticket-7"))
    assert [n for n, _ in chained_receipts(store, "ticket-7")] == [1, 2]
    assert walk_chain(store).intact


def test_concurrent_writers_extend_one_unbroken_chain(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for k in range(3):
                append_receipt(ObjectStore(str(tmp_path / "store")), _receipt(f"w{n}-{k}"))
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = walk_chain(store)
    assert report.intact, report.broken
    assert report.receipts == 12


def test_erasures_and_misses_are_chained_and_a_per_version_receipt_edit_is_caught(tmp_path, hasher):
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=10, ratings_per_user=4, seed=2))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    missed = coordinator.forget(["nobody"], request_id="miss-1")
    erased = coordinator.forget(["user-3"], request_id="hit-1")
    assert (missed.chain_sequence, erased.chain_sequence) == (1, 2)
    store = coordinator.store
    assert walk_chain(store).intact
    version_receipt = json.loads(store.get("receipts/00000002.json"))
    version_receipt["deleted_objects"] = []  # hide what the purge deleted
    store.put("receipts/00000002.json", json.dumps(version_receipt).encode())
    report = walk_chain(store)
    assert [b.key for b in report.broken] == ["receipts/00000002.json"]


def test_the_newest_receipt_deleted_is_caught_by_its_copy(tmp_path):
    from expunge.orchestrator.evidence.receipt_chain import append_receipt, chain_key, walk_chain
    from expunge.orchestrator.receipts import ErasureReceipt
    from expunge.shards.store import ObjectStore

    store = ObjectStore(str(tmp_path / "store"))
    for n in range(1, 5):
        append_receipt(store, ErasureReceipt(request_id=f"req-{n}", status="not_found", subject_digests=("d" * 64,)))
    store.delete([chain_key(4)])
    report = walk_chain(store)
    assert not report.intact
    assert "#4" in (report.first_broken.problem if report.first_broken else "")


def test_a_receipt_chained_again_after_a_lost_answer_is_chained_once(tmp_path):
    """A create that went through but whose answer was cut is retried: it must not chain a copy."""
    store = ObjectStore(str(tmp_path / "store"))
    first = ErasureReceipt(request_id="req-a", status="erased", subject_digests=("d" * 64,), rows_removed=3)
    chained = append_receipt(store, first)
    again = append_receipt(store, first)  # what a retry after the lost answer does
    assert again == chained
    assert [s for s, _ in chained_receipts(store, "req-a")] == [1]
    other = append_receipt(store, first.model_copy(update={"request_id": "req-b"}))
    assert other.chain_sequence == 2
    assert walk_chain(store).intact
