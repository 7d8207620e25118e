"""Content-based recommender: TF-IDF over item attributes, cosine to the user's profile.

Item vector = TF-IDF over one block of terms per item attribute the dataset's schema declares (the
codes of ``training.attributes``): a categorical value, a numeric bucket, list tokens (genres, tags),
text words (title). Each block is weighted (``field_weights`` by field name, else ``type_weights`` by
type) before the whole vector is L2-normalised, so a shared genre and a shared title word count as
much as the weights say rather than as much as their raw counts. IDF = log((1 + N) / (1 + df)) + 1
over the catalogue (N items): common terms (Drama) separate items less than rare ones (Film-Noir, a
franchise word). Items without any interaction (new in the catalogue) have vectors too, so they are
recommended to users whose profile matches their attributes.

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
built deterministically from the attributes at construction (so load_model_artifact rebuilds the same
shape), and ``user_profiles`` (n_users, D) / ``item_prior`` (n_items + 1,) from ``fit``, whose
data-sized shapes load_model_artifact adopts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from training.attributes import Attributes
from training.models.baselines import FittedBaseline
from training.models.capabilities import EmbedsNewItems, ScoresColdItems, ScoresFromHistory, UsesAttributes

# Block weight of each attribute type unless ``field_weights`` names the field.
TYPE_WEIGHTS = {"categorical": 1.0, "list": 1.0, "numeric": 0.5, "text": 0.5}


def idf(terms: np.ndarray) -> np.ndarray:
    """IDF per term of a (rows, terms) count matrix; row 0 (padding) and empty rows are ignored in df."""
    real = terms[1:]
    n_docs = max(int((real.sum(axis=1) > 0).sum()), 1)
    df = (real > 0).sum(axis=0)
    return (np.log((1.0 + n_docs) / (1.0 + df)) + 1.0).astype(np.float32)


def _term_counts(codes: np.ndarray, cardinality: int) -> np.ndarray:
    """(rows, cardinality) term counts of one field's codes (rows, width); code 0 (unknown) is no term."""
    rows = codes.shape[0]
    terms = np.zeros((rows, cardinality), dtype=np.float32)
    np.add.at(terms, (np.repeat(np.arange(rows), codes.shape[1]), codes.ravel()), 1.0)
    terms[:, 0] = 0.0
    return terms


class ContentBased(FittedBaseline, UsesAttributes, ScoresColdItems, ScoresFromHistory, EmbedsNewItems):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        attributes: Attributes | None = None,
        field_weights: dict[str, float] | None = None,
        type_weights: dict[str, float] | None = None,
        recency_decay: float = 1.0,
        popularity_weight: float = 0.0,
        history_length: int = 50,
    ) -> None:
        super().__init__(n_users, n_items)
        self.history_length = history_length  # history items that profile a user unknown at fit time
        self.recency_decay = recency_decay
        self.popularity_weight = popularity_weight
        weights_by_type = {**TYPE_WEIGHTS, **(type_weights or {})}
        attributes = attributes or Attributes.empty(n_users, n_items)
        unknown = sorted(set(field_weights or {}) - {f.name for f in attributes.items.fields})
        if unknown:
            raise ValueError(
                f"field_weights names {unknown}, not item attributes of schema {attributes.schema.name!r} "
                f"({[f.name for f in attributes.items.fields]})"
            )
        self.field_weights = {
            f.name: float((field_weights or {}).get(f.name, weights_by_type[f.spec.type]))
            for f in attributes.items.fields
        }
        self.register_buffer("item_vectors", self._tfidf_vectors(attributes))
        self.register_buffer("user_profiles", torch.zeros(0, 0))
        self.register_buffer("item_prior", torch.zeros(n_items + 1))

    def _tfidf_vectors(self, attributes: Attributes) -> torch.Tensor:
        """The L2-normalised TF-IDF item vectors (deterministic: same attributes, same buffer)."""
        side = attributes.items
        rows = self.n_items + 1
        self._item_fields = list(zip(side.fields, side.offsets, strict=True))
        # Per field, the catalogue's IDF times the field weight: what a new item's terms are scaled by.
        # Rebuilt from the attributes at construction, like the vectors, so not part of the state dict.
        self._term_weights: list[np.ndarray] = []
        blocks = []
        for encoding, offset in self._item_fields:
            terms = _term_counts(side.codes[:rows, offset : offset + encoding.width], encoding.cardinality)
            weights = idf(terms) * self.field_weights[encoding.name]
            self._term_weights.append(weights)
            blocks.append(terms * weights)
        if not blocks:
            return torch.zeros(rows, 0)
        vectors = torch.from_numpy(np.concatenate(blocks, axis=1))
        vectors[0] = 0.0
        return F.normalize(vectors, dim=1)

    def fit(self, train: sp.csr_matrix) -> ContentBased:
        binary = (train > 0).astype(np.float32).tocsr()
        if self.item_vectors.shape[1] == 0:
            raise ValueError(
                "ContentBased needs item attributes and this dataset's schema declares none: declare "
                "some (source.schema) or use a model that learns from interactions alone"
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

    def item_embeddings_from_attributes(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised TF-IDF vectors of new items, weighted by the catalogue's IDF."""
        codes_np = codes.cpu().numpy()
        blocks = [
            _term_counts(codes_np[:, offset : offset + encoding.width], encoding.cardinality) * weights
            for (encoding, offset), weights in zip(self._item_fields, self._term_weights, strict=True)
        ]
        if not blocks:
            return torch.zeros(codes.shape[0], 0)
        return F.normalize(torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32)), dim=1)
