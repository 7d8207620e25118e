"""What a model can do, declared on its class, derived once by the registry.

A model states each ability by inheriting its mixin (``class DIN(CTRRanker, Explains, ...)``); the
trainer, the evaluator, the artifact loader, the packager and the service ask ``can(model, X)`` rather
than probing for methods, and ``tests/unit/test_capabilities.py`` runs one contract test per
capability over every registered model that declares it. A mixin only names the contract (and
documents it); the model implements the methods.

| capability | contract | who uses it |
|---|---|---|
| ``UsesAttributes`` | constructor argument ``attributes`` (``training.attributes.Attributes``, None = ids only) | trainer, artifact loader |
| ``ScoresColdItems`` | items without a training interaction get meaningful scores (from attributes) | evaluator, service |
| ``ScoresFromHistory`` | ``full_sort_predict(-1, history)`` scores a user unknown to the model from its history; an instance may switch it off (``scores_from_history = False``) | service, drift monitor |
| ``AddsHistoryToKnownUser`` | ``full_sort_predict(user, history)`` of a user known to the model depends on ``history`` too (its items join the user's training profile), so a session moves a known user's scores | service (strategy ``history+session``) |
| ``ScoresFromAttributes`` | ``full_sort_predict_from_attributes(codes, numbers, history)`` for a user unknown to the model | service |
| ``RanksCandidates`` | ``score_candidates(users, history, candidates)``: a second stage behind a retriever | packager, service |
| ``RanksCandidatesFromAttributes`` | ``score_candidates_from_attributes(codes, numbers, history, candidates)`` | service |
| ``Explains`` | ``explain(users, history, candidates, top)``: the history items behind each score | service |
| ``EmbedsItems`` | ``item_embeddings() -> (n_items + 1, d)`` | service (``/similar_items``) |
| ``EmbedsNewItems`` | ``item_embeddings_from_attributes(codes, numbers) -> (B, d)``, in the space of ``item_embeddings()``, for items outside the catalogue | service (``/similar_items`` with ``item_features``) |
| ``ScoresByDotProduct`` | ``full_sort_predict(users, history) == dot_product_queries(users, history) @ dot_product_items().T`` (an item bias is a column of the items with a 1 in the queries) | packager, service (ANN index for large catalogues), evaluator (block-wise full ranking at large catalogues) |
| ``ItemSimilarity`` | ``similarity`` (n_items + 1, n_items + 1), sparse or dense, and ``similarity_rows(rows) -> (len(rows), n_items + 1)`` | service (``/similar_items``, diversity) |
| ``NeedsTrainMatrix`` | ``set_train_matrix(csr)`` before training/scoring | trainer |
| ``UsesKnowledgeGraph`` | constructor argument ``knowledge_graph`` (``training.knowledge_graph.KnowledgeGraph``, None = no graph) | trainer, artifact loader |
| ``PointwiseMetrics`` | ``pointwise_metrics(examples) -> {name: value}`` on test examples | evaluator |
| ``RanksTopK`` | ``top_k(users, history, blocked, k) -> (B, k)``: the list a stable descending sort of ``full_sort_predict`` gives, ``blocked`` (a sparse (B, n_items + 1) matrix) and untrained items left out, without scoring the whole catalogue | evaluator (full ranking at large catalogues) |
"""

from __future__ import annotations

from typing import Any


class Capability:
    """Base of every declared ability."""


class UsesAttributes(Capability):
    """Built from the split's encoded user/item attributes (constructor argument ``attributes``)."""


class ScoresColdItems(Capability):
    """Ranks items that have no training interaction (from their attributes)."""


class ScoresFromHistory(Capability):
    """Scores a user it has never seen (index -1) from an item history."""

    scores_from_history: bool = True  # an instance may switch it off (e.g. a model without history input)


class AddsHistoryToKnownUser(Capability):
    """Scores a user it trained on from its training items AND the given history (item-profile models),
    so what a known user does after training, a session included, moves its scores at once."""


class ScoresFromAttributes(Capability):
    """Scores a user it has never seen from encoded attributes."""

    def full_sort_predict_from_attributes(self, codes: Any, numbers: Any, history: Any) -> Any:
        raise NotImplementedError


class RanksCandidates(Capability):
    """A candidate ranker: the second stage behind a retrieval model."""

    def score_candidates(self, users: Any, history: Any, candidates: Any) -> Any:
        raise NotImplementedError


class RanksCandidatesFromAttributes(Capability):
    """Ranks a cold user's candidates from encoded attributes without a full-catalogue pass."""

    def score_candidates_from_attributes(
        self, codes: Any, numbers: Any, history: Any, candidates: Any
    ) -> Any:
        raise NotImplementedError


class Explains(Capability):
    """Names the history items behind each candidate's score."""

    def explain(self, users: Any, history: Any, candidates: Any, top: int = 3) -> Any:
        raise NotImplementedError


class EmbedsItems(Capability):
    """Has one vector per item (item similarity). Default: the model's ``item_embedding`` table."""

    def item_embeddings(self) -> Any:
        return self.item_embedding.weight  # type: ignore[attr-defined]


class EmbedsNewItems(EmbedsItems):
    """Embeds an item it was never given (not in the catalogue) from encoded attributes, in the space of
    ``item_embeddings()``; an item of the catalogue without training events embeds the same both ways."""

    def item_embeddings_from_attributes(self, codes: Any, numbers: Any) -> Any:
        raise NotImplementedError


class ScoresByDotProduct(Capability):
    """Scores a user as the dot product of one query vector with each item's vector, so an inner-product
    index over ``dot_product_items()`` retrieves its top items without scoring the whole catalogue.

    ``dot_product_queries(users, history) -> (B, d)`` and ``dot_product_items() -> (n_items + 1, d)``
    (row 0 = padding) reproduce ``full_sort_predict(users, history)`` as their product (up to float
    rounding), every term included: an item bias is one more item column, matched by a 1 in the query;
    a temperature divides the query.
    """

    def dot_product_queries(self, users: Any, history: Any) -> Any:
        raise NotImplementedError

    def dot_product_items(self) -> Any:
        raise NotImplementedError


class ItemSimilarity(Capability):
    """Keeps an item x item similarity (``similarity``, (n_items + 1, n_items + 1)) and reads rows of it
    densely (``similarity_rows(rows)``)."""


class NeedsTrainMatrix(Capability):
    """Needs the training user x item matrix (a graph, item counts) before it trains or scores."""

    def set_train_matrix(self, matrix: Any) -> None:
        raise NotImplementedError


class UsesKnowledgeGraph(Capability):
    """Built from the item knowledge graph (constructor argument ``knowledge_graph``), which it keeps
    as ``self.knowledge_graph`` so that the artifact can store it beside the weights."""


class PointwiseMetrics(Capability):
    """Reports its own metrics on the test examples (rating error, AUC/LogLoss, off-policy reward)."""

    def pointwise_metrics(self, examples: Any) -> dict[str, float]:
        raise NotImplementedError


class RanksTopK(Capability):
    """Gives each user's top-k list without a score for every catalogue item (``training.topk``).

    ``top_k(users, history, blocked, k) -> (B, k)`` item indices, best first: exactly the list of a
    stable descending sort of ``full_sort_predict(users, history)`` (ties to the lower item index),
    without the items of ``blocked`` (a SciPy CSR (B, n_items + 1): the user's seen items) and without
    items that have no training interaction; padding (0) ends the list of a user with fewer than k
    rankable items. Full ranking of a large catalogue then costs what the model's answer costs, not
    users x catalogue.
    """

    def top_k(self, users: Any, history: Any, blocked: Any, k: int) -> Any:
        raise NotImplementedError


ALL: tuple[type[Capability], ...] = (
    UsesAttributes,
    ScoresColdItems,
    ScoresFromHistory,
    AddsHistoryToKnownUser,
    ScoresFromAttributes,
    RanksCandidates,
    RanksCandidatesFromAttributes,
    Explains,
    EmbedsItems,
    EmbedsNewItems,
    ScoresByDotProduct,
    ItemSimilarity,
    NeedsTrainMatrix,
    UsesKnowledgeGraph,
    PointwiseMetrics,
    RanksTopK,
)


def capabilities_of(model: Any) -> frozenset[type[Capability]]:
    """The capabilities a model class (or instance) declares."""
    cls = model if isinstance(model, type) else type(model)
    return frozenset(c for c in ALL if issubclass(cls, c))


def can(model: Any, capability: type[Capability]) -> bool:
    """Whether a model class or instance declares ``capability`` (for ``ScoresFromHistory``: and has it on)."""
    cls = model if isinstance(model, type) else type(model)
    if not issubclass(cls, capability):
        return False
    if capability is ScoresFromHistory and not isinstance(model, type):
        return bool(model.scores_from_history)
    return True
