from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from expunge.shards.schedule import allocate_epochs, derive_seed


@given(st.integers(1, 200), st.integers(1, 100))
def test_every_slice_step_gets_at_least_one_epoch(epochs, slices):
    allocation = allocate_epochs(epochs, slices)
    assert len(allocation) == slices
    assert min(allocation) >= 1


@pytest.mark.parametrize(("epochs", "slices", "expected"), [(8, 1, 8), (8, 4, 3), (10, 9, 2), (1, 50, 1)])
def test_budget_matches_full_shard_epochs(epochs, slices, expected):
    # step j sees j/R of the shard, so a uniform e costs e(R+1)/2 full-shard epochs
    assert allocate_epochs(epochs, slices) == (expected,) * slices


def test_seeds_differ_by_every_part_and_are_stable():
    seeds = {derive_seed(0, shard, step, epoch) for shard in range(3) for step in range(3) for epoch in range(3)}
    assert len(seeds) == 27
    assert derive_seed(5, 1, 2) == derive_seed(5, 1, 2)
    assert all(0 <= s < 2**63 for s in seeds)
