"""An MF module trains its user tables through flat leaves: the same gradients and weights, tables of their own outside."""

from __future__ import annotations

import pickle

import torch

from expunge.orchestrator.evidence.exactness import same_bits
from expunge.shards.config import MFConfig
from expunge.shards.models.mf import MatrixFactorization, MFModule


def _module() -> tuple[MatrixFactorization, MFModule]:
    model = MatrixFactorization(MFConfig(num_items=9, embedding_dim=3, init_std=0.3))
    generator = torch.Generator().manual_seed(0)
    module = model.build(generator)
    assert isinstance(module, MFModule)
    for table, count in enumerate((2, 3, 4)):
        module.add_users([f"t{table}-{i}" for i in range(count)], torch.randn(count, 3, generator=generator))
    return model, module


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "users": torch.randint(0, 9, (40,), generator=generator),
        "items": torch.randint(0, 9, (40,), generator=generator),
        "target": torch.rand(40, generator=generator) * 4 + 1,
    }


def _table_grads(module: MFModule) -> list[torch.Tensor]:
    return [p.grad.clone() for table in module.user_tables for p in table.parameters()]  # type: ignore[union-attr]


def test_the_flat_leaves_give_each_table_the_gradient_concatenation_gives_and_accumulate_as_autograd():
    model, module = _module()
    flat_grads = []
    for _ in range(2):  # the second backward adds to the first, as autograd adds into .grad
        model.loss(module, _batch()).backward()  # type: ignore[no-untyped-call]
        flat_grads.append(_table_grads(module))
    module.zero_grad(set_to_none=True)
    module.eval()  # the tables own their storage again; the step below concatenates them
    module.train()
    module._flat = lambda: (torch.cat(module._user_biases), torch.cat(module._user_factors))  # type: ignore[method-assign]
    for expected in flat_grads:
        model.loss(module, _batch()).backward()  # type: ignore[no-untyped-call]
        assert all(same_bits(g, e) for g, e in zip(_table_grads(module), expected, strict=True))


def test_a_training_module_states_pickles_and_evaluates_with_tables_of_their_own_storage():
    model, module = _module()
    model.loss(module, _batch()).backward()  # type: ignore[no-untyped-call]
    assert module._flat_users is not None
    state = module.state_dict()
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in state.values())  # no whole flat storage per table
    again = pickle.loads(pickle.dumps(module))
    assert all(same_bits(again.state_dict()[k], v) for k, v in state.items())
    before = [p.detach().clone() for p in module.parameters()]
    module.eval()
    assert module._flat_users is None
    table = module.user_tables[0]
    assert table.factors.untyped_storage().nbytes() == table.factors.nbytes  # type: ignore[union-attr]
    assert all(same_bits(p.detach(), b) for p, b in zip(module.parameters(), before, strict=True))


def test_growing_a_flat_module_keeps_every_weight_and_the_optimizer_moves_the_leaves():
    model, module = _module()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    model.loss(module, _batch()).backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    leaves = module._flat()
    assert all(same_bits(leaves[1].detach()[i : i + 1], module._user_factors[0].detach()[i : i + 1]) for i in range(2))
    before = [p.detach().clone() for p in module.parameters()]
    module.add_users(["new"], torch.ones(1, 3))
    model.loss(module, _batch()).backward()  # type: ignore[no-untyped-call]
    assert all(same_bits(p.detach(), b) for p, b in zip(module.parameters(), before, strict=False))
    assert module._user_factors[-1].grad is not None
