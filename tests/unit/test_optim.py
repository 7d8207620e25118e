"""LazyAdam: Adam on dense gradients, SparseAdam's lazy rule on sparse ones; sparse embedding tables."""

from __future__ import annotations

import pytest
import torch

from training.models.optim import LazyAdam, adam


def _steps(module: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: list[torch.Tensor]) -> None:
    for x in inputs:
        optimizer.zero_grad()
        module(x).pow(2).sum().backward()
        optimizer.step()


def test_dense_gradients_get_adam() -> None:
    torch.manual_seed(0)
    reference, lazy = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    lazy.load_state_dict(reference.state_dict())
    inputs = [torch.randn(8, 5) for _ in range(30)]
    _steps(reference, torch.optim.Adam(reference.parameters(), lr=0.01), inputs)
    _steps(lazy, LazyAdam(lazy.parameters(), lr=0.01), inputs)
    for expected, got in zip(reference.parameters(), lazy.parameters(), strict=True):
        torch.testing.assert_close(got, expected)


def test_sparse_gradients_get_sparse_adam_and_leave_other_rows_alone() -> None:
    torch.manual_seed(0)
    reference = torch.nn.Embedding(50, 4, sparse=True)
    lazy = torch.nn.Embedding(50, 4, sparse=True)
    lazy.load_state_dict(reference.state_dict())
    before = lazy.weight.detach().clone()
    inputs = [torch.randint(0, 30, (16,)) for _ in range(30)]  # rows 30-49 never looked up; repeats
    _steps(reference, torch.optim.SparseAdam(reference.parameters(), lr=0.01), inputs)
    _steps(lazy, LazyAdam(lazy.parameters(), lr=0.01), inputs)
    torch.testing.assert_close(lazy.weight, reference.weight)
    assert torch.equal(lazy.weight[30:], before[30:])
    assert not torch.equal(lazy.weight[:30], before[:30])


def test_models_choose_lazy_adam_only_for_sparse_tables() -> None:
    from training.models.bpr import BPR

    dense, sparse = BPR(20, 30), BPR(20, 30, sparse_embeddings=True)
    assert type(dense.configure_optimizers()) is torch.optim.Adam
    assert type(sparse.configure_optimizers()) is LazyAdam
    batch = {name: torch.randint(1, 31, (8,)) for name in ("positives", "negatives")}
    sparse.calculate_loss({**batch, "users": torch.randint(0, 20, (8,))}).backward()
    assert sparse.item_embedding.weight.grad is not None and sparse.item_embedding.weight.grad.is_sparse
    sparse.weight_decay = 1e-4
    with pytest.raises(ValueError, match="reg_weight"):
        adam(sparse, sparse.lr, sparse.weight_decay)
