"""CPU fitting of shard actors: a pure decision, tested without Ray."""

import pytest

from expunge.orchestrator.pool import fit_cpus_per_actor


@pytest.mark.parametrize(
    ("wanted", "cluster", "actors", "expected"),
    [
        (1.0, 16.0, 4, 1.0),  # room for everyone: what was asked
        (1.0, 2.0, 4, 0.5),  # 4 actors, 2 free CPUs: lowered to fit
        (1.0, 2.0, 3, 0.666),  # rounded down, never over-subscribed
        (0.25, 2.0, 64, 0.031),
        (1.0, 0.0, 4, 0.0),  # no CPUs at all: nothing reserved rather than waiting forever
        (0.0, 8.0, 4, 0.0),
    ],
)
def test_actors_fit_the_cluster(wanted, cluster, actors, expected):
    fitted = fit_cpus_per_actor(wanted, cluster, actors)
    assert fitted == pytest.approx(expected)
    assert fitted * actors <= cluster + 1e-9
