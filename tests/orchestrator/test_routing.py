from __future__ import annotations

import pytest

from expunge.orchestrator.erasure.routing import route
from expunge.orchestrator.training.placement import Cell

INDEX = {
    "alice": [Cell(0, 2)],
    "bob": [Cell(0, 1)],
    "carol": [Cell(3, 0)],
    "dave": [Cell(1, 3), Cell(2, 1)],  # row-level placement: one subject over two shards
}


@pytest.mark.parametrize(
    ("subjects", "expected"),
    [
        (["alice"], {0: 2}),
        (["alice", "bob"], {0: 1}),  # same shard: one retrain from the earliest slice
        (["bob", "alice"], {0: 1}),
        (["carol", "alice"], {0: 2, 3: 0}),
        (["dave"], {1: 3, 2: 1}),
        (["alice", "alice"], {0: 2}),
    ],
)
def test_routes_to_each_affected_shard_from_its_first_affected_slice(subjects, expected):
    assert route(subjects, INDEX).first_affected_slice == expected


def test_unknown_subjects_are_reported_not_routed():
    plan = route(["zed", "carol"], INDEX)
    assert plan.not_found == ("zed",)
    assert plan.found == ("carol",)
    assert plan.affected_shards == [3]


def test_no_known_subject_means_no_shard():
    plan = route(["zed"], INDEX)
    assert plan.first_affected_slice == {}
    assert plan.affected_shards == []
