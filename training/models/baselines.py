"""Classic baselines every learned model must beat. Fitted in closed form from the training matrix.

They are ``nn.Module``s with their fitted state in buffers, so they save, load, evaluate and serve
through exactly the same code as the learned models.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from training.models.capabilities import AddsHistoryToKnownUser, ItemSimilarity, ScoresFromHistory


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

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("item_counts", torch.zeros(n_items + 1))

    def fit(self, train: sp.csr_matrix) -> Popularity:
        counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
        self.item_counts = torch.from_numpy(counts)
        return self

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.item_counts.unsqueeze(0).expand(users.shape[0], -1).clone()


class ProfileBaseline(FittedBaseline, AddsHistoryToKnownUser):
    """Base of the baselines that score a user from their binary item profile (ItemKNN, EASE).

    A profile is the set of items the user is known to have chosen: for a user known at training time,
    its training row (``user_items``, kept at fit time) plus the items of the given history; for a user
    unknown at training time (index -1), the history alone. The history is what the user did up to
    the moment of scoring (the feature store's events, then a visitor's session), so a known user's
    session counts at once instead of after the next retraining. Adding the history is no leak: the
    evaluator gives a validation history only training events and a test history training and
    validation events.
    """

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("user_items", torch.zeros(0, n_items + 1))

    def profiles(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B, n_items + 1) binary profiles; column 0 (padding) is always 0."""
        return binary_profiles(self.user_items, users, history)


def binary_profiles(user_items: torch.Tensor, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """(B, n_items + 1) binary profiles: the items of each user's ``history``, plus, for a user known at
    training time, its row of ``user_items`` (its training items); a user unknown at training time
    (index -1, or beyond the kept rows) has its history alone. Column 0 (padding) is always 0. Shared by
    the models that score from a whole item profile (ItemKNN, EASE, Mult-VAE), so the service and the
    evaluator profile a user the same way for all of them."""
    width = user_items.shape[1]
    known = (users >= 0) & (users < user_items.shape[0])
    rows = history.to(user_items.device)
    profile = torch.zeros(users.shape[0], width, device=user_items.device).scatter_(1, rows, 1.0)
    if known.any():
        profile[known] = torch.maximum(profile[known], user_items[users[known]].float())
    profile[:, 0] = 0.0
    return profile


class ItemKNN(ProfileBaseline, ScoresFromHistory, ItemSimilarity):
    """Item-based collaborative filtering with cosine similarity, keeping each item's ``k`` neighbours.

    The standard item-kNN (Sarwar et al. 2001; Deshpande & Karypis 2004; RecBole's ItemKNN): each
    candidate item j keeps its ``k`` most similar items N(j), and a user's score for j is the sum of
    sim(i, j) over the items i of the user's history that are among N(j). The neighbourhood is the
    TARGET's: a history item that is not among j's neighbours says nothing about j, even when j is
    among its own neighbours. ``similarity`` holds row i = the ``k`` neighbours of item i (what
    ``/similar_items`` returns), so scores = profile @ similarity.T (profiles: ``ProfileBaseline``).
    """

    def __init__(self, n_users: int, n_items: int, k: int = 100, shrink: float = 0.0) -> None:
        super().__init__(n_users, n_items)
        self.k = k
        self.shrink = shrink
        self.register_buffer("similarity", torch.zeros(n_items + 1, n_items + 1))

    def fit(self, train: sp.csr_matrix) -> ItemKNN:
        binary = (train > 0).astype(np.float32).tocsc()
        norms = np.sqrt(np.asarray(binary.multiply(binary).sum(axis=0)).ravel())
        co = (binary.T @ binary).toarray()
        denom = np.outer(norms, norms) + self.shrink + 1e-8
        sim = co / denom
        np.fill_diagonal(sim, 0.0)
        if self.k < sim.shape[1]:
            # Row i keeps the k neighbours of item i, zero the rest (scoring reads it transposed).
            drop = np.argpartition(-sim, self.k, axis=1)[:, self.k :]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.similarity = torch.from_numpy(sim.astype(np.float32))
        self.user_items = torch.from_numpy(binary.tocsr().toarray())
        return self

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        # score(j) = sum over history items i of similarity[j, i]: row j holds j's own neighbours.
        return self.profiles(users, history) @ self.similarity.T


def pearson_similarity(binary: sp.csr_matrix, others: sp.csr_matrix | None = None) -> np.ndarray:
    """Pearson correlation between the rows of ``binary`` and the rows of ``others`` (default: itself).

    Rows are implicit-feedback vectors over the real items (column 0 is padding and never set), each
    mean-centred over ALL items: with n items, a_u = |I_u| and c_uv = |I_u & I_v|,
    r_uv = (n c_uv - a_u a_v) / sqrt((n a_u - a_u^2) (n a_v - a_v^2)). A row with zero variance (no
    item, or every item) correlates 0 with everything. Dense (rows(binary), rows(others)) float64.
    """
    others = binary if others is None else others
    n = binary.shape[1] - 1  # real items; column 0 is padding
    a = np.asarray(binary.sum(axis=1)).ravel().astype(np.float64)
    b = np.asarray(others.sum(axis=1)).ravel().astype(np.float64)
    co = np.asarray((binary @ others.T).todense(), dtype=np.float64)
    num = n * co - np.outer(a, b)
    var_a = np.clip(n * a - a * a, 0.0, None)
    var_b = np.clip(n * b - b * b, 0.0, None)
    den = np.sqrt(np.outer(var_a, var_b))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


class UserKNN(FittedBaseline, ScoresFromHistory):
    """User-based collaborative filtering with Pearson correlation, keeping each user's ``k`` neighbours.

    The training matrix is binary (training/split.py ``interaction_matrix`` sets every value to 1; the
    examples' ``rating`` column never reaches it), so the similarity is the Pearson correlation of the
    users' implicit binary vectors, mean-centred over all items (see ``pearson_similarity``); on binary
    data "co-rated items" would leave only 1s, whose centred values are all 0. Neighbours: the ``k``
    most correlated other users with a POSITIVE correlation (anti-correlated users are dropped rather
    than subtracting their items); score(u, j) = sum over neighbours v of sim(u, v) * r_vj.
    ``shrink`` damps similarities of users sharing few items: sim * c_uv / (c_uv + shrink).

    Fitted state: ``neighbours`` / ``weights`` (n_users, k) and the binary ``user_items`` matrix. A user
    unknown at training time (index -1) is correlated with the training users from the request's
    ``history`` (the same profile ItemKNN builds) and scored from its own top-k neighbours.
    """

    def __init__(self, n_users: int, n_items: int, k: int = 50, shrink: float = 0.0) -> None:
        super().__init__(n_users, n_items)
        self.k = k
        self.shrink = shrink
        self.register_buffer("neighbours", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(0, 0))
        self.register_buffer("user_items", torch.zeros(0, n_items + 1))

    def _top_k(self, sim: np.ndarray, co: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.shrink > 0 and co is not None:
            sim = sim * co / (co + self.shrink)
        k = min(self.k, sim.shape[1])
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.argsort(-sim, axis=1)
        vals = np.take_along_axis(sim, idx, axis=1)
        vals = np.where(vals > 0, vals, 0.0)
        return idx.astype(np.int64), vals.astype(np.float32)

    def fit(self, train: sp.csr_matrix, chunk: int = 2048) -> UserKNN:
        binary = (train > 0).astype(np.float32).tocsr()
        n_users = binary.shape[0]
        idx_parts, val_parts = [], []
        for start in range(0, n_users, chunk):  # rows in chunks: never more than chunk x n_users dense
            rows = binary[start : start + chunk]
            sim = pearson_similarity(rows, binary)
            sim[np.arange(sim.shape[0]), np.arange(start, start + sim.shape[0])] = -np.inf  # not itself
            co = np.asarray((rows @ binary.T).todense()) if self.shrink > 0 else None
            idx, vals = self._top_k(sim, co)
            idx_parts.append(idx)
            val_parts.append(vals)
        self.neighbours = torch.from_numpy(
            np.concatenate(idx_parts) if idx_parts else np.zeros((0, 0), np.int64)
        )
        self.weights = torch.from_numpy(
            np.concatenate(val_parts) if val_parts else np.zeros((0, 0), np.float32)
        )
        self.user_items = torch.from_numpy(binary.toarray())
        return self

    def _history_neighbours(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        profile = torch.zeros(history.shape[0], self.n_items + 1).scatter_(1, history, 1.0)
        profile[:, 0] = 0.0
        rows = sp.csr_matrix(profile.numpy())
        train = sp.csr_matrix(self.user_items.numpy())
        sim = pearson_similarity(rows, train)
        co = np.asarray((rows @ train.T).todense()) if self.shrink > 0 else None
        idx, vals = self._top_k(sim, co)
        return torch.from_numpy(idx), torch.from_numpy(vals)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        n_train = self.user_items.shape[0]
        weights = torch.zeros(users.shape[0], n_train)
        if n_train == 0:
            return torch.zeros(users.shape[0], self.n_items + 1)
        known = (users >= 0) & (users < n_train)
        if known.any():
            u = users[known]
            weights[known] = weights[known].scatter_(1, self.neighbours[u], self.weights[u])
        unknown = ~known
        if unknown.any():
            idx, vals = self._history_neighbours(history[unknown])
            weights[unknown] = weights[unknown].scatter_(1, idx, vals)
        return weights @ self.user_items
