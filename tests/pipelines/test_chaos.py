"""`expunge chaos`: the seeded fault schedule, and a small campaign end to end (slow)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from expunge.pipelines.chaos import KINDS, plan_faults


def test_the_schedule_is_seeded_and_every_kind_comes_in_a_long_enough_run():
    plan = plan_faults(11, 40)
    assert plan == plan_faults(11, 40)
    assert plan != plan_faults(12, 40)
    assert set(Counter(plan.values())) == set(KINDS)  # 2 * len(KINDS) requests or more: every kind
    assert min(plan) >= 1  # the first request goes through before any fault
    assert all(index < 40 for index in plan)
    assert len(set(plan_faults(5, 12).values())) >= 5  # the slow test's run: at least five kinds


def test_an_output_that_is_a_file_is_bad_input(tmp_path):
    from expunge.pipelines.cli import main

    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["chaos", "--requests", "2", "--output", str(tmp_path / "afile")])
    assert exited.value.code == 2


@pytest.mark.slow
def test_a_small_campaign_finds_no_violation(tmp_path):
    from expunge.pipelines.chaos import run_campaign

    summary = run_campaign(requests=12, seed=5, output=tmp_path / "out", shards=3, slices=2, settle_s=600)
    assert summary.violations == []
    assert (summary.lost, summary.stuck, summary.resurrected, summary.wrong_receipts, summary.loadable_purged) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert summary.scan_clean
    assert summary.exact_shards == summary.shards == 3
    assert summary.acknowledged == 12
    assert summary.writers_admitted == 0
    assert len(summary.faults_injected) >= 5
    assert summary.ingests >= 1  # seed 5's schedule sends an ingest through the SDK mid-campaign
    assert summary.ingested_rows_right == summary.ingested_rows > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["acknowledged"] == 12
