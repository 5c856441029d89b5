"""An MF step's Python shortcuts (one reduction for known users, the split kernel, the grad switch) keep behaviour."""

from __future__ import annotations

import pytest
import torch

from expunge.shards import training
from expunge.shards.config import MFConfig
from expunge.shards.models.mf import MatrixFactorization, MFModule


def _module() -> MFModule:
    model = MatrixFactorization(MFConfig(num_items=7, embedding_dim=3))
    module = model.build(torch.Generator().manual_seed(0))
    assert isinstance(module, MFModule)
    module.add_users(["a", "b"], torch.ones(2, 3))
    return module


@pytest.mark.parametrize("grad", [False, True])
def test_no_rows_score_no_rows(grad):
    module = _module()
    with torch.set_grad_enabled(grad):
        score, norm = module.terms(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert score.shape == norm.shape == (0,)


def test_an_unknown_user_among_known_ones_scores_without_user_terms():
    module = _module()
    items = torch.tensor([1, 1, 1])
    with torch.no_grad():
        score, norm = module.terms(torch.tensor([0, -1, 1]), items)
        item_only, item_norm = module.terms(torch.tensor([-1, -1, -1]), items)
    assert torch.equal(score[1], item_only[1])
    assert torch.equal(norm[1], item_norm[1])
    assert not torch.equal(score[0], item_only[0])


def _adam_step() -> tuple[torch.nn.Parameter, training._FusedAdamStep]:
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
    param.grad = torch.full((4,), 0.5)
    optimizer.step()  # creates the state the gathered step needs
    step = training._FusedAdamStep.of(optimizer)
    assert step is not None
    return param, step


@pytest.mark.parametrize("enabled", [False, True])
def test_the_gathered_adam_step_leaves_gradient_mode_as_it_found_it(enabled):
    param, step = _adam_step()
    before = param.detach().clone()
    with torch.set_grad_enabled(enabled):
        step()
        assert torch.is_grad_enabled() is enabled
    assert not torch.equal(param.detach(), before)
    assert int(step.counts[0]) == 2


def test_the_gathered_adam_step_restores_gradient_mode_when_its_kernel_raises(monkeypatch):
    _, step = _adam_step()

    def fail(*args, **kwargs):
        assert not torch.is_grad_enabled()  # the kernel runs with gradients off
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(torch, "_fused_adam_", fail)
    with pytest.raises(RuntimeError, match="kernel failed"):
        step()
    assert torch.is_grad_enabled()
