"""Fixtures: a private ``ray start`` cluster (one head, or head + worker) per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster._cluster import RayTestCluster, start_cluster


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayTestCluster]:
    """One head node (2 CPUs, custom resource ``node_head``) with token auth, stopped after the module.

    Use ``ray_head.dashboard_url`` for ``ray job submit --address``, ``ray_head.address`` (also
    ``RAY_ADDRESS`` in ``ray_head.env``) for a driver, and ``env=ray_head.env`` on every client
    subprocess: it holds the cluster's token and the venv first on PATH.
    """
    cluster = start_cluster(num_cpus=2, resources={"node_head": 1})
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def ray_two_nodes() -> Iterator[RayTestCluster]:
    """A head (1 CPU, resource ``node_head``) and a worker node (1 CPU, resource ``node_worker``).

    Both nodes inherit this process's environment as the session's conftest left it, so actors
    and job drivers reach the moto S3 server (``AWS_ENDPOINT_URL_S3``, dummy credentials): use the
    ``s3_bucket`` fixture for a store every node shares (a local folder is refused on 2 nodes).
    Pin work to a node with ``resources={"node_head": 0.01}`` / ``{"node_worker": 0.01}``.
    Clients: ``subprocess.run([...], env=ray_two_nodes.env)`` (``RAY_ADDRESS`` set, token set),
    or ``ray job submit --address ray_two_nodes.dashboard_url``. ``alive_nodes()`` lists the nodes.
    Reuse it from another test module by importing it into that module's conftest or by moving
    it to ``tests/conftest.py``; it stops only its own processes.
    """
    cluster = start_cluster(num_cpus=1, resources={"node_head": 1})
    try:
        cluster.add_worker(num_cpus=1, resources={"node_worker": 1})
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
