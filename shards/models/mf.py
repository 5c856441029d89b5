"""Biased matrix factorisation for ratings, with per-slice user tables so erasure never edits a tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from expunge.shards.config import MFConfig
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST, numeric_values, string_array

__all__ = ["MFModule", "MatrixFactorization"]


class UserTable(nn.Module):
    """Bias and factors of the users first seen in one slice."""

    def __init__(self, factors: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(factors.shape[0]))
        self.factors = nn.Parameter(factors)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if keep_vars:
            return
        for name in ("bias", "factors"):  # a training module's tables share storage (``MFModule._flat``):
            value = destination[prefix + name]  # give the state its own, as pickling copies a whole storage
            if value.untyped_storage().nbytes() != value.nbytes:
                destination[prefix + name] = value.clone()


class MFModule(nn.Module):
    """rating = mu + b_item + b_user + <p_user, q_item>; users unknown to the module get zeros."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1))
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.item_factors = nn.Parameter(torch.zeros(num_items, dim))
        # One table per grown slice, appended in order so parameter order only ever grows at the end.
        self.user_tables = nn.ModuleList()
        self.user_slices: list[list[str]] = []  # subject digests, one sorted list per grown table
        self.user_index: dict[str, int] = {}
        # The tables' parameters in table order (the same Parameter objects, which loading a state
        # updates in place): a step reads them without nn.Module's attribute lookup, 2 per table.
        self._user_biases: list[torch.Tensor] = []
        self._user_factors: list[torch.Tensor] = []
        self._digests: pa.Array | None = None  # every held digest at its user index (``user_digests``)
        self._flat_users: tuple[torch.Tensor, torch.Tensor] | None = None  # see ``_flat``

    def add_users(self, digests: list[str], factors: torch.Tensor) -> None:
        offset = len(self.user_index)
        self.user_slices.append(list(digests))
        self.user_index.update({d: offset + i for i, d in enumerate(digests)})
        table = UserTable(factors)
        self.user_tables.append(table)
        self._user_biases.append(table.bias)
        self._user_factors.append(table.factors)
        self._digests = None
        self._flat_users = None  # built again, holding the new table too, by the next step that needs it

    def _flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every table's biases and factors as two leaf tensors, whose storage the tables' parameters view.

        A training step reads the users from these: the ``torch.cat`` of the tables it would read,
        value for value, without the concatenation, and with 2 gradient accumulations instead of 2 per
        table (about 50 us of a 0.7 ms step at 8 tables). After each backward, a hook gives each table's
        parameters their part of the leaves' gradient (views), as the concatenation's backward would,
        and clears the leaves': the optimizer steps the tables' parameters, in place, so the leaves see it.
        """
        if self._flat_users is None:
            sizes = [len(b) for b in self._user_biases]
            leaves = []
            for params in (self._user_biases, self._user_factors):
                leaf = torch.cat([p.detach() for p in params]).requires_grad_()
                for param, part in zip(params, torch.split(leaf.detach(), sizes), strict=True):
                    param.data = part
                leaf.register_post_accumulate_grad_hook(_spread_gradient(params, sizes))  # type: ignore[no-untyped-call]
                leaves.append(leaf)
            self._flat_users = (leaves[0], leaves[1])
        return self._flat_users

    def train(self, mode: bool = True) -> MFModule:
        if not mode and self._flat_users is not None:  # evaluation reads the tables: each its own storage again
            with torch.no_grad():
                for param in (*self._user_biases, *self._user_factors):
                    param.data = param.data.clone()
            self._flat_users = None
        return super().train(mode)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_flat_users"] = None  # leaves with hooks: rebuilt by the next training step
        return state

    def user_digests(self) -> pa.Array:
        """Every digest the module holds, position i holding the user of index i (built once per growth)."""
        if self._digests is None:
            self._digests = string_array([d for digests in self.user_slices for d in digests])
        return self._digests

    def terms(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ratings and the squared norm of the parameters each row touched.

        ``users``, ``items``: int64 of shape (rows,); a user index of -1 is a user the module does
        not hold (its terms are zeros). Returns two float32 tensors of shape (rows,).
        """
        item_vectors = self.item_factors[items]
        item_bias = self.item_bias
        score = self.mu + item_bias[items]
        norm = item_bias[items].pow(2) + item_vectors.pow(2).sum(dim=1)  # ``x ** 2``'s kernel, without its Python
        if not self._user_biases:
            return score, norm
        if torch.is_grad_enabled():
            bias, factors = self._flat()
        else:
            bias, factors = torch.cat(self._user_biases), torch.cat(self._user_factors)
        # Always so in training (a step's users are grown first): one reduction, not a comparison and one.
        every_user_known = not users.numel() or int(users.min()) >= 0
        safe = users if every_user_known else users.clamp(min=0)
        user_vectors = factors[safe]
        user_term = bias[safe] + (user_vectors * item_vectors).sum(dim=1)
        user_norm = bias[safe].pow(2) + user_vectors.pow(2).sum(dim=1)
        if every_user_known:
            # What the masked sums below give when every row is known, value for value, forward and
            # backward (the mask passes each gradient through unchanged), with 5 fewer kernels a step.
            return score + user_term, norm + user_norm
        known = users >= 0
        zeros = torch.zeros_like(user_term)
        return score + torch.where(known, user_term, zeros), norm + torch.where(known, user_norm, zeros)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.terms(users, items)[0]


def _spread_gradient(params: list[torch.Tensor], sizes: list[int]) -> Callable[[torch.Tensor], None]:
    """The hook of a flat leaf (``MFModule._flat``): its gradient, split, accumulated into ``params``' as autograd would."""

    def spread(leaf: torch.Tensor) -> None:
        assert leaf.grad is not None
        parts, leaf.grad = leaf.grad.split_with_sizes(sizes), None  # torch.split's kernel, without its Python
        for param, part in zip(params, parts, strict=True):
            if param.grad is None:
                param.grad = part
            else:
                with torch.no_grad():
                    param.grad += part

    return spread


def _or_minus_one(found: pa.ChunkedArray) -> np.ndarray:
    """``pc.index_in``'s int32 indexes as int64, -1 where null, read from the buffers.

    Not ``pc.fill_null(found, -1)``: pyarrow's first Python value turned into an Arrow one imports
    pandas (0.2 s of CPU in a shard process that has no other use for it).
    """
    parts = [np.zeros(0, np.int64)]
    for chunk in found.chunks:
        if len(chunk) == 0:
            continue
        validity, values = chunk.buffers()
        indexes = np.frombuffer(values, np.int32, count=len(chunk), offset=chunk.offset * 4).astype(np.int64)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
            indexes[~bits[chunk.offset : chunk.offset + len(chunk)].astype(bool)] = -1
        parts.append(indexes)
    return np.concatenate(parts)


class MatrixFactorization:
    """The recommender model family (see ``SisaModel``)."""

    task: Literal["rating", "classification"] = "rating"
    subject_specific = True
    #: ``encode`` of rows concatenated is ``encode`` of each part concatenated, and a row's encoding
    #: never changes once its user is grown (indexes only append): ``train_steps`` encodes each slice once.
    encodes_rows_independently = True

    def __init__(self, config: MFConfig) -> None:
        if config.num_items < 1:
            raise ValueError("MatrixFactorization needs num_items >= 1 (resolve it from the data first)")
        self.config = config

    def build(self, generator: torch.Generator) -> nn.Module:
        module = MFModule(self.config.num_items, self.config.embedding_dim)
        with torch.no_grad():
            module.item_factors.normal_(0.0, self.config.init_std, generator=generator)
        return module

    def grow(self, module: nn.Module, slice_rows: pa.Table, generator: torch.Generator) -> None:
        assert isinstance(module, MFModule)
        held = module.user_index  # the slice's distinct digests not yet held, sorted (one Python string each)
        digests = sorted(d for d in pc.unique(slice_rows.column(SUBJECT_DIGEST)).to_pylist() if d not in held)
        if not digests:
            return
        factors = torch.empty(len(digests), self.config.embedding_dim)
        factors.normal_(0.0, self.config.init_std, generator=generator)
        module.add_users(digests, factors)

    def layout(self, module: nn.Module) -> dict[str, Any]:
        assert isinstance(module, MFModule)
        return {"user_slices": module.user_slices}

    def rebuild(self, layout: dict[str, Any]) -> nn.Module:
        module = MFModule(self.config.num_items, self.config.embedding_dim)
        for digests in layout.get("user_slices", []):
            module.add_users(digests, torch.zeros(len(digests), self.config.embedding_dim))
        return module

    def encode(self, module: nn.Module, rows: pa.Table) -> dict[str, torch.Tensor]:
        assert isinstance(module, MFModule)
        # Each row's user index (-1: not held), as ``user_index`` maps it, without a Python string per row.
        found = pc.index_in(rows.column(SUBJECT_DIGEST), value_set=module.user_digests())
        users = torch.from_numpy(_or_minus_one(found))
        items_np = numeric_values(rows.column(ITEM_ID), np.int64)
        if len(items_np) and (items_np.min() < 0 or items_np.max() >= self.config.num_items):
            raise ValueError(
                f"item ids must lie in [0, {self.config.num_items}); found "
                f"[{items_np.min()}, {items_np.max()}]. Raise training.model.num_items."
            )
        batch = {"users": users, "items": torch.from_numpy(items_np)}
        if RATING in rows.column_names:
            ratings = numeric_values(pc.cast(rows.column(RATING), pa.float32()), np.float32)
            batch["target"] = torch.from_numpy(ratings)
        return batch

    def loss(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert isinstance(module, MFModule)
        prediction, norm = module.terms(batch["users"], batch["items"])
        return torch.mean((prediction - batch["target"]).pow(2) + self.config.l2 * norm)

    def predict(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module(batch["users"], batch["items"])

    def knows(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["users"] >= 0
