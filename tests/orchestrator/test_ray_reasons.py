"""Why a CLI job starts Ray: said in its progress line, in words a user can act on (pure rules, no Ray)."""

from __future__ import annotations

from expunge.orchestrator.config import ErasureConfig
from expunge.orchestrator.pool import InProcessRule
from expunge.orchestrator.session import why_ray_at_once


def test_each_reason_to_start_ray_at_once_is_named_and_none_when_shards_may_run_here():
    assert why_ray_at_once(ErasureConfig(), on_cluster=False) == ""
    assert "in_process_max_shards is 0" in why_ray_at_once(ErasureConfig(in_process_max_shards=0), False)
    assert "RAY_ADDRESS" in why_ray_at_once(ErasureConfig(), on_cluster=True)
    assert "audit" in why_ray_at_once(ErasureConfig(), on_cluster=False, audited=True)


def test_a_cpu_bound_refusal_shows_the_cost_it_compared():
    # A training of 0.04 CPU s against a bound of 0 read "took 0.0 CPU s, more than ... (0)" before.
    in_process, why = InProcessRule(max_shards=8, max_cpu_s=0.0, shard_cpu_s=0.04).decide(1)
    assert not in_process
    assert "took 0.04 CPU s" in why
