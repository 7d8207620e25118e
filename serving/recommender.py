"""Request-time recommendation logic, kept free of BentoML and Feast so it can be unit-tested directly.

The BentoML service (``serving/service.py``) is a thin HTTP shell around :class:`Recommender`: it looks
the user's recent history (and, for cold users, profile attributes) up in Feast and hands ids to this
class. Everything the hot path needs (popularity ranking, seen-item rows, normalised item embeddings)
is computed once in ``__init__``, so a request is one or two model forward passes plus a top-k.

How a user is represented (``Recommendation.strategy``):

- ``known_user``: the user was in the training data; the model's own scores.
- ``history``: unknown user, scored from the online item history (sequential models, ItemKNN, BPR...).
- ``attributes``: unknown user, scored from profile attributes (+ history) by a model implementing
  ``full_sort_predict_from_attributes`` whose artifact carries side features.
- ``popularity``: nothing usable; training popularity, flagged ``fallback``.
- ``session`` / ``history+session``: the request gave a ``session`` (the visitor's recent item ids,
  oldest first) and the model scored from a history that held it: the session alone (no user, an
  unknown user without online history), or the session appended to the online history (deduplicated
  by item, each item at its latest occurrence; for a known user of a model that reads histories, the
  training items stand in for a missing online history). Item-profile models
  (``AddsHistoryToKnownUser``: ItemKNN, EASE, Mult-VAE) add the session's items to a known user's
  training profile: ``history+session``. A model that scores a known user without a history keeps its
  usual strategy and says in ``note`` that the session only excluded its items.

Diversity: with ``diversity`` > 0 the top ``max(50, 5k)`` items by relevance are re-ranked by maximal
marginal relevance (``training.rerank``), item-item cosine from the model's item embeddings
(``EmbedsItems``), else the items' attributes (categorical and list fields: genres), else the model's
item similarity (ItemKNN) or training co-occurrence. ``diversity`` 0 is the relevance order itself.

Rankers (``is_ranker = True``: DeepFM, DIN, DIEN) packaged with a retriever serve in two stages: the
retriever ranks the whole catalogue (with exclusions) and keeps the top ``n_candidates``; the ranker's
``score_candidates`` orders them (Merlin-style retrieve-then-rank). Without a
retriever a ranker ranks the whole catalogue itself. Models with ``explain`` (DIN, DIEN) add, per
returned item, the history items that drove its score (``because_you_interacted_with``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from serving.ann import AnnIndexError, ItemIndex
from serving.request_models import MAX_SESSION_ITEMS
from training.artifact import (
    DEFAULT_HISTORY_LENGTH,
    ModelArtifact,
    load_model_artifact,
    trained_history_length,
)
from training.models.capabilities import (
    AddsHistoryToKnownUser,
    EmbedsItems,
    EmbedsNewItems,
    Explains,
    ItemSimilarity,
    RanksCandidates,
    RanksCandidatesFromAttributes,
    ScoresByDotProduct,
    ScoresFromAttributes,
    ScoresFromHistory,
    can,
)
from training.rerank import cosine_similarity, mmr, normalized_rows
from training.scoring import UNKNOWN_USER, ArtifactScorer, finite_top_k

DEFAULT_CANDIDATES = 200  # retrieval depth of two-stage serving
# ANN retrieval asks the index for this many times the items wanted, plus the excluded items (they may
# all be among the nearest): HNSW misses a few true neighbours, and exact re-scoring of a deeper pool
# recovers the exact top k from it.
ANN_OVERFETCH, ANN_MIN_FETCH = 4, 100
EXPLAIN_TOP = 3  # history items named per recommended item
# Model kinds whose scores depend on the history tensor: a known user without an online history gets
# the training items as context (unordered for "example" models, but better than an empty history).
_HISTORY_KINDS = {"sequential", "example"}

KNOWN_USER, HISTORY, ATTRIBUTES, POPULARITY = "known_user", "history", "attributes", "popularity"
SESSION, HISTORY_AND_SESSION = "session", "history+session"
# MMR re-ranks this many of the most relevant items: enough room to diversify, bounded per request.
DIVERSITY_MIN_CANDIDATES, DIVERSITY_CANDIDATES_PER_K = 50, 5
# A cold user's attributes in a model's vocabulary: (codes, standardised numbers), see training.attributes.
EncodedUser = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    title: str | None = None
    # History item ids the ranker attended to most for this item (DIN/DIEN ``explain``); else None.
    because_you_interacted_with: list[str] | None = None


class SessionTooLong(ValueError):
    """A request's session holds more items than ``MAX_SESSION_ITEMS``."""


@dataclass(frozen=True)
class Recommendation:
    user_id: str | None  # None: an anonymous visitor, known by its session only
    items: list[ScoredItem]
    fallback: bool
    fallback_reason: str | None = None
    history_used: int = 0  # history items (online and session) known to the model and given to it
    # known_user | history | attributes | popularity | session | history+session (module docstring)
    strategy: str = KNOWN_USER
    stages: list[str] = field(default_factory=list)  # e.g. ["retrieve:twotower@200", "rank:din"]
    note: str | None = None  # what was skipped and why (e.g. the ranker cannot score unknown users)
    unknown_session_items: list[str] = field(default_factory=list)  # session ids the model never saw


@dataclass(frozen=True)
class _UserScores:
    """Full-catalogue scores of one user by one model, with how the user was represented."""

    scores: torch.Tensor  # (n_items + 1,), column 0 = -inf
    strategy: str
    reason: str | None = None  # why the popularity fallback was used
    scored_by_model: bool = True  # False for the popularity fallback


@dataclass
class Recommender:
    """A loaded model artifact plus everything precomputed for fast requests.

    ``history_length`` is the number of columns of the history tensor handed to the model; sequential
    models were trained on right-aligned histories of this length (taken from the artifact's
    hyperparameters when it records one). ``retriever`` (rankers only) is the first stage of
    two-stage serving; it must index the same items (it was trained on the same split).
    """

    artifact: ModelArtifact
    history_length: int = DEFAULT_HISTORY_LENGTH
    titles: dict[str, str] = field(default_factory=dict)
    retriever: Recommender | None = None
    n_candidates: int = DEFAULT_CANDIDATES
    # Inner-product index over ``dot_product_items()`` (packaged for large catalogues, serving.ann):
    # full ranking then retrieves by it instead of scoring every item.
    ann: ItemIndex | None = None

    def __post_init__(self) -> None:
        art = self.artifact
        module = art.module
        module.eval()  # once: the request paths below do not switch modes (eval() walks every submodule)
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
        # Who is known, history alignment and exclusion: the rules the evaluator and drift monitor use.
        self.scorer = ArtifactScorer(art, self.history_length)
        # Models that score a user unknown at training time from an item history declare it
        # (``ScoresFromHistory``: ItemKNN, BPR, LightGCN, the sequential models, ...).
        self.uses_history = can(module, ScoresFromHistory)
        self.uses_attributes = (
            art.attributes is not None
            and bool(art.attributes.users.fields)
            and can(module, ScoresFromAttributes)
        )
        self.is_ranker = can(module, RanksCandidates)
        # /similar_items for an item outside the catalogue, given by its attributes.
        self.embeds_new_items = (
            can(module, EmbedsNewItems) and art.attributes is not None and bool(art.attributes.items.fields)
        )
        self.can_explain = can(module, Explains)
        if self.retriever is not None:
            if not self.is_ranker:
                raise ValueError(
                    f"model {self.name!r} is not a ranker (is_ranker/score_candidates): no retriever"
                )
            if list(self.retriever.item_ids) != list(self.item_ids):
                raise ValueError(
                    f"retriever {self.retriever.name!r} indexes different items than ranker {self.name!r}: "
                    "both must be trained on the same split (artifact meta split_dir)"
                )
            if self.n_candidates < 1:
                raise ValueError(f"n_candidates must be >= 1, got {self.n_candidates}")
        self._dot_items: torch.Tensor | None = None  # (n_items + 1, d): exact re-scoring of ANN candidates
        if self.ann is not None:
            if not can(module, ScoresByDotProduct):
                raise ValueError(
                    f"model {self.name!r} does not score by a dot product: it cannot use an ANN index"
                )
            with torch.no_grad():
                self._dot_items = module.dot_product_items().detach().float().contiguous()
            if self.ann.n_items != self.n_items or self.ann.dim != self._dot_items.shape[1]:
                raise AnnIndexError(
                    f"ANN index of {self.ann.n_items} items x {self.ann.dim} dims does not fit model {self.name!r} "
                    f"({self.n_items} items x {self._dot_items.shape[1]} dims); repackage the model"
                )
        self._item_vectors = _item_vectors(art)  # row-normalised (n_items + 1, d) or None
        self._item_similarity = _item_similarity(art)  # rows -> (len(rows), n_items + 1), or None
        self._attribute_vectors = _attribute_vectors(art)  # (n_items + 1, vocabulary) unit rows or None
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
        # What MMR re-ranking measures redundancy by: embeddings first, then what an item is.
        self.diversity_method = (
            "embedding_cosine"
            if self._item_vectors is not None
            else "attribute_cosine"
            if self._attribute_vectors is not None
            else self.similarity_method
        )

    # ---- request helpers -------------------------------------------------------------------------

    def map_history(self, item_ids: list[str] | None) -> list[int]:
        """Item ids (oldest first) -> model item indices, dropping ids the model has never seen.

        Only the newest ``history_length`` known items are kept: that is what the model was trained on.
        """
        return self.scorer.item_rows(item_ids)[-self.history_length :]

    def history_tensor(self, indices: list[int]) -> torch.Tensor:
        """Right-aligned (newest item in the last column), zero-padded (1, history_length) tensor."""
        return self.scorer.align([indices])

    def seen_indices(self, user_idx: int | None) -> np.ndarray:
        return self.scorer.seen(UNKNOWN_USER if user_idx is None else user_idx)

    def known_user(self, user_id: str) -> int | None:
        """The model's row for a user it trained on, else None (see ``training.scoring``)."""
        row = self.scorer.user_row(user_id)
        return None if row == UNKNOWN_USER else row

    def wants_attributes(self, user_id: str) -> bool:
        """Whether profile attributes would change the answer for ``user_id``.

        True only for users unknown to the model when a stage can score from attributes: the service
        reads the Feast profile row just then, so known users (the hot path) pay nothing for it.
        """
        if self.known_user(user_id) is not None:
            return False
        return self.uses_attributes or (self.retriever is not None and self.retriever.uses_attributes)

    def encode_attributes(self, user_features: dict[str, Any] | None) -> EncodedUser | None:
        """A cold user's attributes encoded in this model's vocabulary (``Attributes.users.encode``);
        None when none of them is known to it."""
        if not user_features or self.artifact.attributes is None:
            return None
        codes, numbers = self.artifact.attributes.users.encode([user_features])
        return (codes[0], numbers[0]) if codes.any() or numbers.any() else None

    def unknown_attributes(self) -> EncodedUser:
        """All-unknown encoded attributes (a cold user scored from history alone)."""
        codes, numbers = self.artifact.attributes.users.encode([{}])  # type: ignore[union-attr]
        return codes[0], numbers[0]

    def describe(self) -> dict[str, Any]:
        """The serving stages and cold-start paths, for ``/metadata``."""
        if self.retriever is not None:
            stages = [
                {"stage": "retrieve", "model": self.retriever.name, "candidates": self.n_candidates},
                {"stage": "rank", "model": self.name, "method": "score_candidates"},
            ]
        elif self.ann is not None:
            stages = [
                {"stage": "ann", "model": self.name, "n_items": self.ann.n_items, **self.ann.settings()},
                {"stage": "full_ranking", "model": self.name, "used_for": "users scored from attributes"},
            ]
        else:
            stages = [{"stage": "full_ranking", "model": self.name}]
        first = self.retriever or self
        cold = [ATTRIBUTES] if first.uses_attributes else []
        cold += [HISTORY] if first.uses_history else []
        return {
            "stages": stages,
            "two_stage": self.retriever is not None,
            "is_ranker": self.is_ranker,
            "cold_start": [*cold, POPULARITY],
            "ranks_unknown_users": self.retriever is None or self._ranks_unknown_users,
            "explanations": self.can_explain,
            "new_items_from_attributes": self.embeds_new_items,
        }

    # ---- endpoints -------------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str | None,
        history: list[str] | None,
        k: int,
        exclude_seen: bool = True,
        user_features: dict[str, Any] | None = None,
        candidates: int | None = None,
        session: list[str] | None = None,
        diversity: float = 0.0,
    ) -> Recommendation:
        """Top-``k`` items for ``user_id`` given its online ``history`` (item ids, oldest first).

        Known user -> the model's scores. Unknown user -> scores from ``user_features`` (age, gender,
        occupation) when the model supports attributes, else from the history when it can use one,
        else training popularity, flagged as a fallback. ``session`` (item ids, oldest first, at most
        ``MAX_SESSION_ITEMS``; ``user_id`` None for an anonymous visitor) joins the history (module
        docstring); its ids unknown to the model are reported, not refused. ``exclude_seen`` drops
        the user's training items, the online history and the session. A ranker with a retriever
        re-ranks the retriever's top ``candidates`` (default ``n_candidates``). ``diversity`` in
        [0, 1] re-ranks the most relevant items by MMR (0: relevance order).
        """
        if session is not None and len(session) > MAX_SESSION_ITEMS:
            raise SessionTooLong(
                f"session holds {len(session)} items; at most {MAX_SESSION_ITEMS} (the newest) are accepted"
            )
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must lie in [0, 1], got {diversity}")
        user_id = None if user_id is None else str(user_id)
        user_idx = None if user_id is None else self.known_user(user_id)
        stored = self.scorer.item_rows(history)
        if user_idx is not None and not stored and self.kind in _HISTORY_KINDS:
            # No online history (e.g. the store was reset): the training items are the best context.
            stored = [int(i) for i in self.seen_indices(user_idx)]
        session_rows = self.scorer.item_rows(session)
        unknown_session = [str(i) for i in session or [] if str(i) not in self.item_index]
        # All of it is excluded; the newest items are the model's input.
        online = merge_history(stored, session_rows) if session_rows else stored
        hist = online[-self.history_length :]  # this model's input; a retriever takes its own tail
        row = UNKNOWN_USER if user_idx is None else user_idx
        # MMR needs more than k relevant items to choose from.
        depth = k if diversity == 0.0 else max(DIVERSITY_MIN_CANDIDATES, DIVERSITY_CANDIDATES_PER_K * k)

        note: str | None = None
        ann_strategy = self._ann_strategy(user_idx, hist, user_features) if self.retriever is None else None
        if ann_strategy is not None:
            scored = _UserScores(torch.empty(0), ann_strategy)
            values, indices, fetched = self._ann_top(row, hist, online, exclude_seen, depth)
            stages = [f"ann:{self.name}@{fetched}"]
            ranked_by_self = True
            read_history = self._reads_history(ann_strategy)
        elif self.retriever is None:
            scored = self._user_scores(user_idx, hist, user_features)
            scores = self._excluded(scored.scores, row, online, exclude_seen)
            values, indices = finite_top_k(scores, depth)
            stages = [f"full_ranking:{self.name}"]
            ranked_by_self = scored.scored_by_model
            read_history = self._reads_history(scored.strategy)
        else:
            retriever_row = None if user_id is None else self.retriever.known_user(user_id)
            scored = self.retriever._user_scores(retriever_row, online, user_features)
            scores = self._excluded(scored.scores, row, online, exclude_seen)
            pool_depth = max(int(candidates or self.n_candidates), depth)
            _, pool = finite_top_k(scores, pool_depth)
            stages = [f"retrieve:{self.retriever.name}@{pool_depth}"]
            read_history = self.retriever._reads_history(scored.strategy)
            codes = None if user_idx is not None else self._ranker_codes(user_features)
            if pool.numel() and (user_idx is not None or codes is not None or self._ranks_unknown_users):
                rank_scores = self._score_candidates(-1 if user_idx is None else user_idx, hist, pool, codes)
                values, order = finite_top_k(rank_scores, depth)
                indices = pool[order]
                stages.append(f"rank:{self.name}")
                ranked_by_self = True
                read_history = read_history or self.kind in _HISTORY_KINDS
            else:
                values, indices = finite_top_k(scores, depth)
                ranked_by_self = False
                if pool.numel():
                    note = f"ranker {self.name!r} cannot score users unknown to it: retrieval order"
        if diversity > 0.0 and indices.numel():
            picked = mmr(values, self._candidate_similarity(indices), k, diversity)
            values, indices = values[picked], indices[picked]
            stages.append(f"rerank:mmr(diversity={diversity:g},{self.diversity_method})@{depth}")
        strategy = scored.strategy
        if session_rows:
            # A profile model's known user has a history before the session: its training items.
            had_history = bool(stored) or (
                user_idx is not None and can(self.artifact.module, AddsHistoryToKnownUser)
            )
            strategy, session_note = self._session_strategy(strategy, read_history, had_history)
            note = "; ".join(n for n in (note, session_note) if n) or None
        explanations = None
        may_explain = user_idx is not None or self._ranks_unknown_users  # index -1 only if declared
        if ranked_by_self and may_explain and self.can_explain and hist and indices.numel():
            explanations = self._explain(-1 if user_idx is None else user_idx, hist, indices)
        reason = scored.reason
        if user_id is None and scored.strategy == POPULARITY and not session_rows:
            reason = "anonymous visitor without a known session item"
        return Recommendation(
            user_id=user_id,
            items=self._scored_items(values, indices, explanations),
            fallback=scored.strategy == POPULARITY,
            fallback_reason=reason,
            history_used=len(hist),
            strategy=strategy,
            stages=stages,
            note=note,
            unknown_session_items=unknown_session,
        )

    def similar_items(self, item_id: str, k: int) -> list[ScoredItem]:
        """The ``k`` items most similar to ``item_id`` (cosine); raises ``KeyError`` for unknown ids."""
        idx = self.item_index.get(str(item_id))
        if idx is None:
            raise KeyError(str(item_id))
        if self._item_vectors is not None:
            scores = self._item_vectors @ self._item_vectors[idx]
        elif self._item_similarity is not None:
            scores = self._item_similarity(torch.tensor([idx]))[0]
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

    def similar_to_attributes(self, item_features: dict[str, Any], k: int) -> list[ScoredItem]:
        """The ``k`` catalogue items most similar (cosine) to a new item described by ``item_features``.

        Raises ``ValueError`` when the model cannot embed an item from attributes, or when none of the
        given attributes is known to it (the vector would be that of an unknown item, the same for all).
        """
        if not self.embeds_new_items:
            raise ValueError(
                f"model {self.name!r} cannot place an item it was not trained on from item_features; "
                "models that can: those declaring EmbedsNewItems (twotower, deepfm, content)"
            )
        codes, numbers = self.artifact.attributes.items.encode([item_features])  # type: ignore[union-attr]
        if not (codes.any() or numbers.any()):
            raise ValueError(
                f"item_features {sorted(item_features)}: no value is known to model {self.name!r} "
                "(unseen categories and empty values carry no information)"
            )
        with torch.no_grad():
            vector = self.artifact.module.item_embeddings_from_attributes(
                torch.from_numpy(codes), torch.from_numpy(numbers)
            )[0].float()
        scores = self._item_vectors @ (vector / vector.norm().clamp_min(1e-8))  # type: ignore[operator]
        scores[0] = -torch.inf
        return self._top_k(scores, k)

    # ---- internals -------------------------------------------------------------------------------

    @property
    def _ranks_unknown_users(self) -> bool:
        """A ranker may score index -1 only if it declares a cold path (``scores_from_history``)."""
        return can(self.artifact.module, ScoresFromHistory)

    def _user_scores(
        self, user_idx: int | None, hist: list[int], user_features: dict[str, Any] | None
    ) -> _UserScores:
        """This model's full-catalogue scores for one user (its row, None: unknown to the model), by
        the best path the user allows."""
        if user_idx is not None:
            return _UserScores(self._score(user_idx, hist), KNOWN_USER)
        codes = self.encode_attributes(user_features) if self.uses_attributes else None
        if codes is not None:
            return _UserScores(self._score_attributes(codes, hist), ATTRIBUTES)
        if hist and self.uses_history:
            return _UserScores(self._score(-1, hist), HISTORY)
        if hist and self.uses_attributes:
            # No attribute the model knows, but it scores a cold user's history through the same path.
            return _UserScores(self._score_attributes(self.unknown_attributes(), hist), ATTRIBUTES)
        if not hist:
            reason = "unknown user without history" + (" or known attributes" if self.uses_attributes else "")
        else:
            reason = f"unknown user; model {self.name!r} cannot score from history"
        return _UserScores(self._popularity.clone(), POPULARITY, reason, scored_by_model=False)

    def _ann_strategy(
        self, user_idx: int | None, hist: list[int], user_features: dict[str, Any] | None
    ) -> str | None:
        """The strategy ``_user_scores`` would take when it is one the ANN index serves (the model's own
        dot product: a known user, or an unknown one from its history), else None (exact scoring)."""
        if self.ann is None:
            return None
        if user_idx is not None:
            return KNOWN_USER
        if not (hist and self.uses_history):
            return None
        if self.uses_attributes and self.encode_attributes(user_features) is not None:
            return None  # scored from attributes: not the dot product the index holds
        return HISTORY

    @torch.no_grad()
    def _ann_top(
        self, row: int, hist: list[int], online: list[int], exclude_seen: bool, depth: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Top ``depth`` (values, item rows) by the ANN index, exactly re-scored, exclusions applied;
        and how many candidates the index was asked for."""
        assert self.ann is not None and self._dot_items is not None
        module = self.artifact.module
        users = torch.tensor([row], dtype=torch.long)
        query = module.dot_product_queries(users, self.history_tensor(hist))[0].float()
        excluded = (
            np.unique(np.concatenate([self.seen_indices(None if row < 0 else row), online]))
            if exclude_seen
            else []
        )
        fetch = min(self.n_items, max(ANN_MIN_FETCH, ANN_OVERFETCH * depth) + len(excluded))
        candidates = self.ann.search(query.numpy(), fetch)
        if len(excluded):
            candidates = candidates[~np.isin(candidates, excluded)]
        pool = torch.from_numpy(candidates)
        scores = self._dot_items[pool] @ query
        scores = scores.masked_fill(torch.isnan(scores), -torch.inf)
        untrained = self.artifact.untrained_items  # the rule of exact scoring, kept for any index given
        if untrained is not None:
            scores = scores.masked_fill(untrained[pool], -torch.inf)
        values, order = finite_top_k(scores, depth)
        return values, pool[order], fetch

    def _reads_history(self, strategy: str) -> bool:
        """Whether this model's scores of a user represented by ``strategy`` depend on the history."""
        if strategy == KNOWN_USER:
            # Most general models score a known user from its own row; profile models add the history.
            return self.kind in _HISTORY_KINDS or can(self.artifact.module, AddsHistoryToKnownUser)
        return strategy in (HISTORY, ATTRIBUTES)

    def _session_strategy(
        self, strategy: str, read_history: bool, had_history: bool
    ) -> tuple[str, str | None]:
        """The strategy of an answer to a request with a session, and a note when the session did not
        shape the scores (the model's ``strategy`` without it, ``read_history``: whether a stage
        read the history, ``had_history``: whether one came before the session)."""
        if not read_history:
            if strategy == POPULARITY:
                why = f"model {self.name!r} cannot score from a history"
            else:
                why = f"model {self.name!r} scores a known user from its training interactions, not a history"
            return strategy, f"session ignored for scoring ({why}); its items are excluded"
        if strategy == ATTRIBUTES:
            return strategy, "session appended to the history given with the attributes"
        return (HISTORY_AND_SESSION if had_history else SESSION), None

    def _candidate_similarity(self, indices: torch.Tensor) -> torch.Tensor:
        """(N, N) item-item similarity of the item rows ``indices`` (N,), by ``diversity_method``."""
        if self._item_vectors is not None:
            vectors = self._item_vectors[indices]
            return vectors @ vectors.T
        if self._attribute_vectors is not None:
            vectors = self._attribute_vectors[indices]
            return vectors @ vectors.T
        if self._item_similarity is not None:
            return self._item_similarity(indices)[:, indices]
        columns = self._cooc_csc[:, indices.numpy()].T
        return cosine_similarity(torch.from_numpy(np.asarray(columns.todense(), dtype=np.float32)))

    def _score(self, user_idx: int, hist: list[int]) -> torch.Tensor:
        return self.scorer.scores([user_idx], [hist])[0]

    def _excluded(
        self, scores: torch.Tensor, row: int, online: list[int], exclude_seen: bool
    ) -> torch.Tensor:
        """``scores`` without the user's training items and online history (when ``exclude_seen``)."""
        if not exclude_seen:
            return scores
        return self.scorer.exclude(scores.reshape(1, -1), [row], [online])[0]

    @torch.no_grad()
    def _score_attributes(self, encoded: EncodedUser, hist: list[int]) -> torch.Tensor:
        module = self.artifact.module
        codes, numbers = _batch_of_one(encoded)
        scores = module.full_sort_predict_from_attributes(codes, numbers, self.history_tensor(hist))[
            0
        ].float()
        scores[0] = -torch.inf
        return scores.masked_fill(torch.isnan(scores), -torch.inf)

    def _ranker_codes(self, user_features: dict[str, Any] | None) -> EncodedUser | None:
        """A cold user's codes for the ranker if it can rank from attributes (else None)."""
        module = self.artifact.module
        if not (self.uses_attributes or can(module, RanksCandidatesFromAttributes)):
            return None
        return self.encode_attributes(user_features)

    @torch.no_grad()
    def _score_candidates(
        self, user_idx: int, hist: list[int], pool: torch.Tensor, codes: EncodedUser | None = None
    ) -> torch.Tensor:
        """The ranker's scores (N,) of the candidate item indices ``pool`` (N,).

        ``codes`` (a cold user's encoded attributes) go to the optional hook
        ``score_candidates_from_attributes(codes, numbers, history, candidates)`` when the model has it,
        else to the contract's ``full_sort_predict_from_attributes``, read at the candidates (a
        full-catalogue pass, paid on the cold path only). Without codes: ``score_candidates``.
        """
        module = self.artifact.module
        history, candidates = self.history_tensor(hist), pool.reshape(1, -1)
        if codes is not None:
            user_codes, user_numbers = _batch_of_one(codes)
            if can(module, RanksCandidatesFromAttributes):
                scores = module.score_candidates_from_attributes(
                    user_codes, user_numbers, history, candidates
                )
                scores = scores[0].float()
            else:
                scores = module.full_sort_predict_from_attributes(user_codes, user_numbers, history)[0, pool]
                scores = scores.float()
        else:
            users = torch.tensor([user_idx], dtype=torch.long)
            scores = module.score_candidates(users, history, candidates)[0].float()
        return scores.masked_fill(torch.isnan(scores), -torch.inf)

    @torch.no_grad()
    def _explain(self, user_idx: int, hist: list[int], items: torch.Tensor) -> list[list[str]]:
        """Per item of ``items`` (k,), the ids of the history items the model attended to most."""
        module = self.artifact.module
        users = torch.tensor([user_idx], dtype=torch.long)
        top = module.explain(users, self.history_tensor(hist), items.reshape(1, -1), top=EXPLAIN_TOP)[0]
        out = []
        for row in top.tolist():
            picked = dict.fromkeys(int(i) for i in row if 0 < int(i) <= self.n_items)  # ordered, unique
            out.append([str(x) for x in self._item_ids_arr[list(picked)]] if picked else [])
        return out

    def _top_k(self, scores: torch.Tensor, k: int) -> list[ScoredItem]:
        values, indices = finite_top_k(scores, k)
        return self._scored_items(values, indices, None)

    def _scored_items(
        self, values: torch.Tensor, indices: torch.Tensor, explanations: list[list[str]] | None
    ) -> list[ScoredItem]:
        if not indices.numel():
            return []
        ids = self._item_ids_arr[indices.tolist()]
        titles = self.titles
        reasons = explanations or [None] * len(ids)
        return [
            ScoredItem(item, float(v), titles.get(item), because)
            for item, v, because in zip(ids, values.tolist(), reasons, strict=True)
        ]


def _batch_of_one(encoded: EncodedUser) -> tuple[torch.Tensor, torch.Tensor]:
    codes, numbers = encoded
    return (
        torch.as_tensor(codes, dtype=torch.long).reshape(1, -1),
        torch.as_tensor(numbers, dtype=torch.float32).reshape(1, -1),
    )


def _item_vectors(art: ModelArtifact) -> torch.Tensor | None:
    """Row-normalised item embeddings (n_items + 1, d) of a model that declares ``EmbedsItems``, else None."""
    if not can(art.module, EmbedsItems):
        return None
    with torch.no_grad():
        vectors = art.module.item_embeddings()
    return normalized_rows(vectors.detach())


def _attribute_vectors(art: ModelArtifact) -> torch.Tensor | None:
    """Multi-hot item attributes (categorical and list fields) of an artifact that carries them, scaled to
    unit rows once here (re-ranking then takes only dot products per request), else None."""
    if art.attributes is None:
        return None
    vectors = art.attributes.items.multi_hot()
    if vectors.shape[1] == 0 or vectors.shape[0] != art.n_items + 1 or not bool(vectors.any()):
        return None
    return normalized_rows(vectors)


def merge_history(history: list[int], session: list[int]) -> list[int]:
    """``session`` appended to ``history`` (both oldest first), each item once at its latest occurrence."""
    merged = list(dict.fromkeys(reversed(history + session)))  # newest first, first occurrence kept
    merged.reverse()
    return merged


def _item_similarity(art: ModelArtifact) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Rows of the item x item similarity of a model that declares ``ItemSimilarity`` (ItemKNN), else None."""
    return art.module.similarity_rows if can(art.module, ItemSimilarity) else None


def history_length_of(artifact_dir: Path) -> int:
    """The history length the model was trained with (``model.json``), else the default."""
    try:
        info: dict[str, Any] = json.loads((Path(artifact_dir) / "model.json").read_text())
    except (OSError, ValueError):
        return DEFAULT_HISTORY_LENGTH
    return trained_history_length(info) or DEFAULT_HISTORY_LENGTH


def load_titles(path: Path) -> dict[str, str]:
    """``titles.json`` written by packaging (item id -> title); empty when the catalogue has no titles."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items() if v is not None}


def load_recommender(
    artifact_dir: Path,
    titles_path: Path | None = None,
    retriever_dir: Path | None = None,
    n_candidates: int = DEFAULT_CANDIDATES,
    ann_dir: Path | None = None,
) -> Recommender:
    """Load an artifact directory into a ready :class:`Recommender` (done once per server process).

    ``retriever_dir`` (a ranker's packaged retriever artifact, if any) becomes the first stage;
    ``ann_dir`` (the packaged ANN index, if packaging built one) serves full ranking.
    """
    artifact = load_model_artifact(artifact_dir)
    titles = load_titles(titles_path) if titles_path is not None else {}
    retriever = None
    if retriever_dir is not None and (Path(retriever_dir) / "model.json").is_file():
        retrieval_artifact = load_model_artifact(retriever_dir)
        retriever = Recommender(
            retrieval_artifact,
            history_length=retrieval_artifact.history_length or DEFAULT_HISTORY_LENGTH,
            titles=titles,
        )
    ann = None
    if ann_dir is not None and Path(ann_dir).is_dir():
        ann = ItemIndex.load(Path(ann_dir), n_items=artifact.n_items)
    return Recommender(
        artifact,
        history_length=artifact.history_length or DEFAULT_HISTORY_LENGTH,
        titles=titles,
        retriever=retriever,
        n_candidates=n_candidates,
        ann=ann,
    )


def seen_matrix_items(seen: sp.csr_matrix, user_idx: int) -> list[int]:
    """Item indices of one user's training row (for tests and diagnostics)."""
    return seen.indices[seen.indptr[user_idx] : seen.indptr[user_idx + 1]].tolist()
