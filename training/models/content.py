"""Content-based recommender: TF-IDF over item attributes, cosine to the user's profile.

Item vector = TF-IDF over three attribute "vocabularies" of ``SideFeatures``: genres (multi-hot),
the release-year bin (one term per 5-year bin) and title words (``item_title`` codes). Each block
is weighted (``genre_weight``, ``year_weight``, ``title_weight``) before the whole vector is
L2-normalised, so a shared genre and a shared title word count as much as the weights say rather
than as much as their raw counts. IDF = log((1 + N) / (1 + df)) + 1 over the catalogue (N items):
common terms (Drama) separate items less than rare ones (Film-Noir, a franchise word).

User profile = mean of the vectors of the user's items (optionally recency-weighted, newest items
count most: ``recency_decay`` ** age, for histories, whose order is known), L2-normalised;
score = cosine(profile, item vector). A user known at fit time is profiled from their TRAINING row
(so the evaluator and the service agree, as ItemKNN); an unknown user (index -1) from the request's
history (``scores_from_history``). The training matrix is binary (ratings never reach it), so the
profile weighting by rating the brief allows is not available here.

Attributes only know what an item IS, not how many people want it, so pure content ranking favours
obscure look-alikes. ``popularity_weight`` (0 = pure content) adds a log-popularity prior,
score = cosine + w * log(1 + count) / log(1 + max count), a common content/popularity hybrid; its
measured effect is in configs/models/content.yaml.

Fitted in closed form (no training loop); state in buffers: ``item_vectors`` (n_items + 1, D),
built deterministically by ``set_side_features`` (so load_model_artifact rebuilds the same shape),
and ``user_profiles`` (n_users, D) / ``item_prior`` (n_items + 1,) from ``fit``, whose data-sized
shapes load_model_artifact adopts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from training.models.baselines import FittedBaseline
from training.side_features import SideFeatures


def tfidf(terms: np.ndarray) -> np.ndarray:
    """TF-IDF of a (rows, terms) count matrix; row 0 (padding) and empty rows are ignored in df."""
    real = terms[1:]
    n_docs = max(int((real.sum(axis=1) > 0).sum()), 1)
    df = (real > 0).sum(axis=0)
    idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
    return (terms * idf).astype(np.float32)


class ContentBased(FittedBaseline):
    scores_from_history = True  # serving: unknown users are profiled from their online history

    def __init__(
        self,
        n_users: int,
        n_items: int,
        genre_weight: float = 1.0,
        year_weight: float = 0.5,
        title_weight: float = 0.5,
        recency_decay: float = 1.0,
        popularity_weight: float = 0.0,
        **_: object,
    ) -> None:
        super().__init__(n_users, n_items)
        self.block_weights = (genre_weight, year_weight, title_weight)
        self.recency_decay = recency_decay
        self.popularity_weight = popularity_weight
        self.register_buffer("item_vectors", torch.zeros(n_items + 1, 0))
        self.register_buffer("user_profiles", torch.zeros(0, 0))
        self.register_buffer("item_prior", torch.zeros(n_items + 1))

    def set_side_features(self, features: SideFeatures) -> None:
        """Build the L2-normalised TF-IDF item vectors (deterministic: same features, same buffer)."""
        rows = self.n_items + 1
        genres = features.item_genres[:rows].astype(np.float32)
        years = np.zeros((rows, features.cardinalities["year"]), dtype=np.float32)
        years[np.arange(rows), features.item_year[:rows]] = 1.0
        titles = np.zeros((rows, features.cardinalities["title"]), dtype=np.float32)
        np.add.at(
            titles,
            (np.repeat(np.arange(rows), features.item_title.shape[1]), features.item_title[:rows].ravel()),
            1.0,
        )
        years[:, 0] = 0.0  # code 0 = unknown year / padding word: not a term
        titles[:, 0] = 0.0
        blocks = [
            tfidf(block) * w for block, w in zip((genres, years, titles), self.block_weights, strict=True)
        ]
        vectors = torch.from_numpy(np.concatenate(blocks, axis=1))
        vectors[0] = 0.0
        self.item_vectors = F.normalize(vectors, dim=1)

    def fit(self, train: sp.csr_matrix) -> ContentBased:
        binary = (train > 0).astype(np.float32).tocsr()
        if self.item_vectors.shape[1] == 0:
            raise ValueError(
                "ContentBased.fit needs item attributes: call set_side_features(side_features_for(split)) "
                "first (training/train.py attach_split_data does)"
            )
        profiles = torch.from_numpy(binary @ self.item_vectors.numpy())  # sums; cosine ignores the 1/n
        self.user_profiles = F.normalize(profiles, dim=1)
        counts = np.asarray(binary.sum(axis=0)).ravel()
        prior = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
        self.item_prior = torch.from_numpy(prior.astype(np.float32))
        return self

    def history_profiles(self, history: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised profiles of right-aligned histories (B, L), newest item last."""
        length = history.shape[1]
        age = torch.arange(length - 1, -1, -1, dtype=torch.float32)
        weights = (self.recency_decay**age).unsqueeze(0) * (history > 0)
        vectors = self.item_vectors[history]  # padding row is zero
        return F.normalize((weights.unsqueeze(-1) * vectors).sum(1), dim=1)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        n_known = self.user_profiles.shape[0]
        known = (users >= 0) & (users < n_known)
        profiles = torch.zeros(users.shape[0], self.item_vectors.shape[1])
        if known.any():
            profiles[known] = self.user_profiles[users[known]]
        if (~known).any():
            profiles[~known] = self.history_profiles(history[~known])
        scores = profiles @ self.item_vectors.T
        if self.popularity_weight:
            scores = scores + self.popularity_weight * self.item_prior.unsqueeze(0)
        return scores

    def item_embeddings(self) -> torch.Tensor:
        """The TF-IDF item vectors (used by the service's /similar_items)."""
        return self.item_vectors
