"""An epoch's batches cut from rows gathered once in shuffled order are the batches gathered one by one, bit for bit."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from expunge.orchestrator.evidence.exactness import same_bits
from expunge.shards import training
from expunge.shards.config import MFConfig, TrainingConfig
from expunge.shards.models import model_for
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST
from expunge.shards.training import TrainedState, train_steps


def _slices() -> list[pa.Table]:
    tables = []
    for step in range(3):
        subjects = [f"{step:02d}{u:062d}" for u in range(7)]
        rows = [(s, (i * 5 + n + step) % 40, 1.0 + (i + n) % 5) for n, s in enumerate(subjects) for i in range(5)]
        digests, items, ratings = zip(*rows, strict=True)
        tables.append(
            pa.table(
                {
                    SUBJECT_DIGEST: list(digests),
                    ITEM_ID: pa.array(items, pa.int64()),
                    RATING: pa.array(ratings, pa.float32()),
                }
            )
        )
    return tables


def _train(restart_at: int | None = None) -> tuple[TrainedState, dict[int, bytes]]:
    # 35 rows a slice, batches of 8: every epoch ends with a short batch.
    config = TrainingConfig(model=MFConfig(embedding_dim=4, num_items=40), epochs=6, batch_size=8)
    model = model_for(config.model)
    saved: dict[int, bytes] = {}
    state = train_steps(model, config, 0, _slices(), None, saved.__setitem__)
    if restart_at is not None:
        start = training.load_checkpoint(model, saved[restart_at])
        state = train_steps(model, config, 0, _slices(), start, saved.__setitem__)
    return state, saved


def _tensors(state: TrainedState) -> list[torch.Tensor]:
    assert state.optimizer_state is not None
    adam = state.optimizer_state["state"]
    return [*state.module.state_dict().values(), *(adam[i][k] for i in sorted(adam) for k in sorted(adam[i]))]


@pytest.mark.parametrize(("rows", "size"), [(35, 8), (32, 8), (5, 8), (1, 1), (0, 8)])
def test_batches_are_the_permuted_rows_in_order_whichever_way_they_are_gathered(monkeypatch, rows, size):
    generator = torch.Generator().manual_seed(3)
    data = {"users": torch.arange(rows) * 3, "features": torch.randn(rows, 4, generator=generator)}
    permutation = torch.randperm(rows, generator=generator)
    once = list(training._batches(data, permutation, size))
    monkeypatch.setattr(training, "_EPOCH_GATHER_BYTES", 0)  # every batch gathered on its own
    each = list(training._batches(data, permutation, size))
    assert len(once) == len(each) == -(-rows // size)
    for number, (left, right) in enumerate(zip(once, each, strict=True)):
        index = permutation[number * size : (number + 1) * size]
        for name, tensor in data.items():
            assert same_bits(left[name], tensor[index])
            assert same_bits(right[name], tensor[index])


@pytest.mark.parametrize("restart_at", [None, 0])
def test_training_on_batches_gathered_once_an_epoch_is_training_batch_by_batch(monkeypatch, restart_at):
    once, once_saved = _train(restart_at)
    monkeypatch.setattr(training, "_EPOCH_GATHER_BYTES", 0)
    each, each_saved = _train(restart_at)
    assert all(same_bits(a, b) for a, b in zip(_tensors(once), _tensors(each), strict=True))
    assert once_saved == each_saved  # every checkpoint, byte for byte
