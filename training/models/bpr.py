"""BPR-MF (Rendle et al., 2009): matrix factorisation trained with the pairwise BPR loss.

Score(u, i) = <p_u, q_i>. Loss per (user, positive, negative) triple: -log sigmoid(s_pos - s_neg),
plus an L2 penalty on the embeddings the batch touched (scaled by ``reg_weight``), which is the
regulariser of the original paper and regularises rarely sampled items less than Adam weight decay.
A user unknown at training time (index -1) is folded in as the mean embedding of their history
items, so the service can still rank for them instead of returning constant scores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import RecommenderModule


class BPR(RecommenderModule):
    scores_from_history = True  # serving: an unknown user is folded in as the mean history embedding

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 64,
        lr: float = 2e-3,
        reg_weight: float = 1e-4,
        **training_params: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items = n_users, n_items
        self.lr, self.reg_weight = lr, reg_weight
        self.user_embedding = nn.Embedding(n_users, embedding_size)
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = self.user_embedding(batch["users"])
        pos = self.item_embedding(batch["positives"])
        neg = self.item_embedding(batch["negatives"])
        margin = (user * pos).sum(-1) - (user * neg).sum(-1)
        reg = (user.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()) / user.shape[0]
        return -F.logsigmoid(margin).mean() + self.reg_weight * reg

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        known = (users >= 0) & (users < self.n_users)
        vectors = self.user_embedding(users.clamp(min=0, max=self.n_users - 1))
        if not bool(known.all()):
            items = self.item_embedding(history)  # padding rows are zero
            count = (history > 0).sum(dim=1, keepdim=True).clamp(min=1)
            folded = items.sum(dim=1) / count
            vectors = torch.where(known.unsqueeze(1), vectors, folded)
        return vectors

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(users, history) @ self.item_embedding.weight.T
