"""Driver run as a subprocess on a two-node cluster (``RAY_ADDRESS``): train 4 shards on S3, forget one subject.

Prints one JSON line: the node id of each shard actor, the receipt's status and whether the
erased ensemble equals one trained from scratch without the subject (bitwise).

    python -m tests.cluster._two_node_driver s3://bucket/prefix
"""

from __future__ import annotations

import json
import sys

import ray
from ray.util.state import get_actor

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, ray_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import job, subject_in_slice, without


def main(root: str) -> None:
    ray.init(log_to_driver=False)  # the cluster named by RAY_ADDRESS
    hasher = SubjectHasher.from_env("EXPUNGE_SUBJECT_KEY")  # not tests.conftest: it picks another S3 port
    rows = synthetic_ratings(SyntheticRatingsConfig(users=48, items=30, ratings_per_user=6, seed=5))
    config = job(shards=4, slices=2)
    coordinator = Coordinator(f"{root}/store", hasher, pool_factory=ray_pool)
    coordinator.train(rows, config)
    actors = coordinator.pool.actors  # type: ignore[attr-defined]
    nodes = {shard: get_actor(handle._actor_id.hex()).node_id for shard, handle in actors.items()}

    subject = subject_in_slice(coordinator, hasher, rows.column(SUBJECT_ID).to_pylist(), 1)
    receipt = coordinator.forget([subject])
    assert coordinator.manifest is not None
    reference = Coordinator(f"{root}/reference", hasher, pool_factory=ray_pool)
    reference.train(
        without(rows, [subject]), config, placement=coordinator.placement_index(), model=coordinator.manifest.model
    )
    equal = constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors())
    reference.close()
    coordinator.close()
    print(json.dumps({"nodes": nodes, "status": receipt.status, "exact": all(equal.values()), "shards": len(equal)}))


if __name__ == "__main__":
    main(sys.argv[1])
