"""The journal's log: every write numbered and chained, even with writers racing; gaps and edits are found."""

from __future__ import annotations

import subprocess
import sys
import threading

from expunge.orchestrator.evidence.journal_log import JournalLog, walk_journal
from expunge.orchestrator.service.journal import Journal, JournalEntry
from expunge.shards.store import ObjectStore


def _entry(name: str) -> JournalEntry:
    return JournalEntry(request_id=name, subject_digests=("d",), received_at="2026-12-01T00:00:00+00:00")


def test_writers_racing_leave_one_numbered_chained_log(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))

    def write(worker: int) -> None:
        journal = Journal(store)
        for n in range(8):
            journal.accept(_entry(f"req-{worker}-{n}"))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    walk = walk_journal(store)
    assert walk.entries == 32
    assert walk.broken == ()
    assert walk.warnings == ()
    assert JournalLog(store).head()[0] == 32


def test_a_second_process_appending_is_followed_not_overwritten(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    Journal(store).accept(_entry("req-a"))
    # Another process appends (its own view of the head); this one conflicts on #2 and follows the log.
    probe = (
        "from expunge.orchestrator.evidence.journal_log import JournalLog\n"
        "from expunge.shards.store import ObjectStore\n"
        f"JournalLog(ObjectStore({str(tmp_path / 'store')!r})).record('write', 'journal/requests/x.json', b'{{}}')\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
    Journal(store).accept(_entry("req-b"))
    assert sorted(store.list_keys("journal/log")) == [f"journal/log/{n:08d}.json" for n in (1, 2, 3)]
    walk = walk_journal(store)
    # One chain: #3 links to the other process's #2 (whose object was never written: reported as such).
    assert walk.broken == ("journal/requests/x.json is in the journal log but missing from the journal: deleted",)
