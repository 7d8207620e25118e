"""LightGCN (He et al., 2020): embeddings smoothed over the user-item graph, no transforms, no non-linearity.

E^(0) = [user ego embeddings; item ego embeddings]; E^(k+1) = A_hat E^(k) with
A_hat = D^-1/2 [[0, R], [R^T, 0]] D^-1/2 (R the binary training matrix); final embeddings = mean of
E^(0..K) (``n_layers`` = K, default 3). Score(u, i) = <e_u, e_i>. Loss on the GeneralDataModule's
triples: BPR on the propagated embeddings + ``reg_weight`` * L2 of the EGO embeddings the batch touched
(divided by the batch size), as in the paper.

The graph: training calls ``set_train_matrix(train_csr)`` (training/train.py does so for every model
declaring ``NeedsTrainMatrix``) before fitting; the normalised adjacency is a plain attribute, NOT a buffer
(sparse tensors do not round-trip through state_dict / weights_only loading, and serving must not
need the training graph). Instead the propagated embeddings are cached in the dense buffers
``user_final`` / ``item_final`` (flag ``cache_ready``): they are recomputed, whenever the weights
have changed since the last refresh, by ``full_sort_predict`` (so at every validation epoch) and by
``state_dict`` (so whenever Lightning writes a checkpoint or ``save_model_artifact`` saves weights).
A checkpoint / artifact therefore carries propagated embeddings consistent with its ego weights, and a
module rebuilt by ``load_model_artifact`` scores from the buffers with no graph. A module that has
neither a graph nor a cache scores with its ego embeddings (untrained-model shape checks).

Unknown users (index -1): folded in as the mean of their history items' propagated embeddings (a
LightGCN user embedding is itself mostly an average of its items' embeddings), as BPR does.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.models.base import RecommenderModule, bpr_loss, fold_in_users, latent_factor_tables
from training.models.capabilities import (
    EmbedsItems,
    NeedsTrainMatrix,
    ScoresByDotProduct,
    ScoresFromHistory,
)


def normalized_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    """Sparse CSR (n_users + n_items + 1)^2 tensor D^-1/2 A D^-1/2 of the bipartite graph of ``train``."""
    binary = (train > 0).astype(np.float32)
    n_users, n_cols = binary.shape
    adj = sp.bmat([[None, binary], [binary.T, None]], format="coo", dtype=np.float32)
    adj = sp.coo_matrix(adj, shape=(n_users + n_cols, n_users + n_cols))
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    values = inv_sqrt[adj.row] * adj.data * inv_sqrt[adj.col]
    indices = torch.from_numpy(np.vstack([adj.row, adj.col]).astype(np.int64))
    coo = torch.sparse_coo_tensor(indices, torch.from_numpy(values.astype(np.float32)), adj.shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.coalesce().to_sparse_csr()


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a constant SYMMETRIC sparse A: backward is A g (no gradient for A). About 2.5x
    faster per training step than autograd through ``torch.sparse.mm``, which also differentiates A."""

    @staticmethod
    def forward(ctx: Any, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adjacency = adjacency
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, torch.sparse.mm(ctx.adjacency, grad.contiguous())


class LightGCN(RecommenderModule, ScoresFromHistory, EmbedsItems, NeedsTrainMatrix, ScoresByDotProduct):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 64,
        n_layers: int = 3,
        lr: float = 1e-2,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.lr, self.reg_weight = lr, reg_weight
        self.user_embedding, self.item_embedding = latent_factor_tables(n_users, n_items, embedding_size)
        self.register_buffer("user_final", torch.zeros(n_users, embedding_size))
        self.register_buffer("item_final", torch.zeros(n_items + 1, embedding_size))
        self.register_buffer("cache_ready", torch.tensor(False))
        self.adjacency: torch.Tensor | None = None
        self._stale = True

    def set_train_matrix(self, train: sp.csr_matrix) -> None:
        """Build the normalised graph from the (n_users, n_items + 1) training matrix."""
        if train.shape != (self.n_users, self.n_items + 1):
            raise ValueError(f"train matrix {train.shape} != ({self.n_users}, {self.n_items + 1})")
        self.adjacency = normalized_adjacency(train)
        self._stale = True

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) embeddings after K layers of propagation, averaged over layers 0..K."""
        if self.adjacency is None:
            raise RuntimeError("LightGCN needs set_train_matrix(train) before training")
        if self.adjacency.device != self.user_embedding.weight.device:
            self.adjacency = self.adjacency.to(self.user_embedding.weight.device)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total, layer = ego, ego
        for _ in range(self.n_layers):
            layer = _SymmetricSpMM.apply(self.adjacency, layer)
            total = total + layer
        final = total / (self.n_layers + 1)
        return final[: self.n_users], final[self.n_users :]

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._stale = True
        users_all, items_all = self.propagate()
        u, p, n = batch["users"], batch["positives"], batch["negatives"]
        user, pos, neg = users_all[u], items_all[p], items_all[n]
        ego = (self.user_embedding(u), self.item_embedding(p), self.item_embedding(n))
        return bpr_loss(user, pos, neg, ego, self.reg_weight)  # L2 on the layer-0 (ego) embeddings

    @torch.no_grad()
    def refresh_cache(self) -> None:
        users, items = self.propagate()
        self.user_final.copy_(users)
        self.item_final.copy_(items)
        self.cache_ready.fill_(True)
        self._stale = False

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Refresh a stale cache first, so every checkpoint/artifact carries consistent buffers."""
        if self.adjacency is not None and self._stale:
            self.refresh_cache()
        return super().state_dict(*args, **kwargs)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.adjacency is not None and (self._stale or not bool(self.cache_ready)):
            self.refresh_cache()
        if bool(self.cache_ready):
            return self.user_final, self.item_final
        return self.user_embedding.weight, self.item_embedding.weight  # untrained, no graph

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.final_embeddings()
        return fold_in_users(user_emb, item_emb, users, history) @ item_emb.T

    def item_embeddings(self) -> torch.Tensor:
        """Propagated item vectors (the service's similar-items path)."""
        return self.final_embeddings()[1]

    def dot_product_queries(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.final_embeddings()
        return fold_in_users(user_emb, item_emb, users, history)

    def dot_product_items(self) -> torch.Tensor:
        return self.final_embeddings()[1]
