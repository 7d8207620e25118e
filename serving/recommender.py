"""Request-time recommendation logic, kept free of BentoML and Feast so it can be unit-tested directly.

The BentoML service (``serving/service.py``) is a thin HTTP shell around :class:`Recommender`: it looks
the user's recent history up in Feast and hands ids to this class. Everything the hot path needs
(popularity ranking, seen-item rows, normalised item embeddings) is computed once in ``__init__``,
so a request is one model forward pass (or one row lookup) plus a top-k.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.artifact import ModelArtifact, load_model_artifact

# Hyperparameter names under which models record the length of the history they were trained on.
_MAX_LEN_KEYS = ("max_seq_length", "max_seq_len", "max_len", "max_length", "history_length", "seq_len")
DEFAULT_HISTORY_LENGTH = 50  # FeatureConfig.history_length: what the online store keeps at most
# Non-sequential models that can score a user unknown at training time from an item history
# (ItemKNN sums neighbours of the history; BPR folds the user in as the mean history embedding).
# A model can also declare it with a class attribute ``scores_from_history = True``.
_HISTORY_MODELS = {"itemknn", "bpr"}


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    title: str | None = None


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: list[ScoredItem]
    fallback: bool
    fallback_reason: str | None = None
    history_used: int = 0  # online history items that were known to the model


@dataclass
class Recommender:
    """A loaded model artifact plus everything precomputed for fast requests.

    ``history_length`` is the number of columns of the history tensor handed to the model; sequential
    models were trained on right-aligned histories of this length (taken from the artifact's
    hyperparameters when it records one).
    """

    artifact: ModelArtifact
    history_length: int = DEFAULT_HISTORY_LENGTH
    titles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        art = self.artifact
        self.name = art.name
        self.kind = art.kind
        self.n_items = art.n_items
        self.item_ids = art.item_ids
        self.item_index = art.item_index
        self.user_index = art.user_index
        self._item_ids_arr = np.asarray([""] + list(art.item_ids), dtype=object)  # index 0 = padding
        pop = torch.as_tensor(np.asarray(art.popularity, dtype=np.float32)).clone()
        pop[0] = -torch.inf
        self._popularity = pop
        self._seen = art.seen.tocsr()
        self.uses_history = (
            self.kind == "sequential"
            or self.name in _HISTORY_MODELS
            or bool(getattr(art.module, "scores_from_history", False))
        )
        self._item_vectors = _item_vectors(art)  # row-normalised (n_items + 1, d) or None
        self._item_similarity = _item_similarity(art)  # (n_items + 1, n_items + 1) or None
        if self._item_vectors is None and self._item_similarity is None:
            # Co-occurrence cosine from the training matrix: one sparse column product per request.
            binary = (self._seen > 0).astype(np.float32)
            self._cooc_csc = binary.tocsc()
            self._cooc_csr = binary.tocsr()
            self._cooc_norm = np.sqrt(np.asarray(binary.sum(axis=0)).ravel()) + 1e-8
        self.similarity_method = (
            "embedding_cosine"
            if self._item_vectors is not None
            else "item_similarity"
            if self._item_similarity is not None
            else "cooccurrence_cosine"
        )

    # ---- request helpers -------------------------------------------------------------------------

    def map_history(self, item_ids: list[str] | None) -> list[int]:
        """Item ids (oldest first) -> model item indices, dropping ids the model has never seen.

        Only the newest ``history_length`` known items are kept: that is what the model was trained on.
        """
        if not item_ids:
            return []
        index = self.item_index
        mapped = [index[i] for i in map(str, item_ids) if i in index]
        return mapped[-self.history_length :]

    def history_tensor(self, indices: list[int]) -> torch.Tensor:
        """Right-aligned (newest item in the last column), zero-padded (1, history_length) tensor."""
        row = torch.zeros(1, self.history_length, dtype=torch.long)
        if indices:
            tail = indices[-self.history_length :]
            row[0, self.history_length - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
        return row

    def seen_indices(self, user_idx: int | None) -> np.ndarray:
        if user_idx is None or user_idx < 0 or user_idx >= self._seen.shape[0]:
            return np.empty(0, dtype=np.int64)
        start, end = self._seen.indptr[user_idx], self._seen.indptr[user_idx + 1]
        return self._seen.indices[start:end]

    # ---- endpoints -------------------------------------------------------------------------------

    def recommend(
        self, user_id: str, history: list[str] | None, k: int, exclude_seen: bool = True
    ) -> Recommendation:
        """Top-``k`` items for ``user_id`` given its online ``history`` (item ids, oldest first).

        Known user -> the model's scores. Unknown user with a history the model can use (sequential
        models, ItemKNN) -> scores from that history. Otherwise -> training popularity, flagged as a
        fallback. ``exclude_seen`` drops the user's training items and the online history.
        """
        user_id = str(user_id)
        hist = self.map_history(history)
        user_idx = self.user_index.get(user_id)
        fallback_reason: str | None = None
        if user_idx is not None:
            if self.kind == "sequential" and not hist:
                # No online history (e.g. the store was reset): the training items are the best context.
                hist = [int(i) for i in self.seen_indices(user_idx)][-self.history_length :]
            scores = self._score(user_idx, hist)
        elif hist and self.uses_history:
            scores = self._score(-1, hist)
        else:
            fallback_reason = (
                "unknown user without history"
                if not hist
                else f"unknown user; model {self.name!r} cannot score from history"
            )
            scores = self._popularity.clone()
        if exclude_seen:
            drop = np.concatenate([self.seen_indices(user_idx), np.asarray(hist, dtype=np.int64)])
            if drop.size:
                scores[torch.from_numpy(drop.astype(np.int64))] = -torch.inf
        return Recommendation(
            user_id=user_id,
            items=self._top_k(scores, k),
            fallback=fallback_reason is not None,
            fallback_reason=fallback_reason,
            history_used=len(hist),
        )

    def similar_items(self, item_id: str, k: int) -> list[ScoredItem]:
        """The ``k`` items most similar to ``item_id`` (cosine); raises ``KeyError`` for unknown ids."""
        idx = self.item_index.get(str(item_id))
        if idx is None:
            raise KeyError(str(item_id))
        if self._item_vectors is not None:
            scores = self._item_vectors @ self._item_vectors[idx]
        elif self._item_similarity is not None:
            scores = self._item_similarity[idx].clone()
        else:
            column = self._cooc_csc[:, idx]
            co = np.asarray((self._cooc_csr.T @ column).todense()).ravel()
            scores = torch.from_numpy((co / (self._cooc_norm * self._cooc_norm[idx])).astype(np.float32))
        scores = scores.float()
        scores[0] = -torch.inf
        scores[idx] = -torch.inf
        # Zero similarity means "no evidence", not "similar": never return those as neighbours.
        if self.similarity_method != "embedding_cosine":
            scores[scores <= 0] = -torch.inf
        return self._top_k(scores, k)

    # ---- internals -------------------------------------------------------------------------------

    def _score(self, user_idx: int, hist: list[int]) -> torch.Tensor:
        users = torch.tensor([user_idx], dtype=torch.long)
        scores = self.artifact.score(users, self.history_tensor(hist))[0]
        return scores.masked_fill(torch.isnan(scores), -torch.inf)  # nan_to_num would clip -inf

    def _top_k(self, scores: torch.Tensor, k: int) -> list[ScoredItem]:
        k = min(k, scores.shape[0])
        values, indices = torch.topk(scores, k)
        keep = torch.isfinite(values)
        values, indices = values[keep].tolist(), indices[keep].tolist()
        ids = self._item_ids_arr[indices] if indices else []
        titles = self.titles
        return [ScoredItem(item, float(v), titles.get(item)) for item, v in zip(ids, values, strict=True)]


def _item_vectors(art: ModelArtifact) -> torch.Tensor | None:
    """Row-normalised item embeddings (n_items + 1, d) if the model has them, else None.

    Preferred: a model method ``item_embeddings()``; otherwise any ``nn.Embedding`` of the module with
    exactly ``n_items + 1`` rows (how BPR/SASRec-style models store item vectors).
    """
    module = art.module
    vectors: torch.Tensor | None = None
    with torch.no_grad():
        if callable(getattr(module, "item_embeddings", None)):
            vectors = module.item_embeddings()
        else:
            for _, sub in module.named_modules():
                if isinstance(sub, torch.nn.Embedding) and sub.num_embeddings == art.n_items + 1:
                    vectors = sub.weight
                    break
    if vectors is None:
        return None
    vectors = vectors.detach().float()
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _item_similarity(art: ModelArtifact) -> torch.Tensor | None:
    """An item x item similarity matrix (ItemKNN keeps one as a buffer), else None."""
    sim = getattr(art.module, "similarity", None)
    n = art.n_items + 1
    if isinstance(sim, torch.Tensor) and tuple(sim.shape) == (n, n):
        return sim.detach().float()
    return None


def history_length_of(artifact_dir: Path) -> int:
    """The history length the model was trained with (from model.json hyperparameters), else the default."""
    try:
        info: dict[str, Any] = json.loads((Path(artifact_dir) / "model.json").read_text())
    except (OSError, ValueError):
        return DEFAULT_HISTORY_LENGTH
    for source in (info.get("hparams") or {}, info.get("meta") or {}):
        for key in _MAX_LEN_KEYS:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_HISTORY_LENGTH


def load_titles(path: Path) -> dict[str, str]:
    """``titles.json`` written by packaging (item id -> title); empty when the catalogue has no titles."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items() if v is not None}


def load_recommender(artifact_dir: Path, titles_path: Path | None = None) -> Recommender:
    """Load an artifact directory into a ready :class:`Recommender` (done once per server process)."""
    artifact = load_model_artifact(artifact_dir)
    titles = load_titles(titles_path) if titles_path is not None else {}
    return Recommender(artifact, history_length=history_length_of(artifact_dir), titles=titles)


def seen_matrix_items(seen: sp.csr_matrix, user_idx: int) -> list[int]:
    """Item indices of one user's training row (for tests and diagnostics)."""
    return seen.indices[seen.indptr[user_idx] : seen.indptr[user_idx + 1]].tolist()
