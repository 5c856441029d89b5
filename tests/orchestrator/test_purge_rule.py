"""The pure purge rule: what physical erasure deletes after a commit, and what it must keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from expunge.orchestrator.store_purge import select_purgeable
from expunge.shards.store import ObjectVersion

COMMIT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
BEFORE, AFTER = COMMIT - timedelta(seconds=5), COMMIT + timedelta(seconds=5)


def _v(key, modified, version_id=None):
    return ObjectVersion(key, version_id, False, modified)


@pytest.mark.parametrize(
    ("modified", "current", "superseded", "purged"),
    [
        (BEFORE, True, False, False),  # referenced now: never
        (AFTER, True, True, False),
        (BEFORE, False, True, True),  # superseded data
        (AFTER, False, True, True),  # superseded even if rewritten in the same second as the commit
        (COMMIT, False, True, True),
        (BEFORE, False, False, True),  # debris of a crashed writer
        (AFTER, False, False, False),  # a live writer's fresh object
        (COMMIT, False, False, False),
    ],
)
def test_rule(modified, current, superseded, purged):
    key = "shards/0000/slices/0001-abc.parquet"
    chosen = select_purgeable([_v(key, modified)], {key} if current else set(), {key} if superseded else set(), COMMIT)
    assert chosen == ([key] if purged else [])


def test_the_newest_version_of_a_key_decides_its_age():
    key = "shards/0000/checkpoints/0000-abc.pt"
    versions = [_v(key, BEFORE, "1"), _v(key, AFTER, "2")]
    assert select_purgeable(versions, set(), set(), COMMIT) == []
    assert select_purgeable(list(reversed(versions)), set(), set(), COMMIT) == []
