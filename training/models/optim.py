"""The optimizer of the learned models: Adam, made lazy for embedding tables with sparse gradients.

Why: with dense gradients, every Adam step reads and writes every row of every embedding table and of
its two moment buffers, whatever the batch touched, so a step's cost grows with the catalogue and the
user base rather than with the batch (at 10^6 users and items that is hundreds of MB per step). An
``nn.Embedding(sparse=True)`` gives a gradient holding only the rows the batch looked up;
``LazyAdam`` updates those rows and their moments and leaves the others alone, the rule of torch's
``SparseAdam`` (the "lazy Adam" of large-scale recommenders), while dense parameters (MLP layers,
biases) get plain Adam in the same optimizer. Lazy updates are not the same optimisation as dense
Adam (an untouched row keeps its momentum instead of moving on it), so tables are sparse only where a
model's config asks for it (``sparse_embeddings``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam; for a sparse gradient, SparseAdam's update of the rows it holds and only those."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = param.grad
                if grad.is_sparse:  # SparseAdam's rule, on the rows the gradient holds
                    grad = grad.coalesce()  # a row looked up twice in the batch: its gradients summed
                    rows, values = grad.indices()[0], grad.values()
                    row_avg = exp_avg.index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
                    row_sq = exp_avg_sq.index_select(0, rows).mul_(beta2)
                    row_sq.addcmul_(values, values, value=1 - beta2)
                    exp_avg.index_copy_(0, rows, row_avg)
                    exp_avg_sq.index_copy_(0, rows, row_sq)
                    step_size = group["lr"] * math.sqrt(correction2) / correction1
                    param.index_add_(
                        0, rows, row_avg.div_(row_sq.sqrt_().add_(group["eps"])), alpha=-step_size
                    )
                else:  # Adam's rule (torch.optim.Adam's arithmetic)
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denominator = (exp_avg_sq.sqrt() / math.sqrt(correction2)).add_(group["eps"])
                    param.addcdiv_(exp_avg, denominator, value=-group["lr"] / correction1)
        return loss


def has_sparse_embeddings(module: torch.nn.Module) -> bool:
    return any(
        isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.sparse for m in module.modules()
    )


def adam(module: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam over ``module``'s parameters: ``LazyAdam`` when it has sparse embedding tables."""
    if not has_sparse_embeddings(module):
        return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    if weight_decay:
        raise ValueError(
            f"{type(module).__name__}: sparse embedding tables take their L2 penalty in the loss (reg_weight), "
            "not as Adam weight decay, which would touch every row at every step; set weight_decay to 0 "
            "or sparse_embeddings to false"
        )
    return LazyAdam(module.parameters(), lr=lr)
