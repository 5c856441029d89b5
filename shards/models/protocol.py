"""The small protocol a model family implements to be trained and unlearned by Expunge."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import pyarrow as pa
import torch

__all__ = ["SisaModel"]


@runtime_checkable
class SisaModel(Protocol):
    """A model family: builds torch modules and turns canonical rows into tensors.

    Expunge owns the loop, the optimizer (Adam), seeding and checkpoints. A fixed-architecture
    model implements ``grow`` as a no-op, ``layout`` as ``{}`` and ``rebuild`` as ``build``
    with any generator. A model with per-subject parameters (a user embedding) adds them
    in ``grow`` for the rows of each new slice, so that a slice's subjects exist only from
    that slice's step on, and erasing them leaves earlier checkpoints valid.
    """

    #: ``rating``: ``predict`` returns one score per row; ``classification``: probabilities.
    task: Literal["rating", "classification"]
    #: True when the module holds per-subject parameters (then the subject's own shard answers).
    subject_specific: bool

    def build(self, generator: torch.Generator) -> torch.nn.Module:
        """A freshly initialised module; draw every random number from ``generator``."""
        ...

    def grow(self, module: torch.nn.Module, slice_rows: pa.Table, generator: torch.Generator) -> None:
        """Register parameters for subjects first seen in this slice (no-op for most models)."""
        ...

    def layout(self, module: torch.nn.Module) -> dict[str, Any]:
        """JSON-able description of grown structure, stored with each checkpoint."""
        ...

    def rebuild(self, layout: dict[str, Any]) -> torch.nn.Module:
        """An empty module with the structure ``layout`` describes (values are loaded after)."""
        ...

    def encode(self, module: torch.nn.Module, rows: pa.Table) -> dict[str, torch.Tensor]:
        """Canonical rows -> tensors (inputs and, when present, targets)."""
        ...

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def predict(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def knows(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool per row: does this module hold the row's subject (only for subject_specific)."""
        ...
