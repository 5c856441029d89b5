"""MF's step computes what its masked formula defines, bit for bit, forward and backward."""

from __future__ import annotations

import pytest
import torch

from expunge.shards.config import MFConfig
from expunge.shards.models.mf import MatrixFactorization, MFModule


def _module(seed: int = 0) -> tuple[MatrixFactorization, MFModule]:
    model = MatrixFactorization(MFConfig(num_items=13, embedding_dim=5, init_std=0.3))
    generator = torch.Generator().manual_seed(seed)
    module = model.build(generator)
    assert isinstance(module, MFModule)
    for table, count in enumerate((4, 3, 6)):
        module.add_users([f"t{table}-{i}" for i in range(count)], torch.randn(count, 5, generator=generator))
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model, module


def _masked_terms(module: MFModule, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: rating = mu + b_item + b_user + <p_user, q_item>, user terms masked to 0 for unknown users."""
    item_vectors = module.item_factors[items]
    score = module.mu + module.item_bias[items]
    norm = module.item_bias[items] ** 2 + (item_vectors**2).sum(dim=1)
    bias = torch.cat([table.bias for table in module.user_tables])  # type: ignore[union-attr]
    factors = torch.cat([table.factors for table in module.user_tables])  # type: ignore[union-attr]
    known = users >= 0
    safe = users.clamp(min=0)
    user_vectors = factors[safe]
    user_term = bias[safe] + (user_vectors * item_vectors).sum(dim=1)
    user_norm = bias[safe] ** 2 + (user_vectors**2).sum(dim=1)
    zeros = torch.zeros_like(user_term)
    return score + torch.where(known, user_term, zeros), norm + torch.where(known, user_norm, zeros)


def _loss_and_grads(module: MFModule, terms, users, items, target) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    module.zero_grad(set_to_none=True)
    prediction, norm = terms(users, items)
    loss = torch.mean((prediction - target) ** 2 + 0.01 * norm)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters()]  # type: ignore[union-attr]


@pytest.mark.parametrize("unknown", [False, True])
def test_terms_and_their_gradients_equal_the_masked_definition_bit_for_bit(unknown):
    _, module = _module()
    generator = torch.Generator().manual_seed(1)
    users = torch.randint(0, 13, (200,), generator=generator)  # repeated users and items: summed gradients
    if unknown:
        users[::7] = -1
    items = torch.randint(0, 13, (200,), generator=generator)
    target = torch.rand(200, generator=generator) * 4 + 1
    loss, grads = _loss_and_grads(module, module.terms, users, items, target)
    expected_loss, expected_grads = _loss_and_grads(
        module, lambda u, i: _masked_terms(module, u, i), users, items, target
    )
    assert torch.equal(loss, expected_loss)
    assert len(grads) == 3 + 2 * 3
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads, strict=True))


def test_a_rebuilt_module_loaded_from_a_state_scores_as_the_original():
    model, module = _module()
    rebuilt = model.rebuild(model.layout(module))
    assert isinstance(rebuilt, MFModule)
    rebuilt.load_state_dict(module.state_dict())
    users, items = torch.tensor([0, 5, 12, -1]), torch.tensor([3, 3, 0, 7])
    for got, expected in zip(rebuilt.terms(users, items), module.terms(users, items), strict=True):
        assert torch.equal(got, expected)
        assert torch.count_nonzero(got) == len(got)  # the loaded weights, not the zeros rebuild starts from
