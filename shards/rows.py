"""Canonical row columns shared by loaders, placement and shards."""

from __future__ import annotations

__all__ = [
    "FEATURES",
    "ITEM_ID",
    "LABEL",
    "RATING",
    "RECORD_ID",
    "SUBJECT_DIGEST",
    "SUBJECT_ID",
]

RECORD_ID = "record_id"  # unique per row, string
SUBJECT_ID = "subject_id"  # the person a GDPR request names, string; shard data only
SUBJECT_DIGEST = "subject_digest"  # HMAC of subject_id, written at placement time
ITEM_ID = "item_id"  # ratings: catalogue item index, int64
RATING = "rating"  # ratings: target, float32
FEATURES = "features"  # tabular: list<float32> of fixed width
LABEL = "label"  # tabular: class index, int64
