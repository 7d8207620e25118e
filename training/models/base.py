"""Shared LightningModule behaviour: full-ranking validation and the optimizer.

Every learned model implements ``calculate_loss(batch)`` and ``full_sort_predict(users, history)``;
validation ranks the whole catalogue for each validation user (never sampled negatives) and logs
``valid/ndcg@10`` (the metric EarlyStopping and ModelCheckpoint watch) plus recall@10 and hr@10.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from training.metrics import per_user_metrics

VALID_MONITOR = "valid/ndcg@10"


class RecommenderModule(L.LightningModule):
    """Base class: subclasses set ``self.lr`` / ``self.weight_decay`` and implement the two methods."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def full_sort_predict(
        self, users: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.calculate_loss(batch)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=int(next(iter(batch.values())).shape[0]),
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        scores = self.full_sort_predict(batch["users"], batch["history"])
        values, _ = per_user_metrics(scores, batch["truth"], batch["exclude"], [10])
        size = int(batch["users"].shape[0])
        for name in ("ndcg@10", "recall@10", "hr@10"):
            # Lightning weights the epoch mean by batch_size: the result is the mean over users.
            self.log(
                f"valid/{name}",
                values[name].mean(),
                prog_bar=name == "ndcg@10",
                on_step=False,
                on_epoch=True,
                batch_size=size,
            )

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
