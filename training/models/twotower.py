"""Two-tower retrieval model with side features (Covington et al., 2016; Yi et al., 2019).

User tower: MLP over [user id embedding, one vector per declared user attribute, masked mean of the
point-in-time history items' embeddings]. Item tower: MLP over [item id embedding, one vector per
declared item attribute]. Attributes come from the dataset's schema through the generic
``training.attributes.AttributeEncoder`` (list attributes such as genres are summed: a multi-hot
projection; text words are averaged). Both outputs are
L2-normalised and score(u, i) = <u, i> / temperature, so the catalogue can be served by a
nearest-neighbour index over ``item_embeddings()``.

Loss: sampled softmax over the batch's candidates = every in-batch positive plus every row's uniform
negatives, de-duplicated (one shared set of at most B * (1 + num_negatives) items, one matmul; on a
small catalogue it covers most items, and an item repeated in the batch is never its own negative).
Another row's positive may be a false negative for this user; at B = 1024 and 1682 items that is the
price of not keeping a per-user mask. ``logq_correction`` subtracts log of each candidate's expected
draws (in-batch positives arrive in proportion to train popularity, negatives uniformly: the
mixed-sampling correction of Yang et al., 2020), which removes the popularity discount of in-batch
negatives. Off by default: with de-duplicated candidates the discount is small, and on ML-100K the
correction lowered valid NDCG@10 (full ranking rewards popular items).

History: the user tower pools the point-in-time history, which makes next-item prediction from the
most recent items an easy shortcut. Under leave_last_out that is the signal; under random_holdout the
held-out items are spread over the whole timeline and the shortcut hurts validation NDCG@10.
``history_dropout`` empties the history of a share of the training rows so the id and attributes
must carry the user on their own; ``pool_history: false`` drops the history input altogether: the configured
default, chosen on random_holdout validation data (bench/results/model_defaults.md). Cold users are then scored from attributes
only, and the instance's ``scores_from_history`` is False.

Cold start: with probability ``user_id_dropout`` a training row's user id is replaced by a shared
"unknown" row (index ``n_users``), so the tower learns to work from attributes + history alone;
``full_sort_predict_from_attributes`` (and user index -1) use that row. Items likewise: with
probability ``item_id_dropout`` an item's id becomes the "unknown" row (index ``n_items + 1``), and
items without a training interaction always use it, so they are scored from their attributes.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from training.attributes import AttributeEncoder, Attributes
from training.models.base import RecommenderModule, item_train_counts
from training.models.capabilities import (
    EmbedsNewItems,
    NeedsTrainMatrix,
    ScoresByDotProduct,
    ScoresColdItems,
    ScoresFromAttributes,
    ScoresFromHistory,
    UsesAttributes,
)


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout blocks, the last Linear without activation."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.extend([nn.ReLU(), nn.Dropout(dropout)])
    return nn.Sequential(*layers)


def masked_mean(embedded: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of ``embedded`` (..., L, d) where ``codes`` (..., L) != 0; zeros if all padding."""
    mask = (codes > 0).unsqueeze(-1).to(embedded.dtype)
    return (embedded * mask).sum(dim=-2) / mask.sum(dim=-2).clamp(min=1.0)


class TwoTower(
    RecommenderModule,
    UsesAttributes,
    ScoresColdItems,
    ScoresFromHistory,
    ScoresFromAttributes,
    EmbedsNewItems,
    NeedsTrainMatrix,
    ScoresByDotProduct,
):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        attributes: Attributes | None = None,
        embedding_size: int = 64,
        attribute_size: int = 16,
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.1,
        temperature: float = 0.1,
        user_id_dropout: float = 0.1,
        item_id_dropout: float = 0.1,
        history_dropout: float = 0.0,
        pool_history: bool = True,
        logq_correction: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        sparse_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["attributes"])
        self.n_users, self.n_items = n_users, n_items
        self.embedding_size, self.attribute_size = embedding_size, attribute_size
        self.hidden_sizes = list(hidden_sizes if hidden_sizes is not None else [128])
        self.dropout_rate, self.temperature = dropout, temperature
        self.user_id_dropout, self.item_id_dropout = user_id_dropout, item_id_dropout
        self.history_dropout, self.pool_history = history_dropout, pool_history
        # Without the history input an unknown user's history changes nothing: say so to the service.
        self.scores_from_history = pool_history
        self.logq_correction = logq_correction
        self.lr, self.weight_decay = lr, weight_decay
        self.unknown_user, self.unknown_item = n_users, n_items + 1
        self.user_id = nn.Embedding(n_users + 1, embedding_size, sparse=sparse_embeddings)
        self.history_item = nn.Embedding(n_items + 1, embedding_size, padding_idx=0, sparse=sparse_embeddings)
        self.item_id = nn.Embedding(n_items + 2, embedding_size, padding_idx=0, sparse=sparse_embeddings)
        for table in (self.user_id, self.history_item, self.item_id):
            nn.init.normal_(table.weight, std=0.05)
        with torch.no_grad():
            self.history_item.weight[0].zero_()
            self.item_id.weight[0].zero_()
        # Filled by set_train_matrix; saved in the state dict so a loaded artifact knows them too.
        self.register_buffer("item_in_train", torch.zeros(n_items + 1, dtype=torch.bool))
        self.register_buffer("item_log_count", torch.zeros(n_items + 1))
        attributes = attributes or Attributes.empty(n_users, n_items)
        a = attribute_size
        # Row n_users of the user attributes is the all-unknown row of users outside the index.
        self.user_attributes = AttributeEncoder(
            attributes.users, a, list_pooling="sum", init_std=0.05
        ).with_unknown_row()
        self.item_attributes = AttributeEncoder(attributes.items, a, list_pooling="sum", init_std=0.05)
        d, hidden = embedding_size, self.hidden_sizes
        self.user_tower = mlp([2 * d + self.user_attributes.n_fields * a, *hidden, d], dropout)
        self.item_tower = mlp([d + self.item_attributes.n_fields * a, *hidden, d], dropout)

    # ---- hooks ----------------------------------------------------------------------------------
    def set_train_matrix(self, matrix: sp.csr_matrix) -> None:
        """Which items have training interactions (others use the unknown id row) and their counts."""
        counts = item_train_counts(matrix)
        self.item_in_train.copy_(counts > 0)
        self.item_log_count.copy_(torch.log(counts.clamp(min=1.0)))

    # ---- towers ---------------------------------------------------------------------------------
    def _user_vectors(
        self, user_ids: torch.Tensor, user_attributes: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """(B, d) normalised user vectors; ``user_ids`` already mapped (unknown = n_users);
        ``user_attributes`` (B, fields, a) from ``self.user_attributes``."""
        if not self.pool_history:  # ablation switch: the history part of the input is then all zeros
            history = history[:, :0]
        parts = [
            self.user_id(user_ids),
            user_attributes.flatten(-2),
            masked_mean(self.history_item(history), history),
        ]
        return F.normalize(self.user_tower(torch.cat(parts, dim=-1)), dim=-1)

    def _item_vectors(self, items: torch.Tensor, id_rows: torch.Tensor) -> torch.Tensor:
        """(..., d) normalised item vectors of item indices ``items``; ``id_rows`` = id-table rows."""
        parts = [self.item_id(id_rows), self.item_attributes(items).flatten(-2)]
        return F.normalize(self.item_tower(torch.cat(parts, dim=-1)), dim=-1)

    def _item_id_rows(self, items: torch.Tensor) -> torch.Tensor:
        """Id rows: the item's own for trained items, the unknown row for items never in train."""
        known = self.item_in_train[items] | (items == 0)
        if not bool(self.item_in_train.any()):  # no train matrix given (bare module): trust every id
            known = torch.ones_like(known)
        return torch.where(known, items, torch.full_like(items, self.unknown_item))

    def _known_users(self, users: torch.Tensor) -> torch.Tensor:
        """Map user index -1 (or out of range) to the unknown row."""
        valid = (users >= 0) & (users < self.n_users)
        return torch.where(valid, users, torch.full_like(users, self.unknown_user))

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) item tower outputs (row 0 = padding, not a real item)."""
        items = torch.arange(self.n_items + 1, device=self.item_id.weight.device)
        return self._item_vectors(items, self._item_id_rows(items))

    def item_embeddings_from_attributes(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(B, d) item tower outputs of new items: the unknown id row (as for items never in train)
        and the encoded attributes."""
        ids = torch.full(codes.shape[:-1], self.unknown_item, dtype=torch.long, device=codes.device)
        parts = [self.item_id(ids), self.item_attributes.vectors(codes, numbers).flatten(-2)]
        return F.normalize(self.item_tower(torch.cat(parts, dim=-1)), dim=-1)

    # ---- training -------------------------------------------------------------------------------
    def _drop_ids(self, ids: torch.Tensor, rate: float, unknown: int) -> torch.Tensor:
        if not self.training or rate <= 0:
            return ids
        drop = torch.rand(ids.shape, device=ids.device) < rate
        return torch.where(drop, torch.full_like(ids, unknown), ids)

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, positives, history = batch["users"], batch["items"], batch["history"]
        user_rows = self._drop_ids(users, self.user_id_dropout, self.unknown_user)
        if self.history_dropout > 0:
            keep = torch.rand(history.shape[0], 1, device=history.device) >= self.history_dropout
            history = history * keep
        user_vectors = self._user_vectors(user_rows, self.user_attributes(users), history)
        # One shared, de-duplicated candidate set: in-batch positives + every row's uniform negatives.
        candidates, inverse = torch.unique(
            torch.cat([positives, batch["negatives"].reshape(-1)]), return_inverse=True
        )
        targets = inverse[: positives.shape[0]]
        id_rows = self._drop_ids(self._item_id_rows(candidates), self.item_id_dropout, self.unknown_item)
        item_vectors = self._item_vectors(candidates, id_rows)
        logits = user_vectors @ item_vectors.T / self.temperature  # (B, C), C <= B * (1 + K)
        if self.logq_correction:
            # Expected draws of each candidate: B * p_pop(i) (in-batch positives) + B*K / n (uniform).
            n_rows, n_neg = positives.shape[0], batch["negatives"].numel()
            popularity = torch.exp(self.item_log_count) * self.item_in_train
            p_pop = popularity[candidates] / popularity.sum().clamp(min=1.0)
            expected = n_rows * p_pop + n_neg / self.n_items
            logits = logits - torch.log(expected.clamp(min=1e-6))
        return F.cross_entropy(logits, targets)

    # ---- scoring --------------------------------------------------------------------------------
    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        rows = self._known_users(users)
        return self._score_all(self._user_vectors(rows, self.user_attributes(rows), history))

    def full_sort_predict_from_attributes(
        self, codes: torch.Tensor, numbers: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """Scores for users never seen in training, from their encoded attributes
        (``Attributes.users.encode``: codes (B, W), numbers (B, N)) and optional history (B, L)."""
        rows = torch.full((codes.shape[0],), self.unknown_user, device=codes.device)
        vectors = self.user_attributes.vectors(codes.long(), numbers.float())
        return self._score_all(self._user_vectors(rows, vectors, history))

    def _score_all(self, user_vectors: torch.Tensor) -> torch.Tensor:
        return user_vectors @ self.eval_cache("item_embeddings", self.item_embeddings).T / self.temperature

    # ---- retrieval by an inner-product index (additive: the scoring above is unchanged) -----------
    def dot_product_queries(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``full_sort_predict``'s user vectors, the temperature folded in."""
        rows = self._known_users(users)
        return self._user_vectors(rows, self.user_attributes(rows), history) / self.temperature

    def dot_product_items(self) -> torch.Tensor:
        return self.eval_cache("item_embeddings", self.item_embeddings)
