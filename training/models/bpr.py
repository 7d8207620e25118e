"""BPR-MF (Rendle et al., 2009): matrix factorisation trained with the pairwise BPR loss.

Score(u, i) = <p_u, q_i>. Loss per (user, positive, negative) triple: -log sigmoid(s_pos - s_neg),
plus an L2 penalty on the embeddings the batch touched (scaled by ``reg_weight``), which is the
regulariser of the original paper and regularises rarely sampled items less than Adam weight decay.
A user unknown at training time (index -1) is folded in as the mean embedding of their history
items, so the service can still rank for them instead of returning constant scores.
"""

from __future__ import annotations

import torch

from training.models.base import RecommenderModule, bpr_loss, fold_in_users, latent_factor_tables
from training.models.capabilities import EmbedsItems, ScoresByDotProduct, ScoresFromHistory


class BPR(RecommenderModule, ScoresFromHistory, EmbedsItems, ScoresByDotProduct):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 64,
        lr: float = 2e-3,
        reg_weight: float = 1e-4,
        sparse_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items = n_users, n_items
        self.lr, self.reg_weight = lr, reg_weight
        self.user_embedding, self.item_embedding = latent_factor_tables(
            n_users, n_items, embedding_size, sparse=sparse_embeddings
        )

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = self.user_embedding(batch["users"])
        pos = self.item_embedding(batch["positives"])
        neg = self.item_embedding(batch["negatives"])
        return bpr_loss(user, pos, neg, (user, pos, neg), self.reg_weight)

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return fold_in_users(self.user_embedding.weight, self.item_embedding.weight, users, history)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(users, history) @ self.item_embedding.weight.T

    def dot_product_queries(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(users, history)

    def dot_product_items(self) -> torch.Tensor:
        return self.item_embedding.weight
