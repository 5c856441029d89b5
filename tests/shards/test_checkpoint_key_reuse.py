"""A training from scratch over a lineage the store already holds keeps the stored checkpoint bytes of the same state."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from expunge.shards import checkpoint_format
from expunge.shards.config import ItemStatsConfig, TrainingConfig
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard

CONFIG = ItemStatsConfig(num_items=8, factors=2, neighbours=3)
TRAINING = TrainingConfig(model=CONFIG, epochs=1, batch_size=32)


def _slices() -> list[pa.Table]:
    tables = []
    for k in range(2):
        cells = [(f"u{k}{j}", (3 * j + i + k) % 8, 1.0 + (i + j) % 5) for j in range(4) for i in range(3)]
        tables.append(
            pa.table(
                {
                    RECORD_ID: [f"r{k}{n:03d}" for n in range(len(cells))],
                    SUBJECT_ID: [s for s, _, _ in cells],
                    SUBJECT_DIGEST: ["d" + s for s, _, _ in cells],
                    ITEM_ID: pa.array([i for _, i, _ in cells], pa.int64()),
                    RATING: pa.array([r for _, _, r in cells], pa.float32()),
                }
            )
        )
    return tables


def test_training_again_over_a_stored_lineage_keeps_the_bytes_its_published_version_bound(tmp_path, monkeypatch):
    def format_3(payload):  # what encode_checkpoint wrote for these sums before format 5
        raise checkpoint_format._NotRaw

    monkeypatch.setattr(checkpoint_format, "_encode_packed", format_3)
    first = Shard(0, str(tmp_path), TRAINING, CONFIG)
    first.train(_slices())
    (bound,) = first.manifest.checkpoints
    assert first.store.get(bound.key).startswith(b"EXPUNGE-CKPT-3\n")
    monkeypatch.undo()  # the code with format 5 trains the same rows into the same store (same keys)
    again = Shard(0, str(tmp_path), TRAINING, CONFIG)
    again.train(_slices())
    (rewritten,) = again.manifest.checkpoints
    assert rewritten.key == bound.key
    assert hashlib.sha256(again.store.get(bound.key)).hexdigest() == bound.sha256 == rewritten.sha256


def test_a_damaged_checkpoint_under_the_key_is_replaced(tmp_path):
    first = Shard(0, str(tmp_path), TRAINING, CONFIG)
    first.train(_slices())
    (entry,) = first.manifest.checkpoints
    first.store.put(entry.key, b"EXPUNGE-CKPT-5\n damaged")
    again = Shard(0, str(tmp_path), TRAINING, CONFIG)
    again.train(_slices())
    assert (
        hashlib.sha256(again.store.get(entry.key)).hexdigest() == entry.sha256 == again.manifest.checkpoints[0].sha256
    )


def test_a_new_lineage_is_written_in_format_5(tmp_path):
    shard = Shard(0, str(tmp_path), TRAINING, CONFIG)
    shard.train(_slices())
    assert shard.store.get(shard.manifest.checkpoints[0].key).startswith(b"EXPUNGE-CKPT-5\n")
