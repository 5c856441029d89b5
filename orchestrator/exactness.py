"""Bit-for-bit comparison of constituents: the evidence behind "exact" unlearning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["constituents_equal", "tensors_equal"]


def tensors_equal(left: Any, right: Any) -> bool:
    """Deep equality where every tensor must be ``torch.equal`` (same shape, dtype and bits)."""
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return (
            isinstance(left, torch.Tensor)
            and isinstance(right, torch.Tensor)
            and left.dtype == right.dtype
            and torch.equal(left, right)
        )
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(tensors_equal(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(tensors_equal(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def constituents_equal(left: Mapping[int, Any], right: Mapping[int, Any]) -> dict[int, bool]:
    """Per shard: are all weights and optimizer state bit-identical?"""
    return {s: s in right and tensors_equal(left[s], right[s]) for s in sorted(left)}
