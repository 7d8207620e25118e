"""Helpers shared by the model tests."""

from __future__ import annotations

import torch


def overfit_losses(module: torch.nn.Module, batch, steps: int = 60) -> list[float]:
    """Train ``module`` on one fixed batch with its own optimizer; the loss per step."""
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
