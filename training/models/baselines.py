"""Classic baselines every learned model must beat. Fitted in closed form from the training matrix.

They are ``nn.Module``s with their fitted state in buffers, so they save, load, evaluate and serve
through exactly the same code as the learned models.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class FittedBaseline(nn.Module):
    """Base: ``fit(train)`` with ``train`` a CSR matrix of shape (n_users, n_items + 1)."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items

    def fit(self, train: sp.csr_matrix) -> FittedBaseline:  # pragma: no cover - interface
        raise NotImplementedError

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface


class Popularity(FittedBaseline):
    """Scores every item by its number of training interactions, the same for every user."""

    def __init__(self, n_users: int, n_items: int, **_: object) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("item_counts", torch.zeros(n_items + 1))

    def fit(self, train: sp.csr_matrix) -> Popularity:
        counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
        self.item_counts = torch.from_numpy(counts)
        return self

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.item_counts.unsqueeze(0).expand(users.shape[0], -1).clone()


class ItemKNN(FittedBaseline):
    """Item-based collaborative filtering with cosine similarity, keeping each item's ``k`` neighbours.

    A user's score for item j is the sum of similarities between j and the items in the user's
    history (the request's history for a known user is its training row, so the service and the
    evaluator agree; for a user unknown at training time the history from the feature store is used).
    """

    def __init__(self, n_users: int, n_items: int, k: int = 100, shrink: float = 0.0, **_: object) -> None:
        super().__init__(n_users, n_items)
        self.k = k
        self.shrink = shrink
        self.register_buffer("similarity", torch.zeros(n_items + 1, n_items + 1))
        self.register_buffer("user_items", torch.zeros(0, n_items + 1))

    def fit(self, train: sp.csr_matrix) -> ItemKNN:
        binary = (train > 0).astype(np.float32).tocsc()
        norms = np.sqrt(np.asarray(binary.multiply(binary).sum(axis=0)).ravel())
        co = (binary.T @ binary).toarray()
        denom = np.outer(norms, norms) + self.shrink + 1e-8
        sim = co / denom
        np.fill_diagonal(sim, 0.0)
        if self.k < sim.shape[1]:
            # Keep the k most similar neighbours of each item (row), zero the rest.
            drop = np.argpartition(-sim, self.k, axis=1)[:, self.k :]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.similarity = torch.from_numpy(sim.astype(np.float32))
        self.user_items = torch.from_numpy(binary.tocsr().toarray())
        return self

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        known = (users >= 0) & (users < self.user_items.shape[0])
        profile = torch.zeros(users.shape[0], self.n_items + 1)
        if known.any():
            profile[known] = self.user_items[users[known]]
        unknown = ~known
        if unknown.any():
            rows = history[unknown]
            profile[unknown] = torch.zeros(rows.shape[0], self.n_items + 1).scatter_(1, rows, 1.0)
            profile[:, 0] = 0.0
        return profile @ self.similarity
