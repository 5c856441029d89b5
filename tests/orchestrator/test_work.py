"""Slice arithmetic of SISA work: monolith, full retrain and erasure, against hand counts."""

from __future__ import annotations

import pytest

from expunge.orchestrator.training.work import erasure_work, ideal_speedup, monolith_ideal_speedup, sisa_training_work


@pytest.mark.parametrize(
    ("shards", "slices", "first", "expected"),
    [
        (1, 1, [0], 1.0),  # one shard, one slice: an erasure is a full retrain
        (4, 1, [0], 4.0),  # only one of four shards retrains
        (1, 4, [3], 2.5),  # last slice: redo step 4 (work 4) of 1+2+3+4
        (1, 4, [0], 1.0),
        (2, 2, [0, 1], 2 * 3 / 2.5),
    ],
)
def test_ideal_speedup_follows_the_slice_arithmetic(shards, slices, first, expected):
    assert ideal_speedup(shards, slices, first) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("shards", "slices", "epochs", "first", "expected"),
    [
        (1, 1, 20, [0], 1.0),  # the monolith erasing from its own data: a full retrain
        (4, 1, 20, [0], 4.0),  # a quarter of the rows, same epochs
        # e = round(40/5) = 8 epochs per step; from slice 3 only step 4 (all of a shard): 8 * 1/4
        (4, 4, 20, [3], 20 / (8 * 4 / 4 / 4)),
        # uniform first slices: mean of 10, 9, 7, 4 slice-epochs of one of four shards
        (4, 4, 20, [0, 1, 2, 3], 20 / (8 * 7.5 / 16)),
        # e = round(40/9) = 4; mean of 36, 35, ..., 8 = 25.5
        (8, 8, 20, list(range(8)), 20 / (4 * 25.5 / 64)),
        # the floor of one epoch per step: E=1, R=4 still runs 1 epoch on each step
        (1, 4, 1, [0], 1 / 2.5),
    ],
)
def test_monolith_ideal_speedup_counts_row_epochs(shards, slices, epochs, first, expected):
    assert monolith_ideal_speedup(shards, slices, epochs, first) == pytest.approx(expected)


def test_monolith_ideal_is_about_the_issue_figures_with_uniform_first_slices():
    assert monolith_ideal_speedup(4, 4, 20, range(4)) == pytest.approx(5.33, abs=0.01)
    assert monolith_ideal_speedup(8, 8, 20, range(8)) == pytest.approx(12.55, abs=0.01)


@pytest.mark.parametrize(("slices", "epochs", "expected"), [(1, 20, 20.0), (4, 20, 20.0), (8, 20, 18.0), (4, 1, 2.5)])
def test_full_sisa_training_work_is_the_epoch_budget_up_to_rounding(slices, epochs, expected):
    assert sisa_training_work(slices, epochs) == pytest.approx(expected)


def test_erasure_work_of_every_first_slice_adds_up_like_a_full_retrain_of_one_shard():
    # from slice 0 a shard redoes all its steps: 1/S of the full SISA work
    assert erasure_work(4, 4, 20, 0) == pytest.approx(sisa_training_work(4, 20) / 4)


@pytest.mark.parametrize(
    ("shards", "slices", "first"), [(0, 4, [0]), (4, 0, [0]), (4, 4, []), (4, 4, [4]), (4, 4, [-1])]
)
def test_impossible_arithmetic_is_refused(shards, slices, first):
    with pytest.raises(ValueError, match=r"must be >= 1|at least one|outside"):
        monolith_ideal_speedup(shards, slices, 20, first)
    with pytest.raises(ValueError, match=r"must be >= 1|at least one|outside"):
        ideal_speedup(shards, slices, first)
