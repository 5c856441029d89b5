"""A slice step's backward called on the engine directly accumulates the gradients ``loss.backward()`` does, bit for bit."""

from __future__ import annotations

import pytest
import torch

from expunge.orchestrator.evidence.exactness import same_bits
from expunge.shards import training
from expunge.shards.config import MFConfig
from expunge.shards.models.mf import MatrixFactorization


def _module_and_batch() -> tuple[MatrixFactorization, torch.nn.Module, dict[str, torch.Tensor]]:
    model = MatrixFactorization(MFConfig(embedding_dim=4, num_items=30, l2=0.1))
    generator = torch.Generator().manual_seed(5)
    module = model.build(generator)
    module.add_users([f"{u:064d}" for u in range(6)], torch.randn(6, 4, generator=generator))  # type: ignore[operator]
    module.add_users([f"{u + 6:064d}" for u in range(3)], torch.randn(3, 4, generator=generator))  # type: ignore[operator]
    batch = {
        "users": torch.randint(0, 9, (40,), generator=generator),
        "items": torch.randint(0, 30, (40,), generator=generator),
        "target": torch.rand(40, generator=generator) * 5,
    }
    return model, module, batch


def _gradients(call) -> list[torch.Tensor]:
    model, module, batch = _module_and_batch()
    module.train()
    for _ in range(2):  # the second accumulates into the first's gradients
        call(model.loss(module, batch))
    return [p.grad for p in module.parameters()]


def test_the_engine_call_accumulates_what_backward_accumulates_bit_for_bit():
    direct = _gradients(training._backward)
    plain = _gradients(lambda loss: loss.backward())
    assert len(direct) == len(plain) == 7
    assert all(a is not None and same_bits(a, b) for a, b in zip(direct, plain, strict=True))


def test_a_loss_backward_refuses_is_refused_as_backward_refuses_it():
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        training._backward(torch.ones(3, requires_grad=True) * 2)
    with pytest.raises(RuntimeError, match="does not require grad"):
        training._backward(torch.ones(()))
    with pytest.raises(RuntimeError, match="real scalar outputs"):
        training._backward(torch.ones((), dtype=torch.complex64, requires_grad=True) * 2)


def test_a_tensor_subclass_loss_takes_its_own_backward():
    calls = []

    class Logged(torch.Tensor):
        def backward(self, *args, **kwargs):
            calls.append(self)
            return super().backward(*args, **kwargs)

    leaf = torch.ones(3, requires_grad=True)
    training._backward((leaf * 2).sum().as_subclass(Logged))
    assert len(calls) == 1
    assert same_bits(leaf.grad, torch.full((3,), 2.0))
