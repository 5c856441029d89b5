"""Bit-for-bit comparison of constituents: the evidence behind "exact" unlearning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["constituents_equal", "same_bits", "tensors_equal"]


def same_bits(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Same dtype, shape and bits: unlike ``torch.equal``, -0.0 differs from 0.0 and NaN equals its own bits."""
    if left.dtype != right.dtype or left.shape != right.shape:
        return False
    if left.is_floating_point() or left.is_complex():
        return bytes(left.detach().cpu().contiguous().numpy().tobytes()) == bytes(
            right.detach().cpu().contiguous().numpy().tobytes()
        )
    return bool(torch.equal(left, right))


def tensors_equal(left: Any, right: Any) -> bool:
    """Deep equality where every tensor must have the same dtype, shape and bits (``same_bits``)."""
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor) and same_bits(left, right)
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(tensors_equal(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(tensors_equal(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def constituents_equal(left: Mapping[int, Any], right: Mapping[int, Any]) -> dict[int, bool]:
    """Per shard: are all weights and optimizer state bit-identical?"""
    return {s: s in right and tensors_equal(left[s], right[s]) for s in sorted(left)}
