"""A slice step's shortcuts (Adam's kernels called on lists gathered once, each slice encoded once) change no bit."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from expunge.orchestrator.evidence.exactness import same_bits
from expunge.shards import training
from expunge.shards.config import MFConfig, TrainingConfig
from expunge.shards.models import model_for
from expunge.shards.models.mf import MatrixFactorization, MFModule
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST
from expunge.shards.training import TrainedState, train_steps


def _slices() -> list[pa.Table]:
    tables = []
    for step in range(4):
        # Subjects of earlier slices come back in later ones: their rows keep the index of the table they grew in.
        subjects = [f"{step:02d}{u:062d}" for u in range(5)] + [f"{max(step - 1, 0):02d}{0:062d}"]
        rows = [(s, (i * 7 + n + step) % 30, 1.0 + (i + n) % 5) for n, s in enumerate(subjects) for i in range(6)]
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


def _config(kernel: str) -> TrainingConfig:
    return TrainingConfig(
        model=MFConfig(embedding_dim=4, num_items=30), epochs=4, batch_size=8, optimizer_kernel=kernel
    )


def _train(kernel: str, start_from: int | None = None) -> TrainedState:
    config = _config(kernel)
    model = model_for(config.model)
    saved: dict[int, bytes] = {}
    state = train_steps(model, config, 0, _slices(), None, saved.__setitem__)
    if start_from is None:
        return state
    restart = training.load_checkpoint(model, saved[start_from])
    return train_steps(model, config, 0, _slices(), restart, lambda _step, _data: None)


def _same_state(left: TrainedState, right: TrainedState) -> bool:
    weights = left.module.state_dict(), right.module.state_dict()
    assert left.optimizer_state is not None
    assert right.optimizer_state is not None
    adam = left.optimizer_state["state"], right.optimizer_state["state"]
    return (
        weights[0].keys() == weights[1].keys()
        and all(same_bits(weights[0][k], weights[1][k]) for k in weights[0])
        and adam[0].keys() == adam[1].keys()
        and all(same_bits(adam[0][i][k], adam[1][i][k]) for i in adam[0] for k in adam[0][i])
        and left.optimizer_state["param_groups"] == right.optimizer_state["param_groups"]
    )


def _checkpoint(state: TrainedState) -> bytes:
    return training.serialize_state(model_for(_config("fused").model), state, ["a", "b", "c", "d"])


@pytest.mark.parametrize("start_from", [None, 1])
def test_fused_adam_called_on_gathered_lists_is_adam_step_bit_for_bit(monkeypatch, start_from):
    fast = _train("fused", start_from)
    monkeypatch.setattr(training._FusedAdamStep, "of", classmethod(lambda cls, optimizer: None))
    monkeypatch.setattr(training._FusedAdamStep, "first", classmethod(lambda cls, optimizer: None))
    plain = _train("fused", start_from)  # Adam.step at every step, its own lazy state
    assert _same_state(fast, plain)
    assert _checkpoint(fast) == _checkpoint(plain)  # the state created before the kernel: same dtypes, same order


@pytest.mark.parametrize(("kernel", "adam_steps"), [("fused", 0), ("per_tensor", None)])
def test_fused_adam_step_never_runs_and_the_per_tensor_kernel_runs_every_step(monkeypatch, kernel, adam_steps):
    calls: list[int] = []
    step = training._step
    monkeypatch.setattr(training, "_step", lambda optimizer: calls.append(1) or step(optimizer))
    _train(kernel)
    # fused: each slice's grown tables get Adam's state before the first kernel call; per_tensor: Adam.step
    assert len(calls) == (adam_steps if adam_steps is not None else _steps(kernel))


def _steps(kernel: str) -> int:
    config = _config(kernel)
    rows = 0
    total = 0
    for table, epochs in zip(_slices(), training.allocate_epochs(config.epochs, len(_slices())), strict=True):
        rows += len(table)
        total += epochs * -(-rows // config.batch_size)
    return total


def test_the_per_tensor_kernel_keeps_adam_step():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], foreach=False)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
    training._step(optimizer)
    assert training._FusedAdamStep.of(optimizer) is None


def test_encoding_each_slice_once_is_encoding_the_prefix(monkeypatch):
    encoded: list[int] = []
    encode = MatrixFactorization.encode
    monkeypatch.setattr(
        MatrixFactorization, "encode", lambda self, m, rows: encoded.append(len(rows)) or encode(self, m, rows)
    )
    once = _train("fused", start_from=1)
    assert encoded == [len(t) for t in _slices()] + [len(t) for t in _slices()]  # from scratch, then the restart
    monkeypatch.setattr(MatrixFactorization, "encodes_rows_independently", False)
    assert _same_state(once, _train("fused", start_from=1))


def test_encode_gives_each_digest_its_user_index_and_minus_one_when_not_held():
    model = MatrixFactorization(MFConfig(embedding_dim=2, num_items=5))
    module = model.build(torch.Generator().manual_seed(0))
    assert isinstance(module, MFModule)
    module.add_users(["b", "a"], torch.zeros(2, 2))
    module.add_users(["c"], torch.zeros(1, 2))
    rows = pa.table({SUBJECT_DIGEST: ["c", "x", "a", "b", "a"], ITEM_ID: pa.array([0, 1, 2, 3, 4], pa.int64())})
    users = model.encode(module, rows)["users"]
    assert users.tolist() == [module.user_index.get(d, -1) for d in rows.column(SUBJECT_DIGEST).to_pylist()]
    assert users.tolist() == [2, -1, 1, 0, 1]
    assert users.dtype == torch.long


@pytest.mark.parametrize("kernel", ["fused", "per_tensor"])
def test_one_optimizer_carried_from_slice_to_slice_is_one_rebuilt_per_slice_bit_for_bit(monkeypatch, kernel):
    built: list[int] = []
    build = training._optimizer
    monkeypatch.setattr(training, "_optimizer", lambda *args: built.append(1) or build(*args))
    carried = _train(kernel, start_from=1)
    assert len(built) == 2  # once from scratch, once from the restart's checkpoint
    monkeypatch.setattr(training, "_carried", lambda optimizer, module: False)
    assert _same_state(carried, _train(kernel, start_from=1))
    assert len(built) == 2 + len(_slices()) + len(_slices()) - 2
