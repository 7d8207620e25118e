"""DeepFM (Guo et al., 2017): a CTR ranker, FM interactions + a deep MLP over shared field embeddings.

Fields (each an embedding of ``embedding_size`` plus a scalar first-order weight, stored as one row
of ``embedding_size + 1``):
- request side: user id, one field per declared user attribute (the dataset's schema, through the
  generic ``training.attributes.AttributeEncoder``), and two CONTEXT fields derived from the
  request's history tensor, so they exist at serving time without a feature lookup: the most recent
  history item (what the user is looking at now) and the bucketed history length (activity level);
- item side: item id and one field per declared item attribute (list and text attributes: the mean
  of their token embeddings).
logit = bias + sum of first-order weights + FM second order (sum over field pairs of <v_a, v_b>) +
MLP(concat of field vectors). Trained with BCE: each example's positive vs ``num_negatives`` uniform
negatives.

Full ranking would cost one MLP pass per (user, item) pair; the first MLP layer is linear in the
concatenation, so it is split into a request part and an item part (computed once per user and once
per item) and only the upper layers run per pair. The FM term splits the same way:
sum_{a<b} <v_a, v_b> = (|S|^2 - Q) / 2 with S = S_request + S_item and Q the summed squared norms.
Both paths compute the same function as the plain concatenation.

Cold start: as in the two-tower model, user and item ids are replaced by a shared "unknown" row with
probability ``user_id_dropout`` / ``item_id_dropout`` while training; users unknown to the model
(index -1, or ``full_sort_predict_from_attributes``) and items without a training interaction use it.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch
from torch import nn

from training.attributes import AttributeEncoder, Attributes
from training.models.base import CandidateRanker, item_train_counts
from training.models.capabilities import (
    EmbedsNewItems,
    NeedsTrainMatrix,
    ScoresColdItems,
    ScoresFromAttributes,
    ScoresFromHistory,
    UsesAttributes,
)
from training.models.twotower import mlp

HISTORY_BUCKETS = 8  # 0 items, 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64+


def history_length_bucket(history: torch.Tensor) -> torch.Tensor:
    """(B,) activity level: 0 for no history, else floor(log2(length)) + 1, capped."""
    length = (history > 0).sum(dim=1)
    bucket = torch.floor(torch.log2(length.clamp(min=1).float())).long() + 1
    return torch.where(length > 0, bucket, torch.zeros_like(bucket)).clamp(max=HISTORY_BUCKETS - 1)


class DeepFM(
    CandidateRanker,
    UsesAttributes,
    ScoresColdItems,
    ScoresFromHistory,
    ScoresFromAttributes,
    EmbedsNewItems,
    NeedsTrainMatrix,
):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        attributes: Attributes | None = None,
        embedding_size: int = 16,
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.2,
        user_id_dropout: float = 0.1,
        item_id_dropout: float = 0.1,
        score_chunk_items: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["attributes"])
        self.n_users, self.n_items = n_users, n_items
        self.k = embedding_size
        self.hidden_sizes = list(hidden_sizes if hidden_sizes is not None else [128, 64])
        self.user_id_dropout, self.item_id_dropout = user_id_dropout, item_id_dropout
        self.score_chunk_items = score_chunk_items
        self.lr, self.weight_decay = lr, weight_decay
        self.unknown_user, self.unknown_item = n_users, n_items + 1
        width = embedding_size + 1  # field vector + first-order weight
        self.user_id = nn.Embedding(n_users + 1, width)
        self.item_id = nn.Embedding(n_items + 2, width, padding_idx=0)
        self.last_item = nn.Embedding(n_items + 1, width, padding_idx=0)
        self.history_bucket = nn.Embedding(HISTORY_BUCKETS, width)
        self.bias = nn.Parameter(torch.zeros(1))
        attributes = attributes or Attributes.empty(n_users, n_items)
        # Row n_users of the user attributes is the all-unknown row of users outside the index.
        self.user_attributes = AttributeEncoder(attributes.users, width, init_std=0.01).with_unknown_row()
        self.item_attributes = AttributeEncoder(attributes.items, width, init_std=0.01)
        user_fields = 3 + self.user_attributes.n_fields  # id, attributes, last item, history bucket
        item_fields = 1 + self.item_attributes.n_fields  # id, attributes
        first, *rest = self.hidden_sizes
        self.deep_user = nn.Linear(user_fields * embedding_size, first)
        self.deep_item = nn.Linear(item_fields * embedding_size, first, bias=False)
        self.deep_top = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), mlp([first, *rest, 1], dropout))
        self.register_buffer("item_in_train", torch.zeros(n_items + 1, dtype=torch.bool))
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        for table in (self.user_id, self.item_id, self.last_item, self.history_bucket):
            nn.init.normal_(table.weight, std=0.01)
        with torch.no_grad():
            self.item_id.weight[0].zero_()
            self.last_item.weight[0].zero_()

    # ---- hooks ----------------------------------------------------------------------------------
    def set_train_matrix(self, matrix: sp.csr_matrix) -> None:
        """Items with training interactions keep their id row; the others use the unknown row."""
        self.item_in_train.copy_(item_train_counts(matrix) > 0)

    # ---- fields ---------------------------------------------------------------------------------
    def _drop_ids(self, ids: torch.Tensor, rate: float, unknown: int) -> torch.Tensor:
        if not self.training or rate <= 0:
            return ids
        drop = torch.rand(ids.shape, device=ids.device) < rate
        return torch.where(drop, torch.full_like(ids, unknown), ids)

    def _request_fields(
        self, user_rows: torch.Tensor, user_attributes: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """(B, user fields, k + 1) request-side field rows; ``user_attributes`` (B, attributes, k + 1)."""
        last = history[:, -1] if history.shape[1] > 0 else torch.zeros_like(user_rows)
        return torch.cat(
            [
                self.user_id(user_rows).unsqueeze(-2),
                user_attributes,
                self.last_item(last).unsqueeze(-2),
                self.history_bucket(history_length_bucket(history)).unsqueeze(-2),
            ],
            dim=-2,
        )

    def _item_fields(self, items: torch.Tensor) -> torch.Tensor:
        """(..., item fields, k + 1) item-side field rows of item indices ``items``."""
        known = self.item_in_train[items] | (items == 0) | ~self.item_in_train.any()
        rows = torch.where(known, items, torch.full_like(items, self.unknown_item))
        rows = self._drop_ids(rows, self.item_id_dropout, self.unknown_item)
        return torch.cat([self.item_id(rows).unsqueeze(-2), self.item_attributes(items)], dim=-2)

    def _request(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Request fields of user indices (-1 = unknown). A dropped id keeps the user's attributes: the
        model must learn to score from them, as it will for a user it has never seen."""
        valid = (users >= 0) & (users < self.n_users)
        rows = torch.where(valid, users, torch.full_like(users, self.unknown_user))
        ids = self._drop_ids(rows, self.user_id_dropout, self.unknown_user)
        return self._request_fields(ids, self.user_attributes(rows), history)

    # ---- scoring --------------------------------------------------------------------------------
    def _logits(self, request: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) of request fields (B, Fu, k+1) x item fields (B or 1, N, Fi, k+1)."""
        k = self.k
        u_vec, u_first = request[..., :k], request[..., k].sum(-1)  # (B, Fu, k), (B,)
        i_vec, i_first = items[..., :k], items[..., k].sum(-1)  # (., N, Fi, k), (., N)
        u_sum, i_sum = u_vec.sum(-2), i_vec.sum(-2)  # (B, k), (., N, k)
        u_sq, i_sq = (u_vec**2).sum((-2, -1)), (i_vec**2).sum((-2, -1))
        total = u_sum.unsqueeze(1) + i_sum
        fm = 0.5 * ((total**2).sum(-1) - u_sq.unsqueeze(1) - i_sq)
        hidden = self.deep_user(u_vec.flatten(-2)).unsqueeze(1) + self.deep_item(i_vec.flatten(-2))
        deep = self.deep_top(hidden).squeeze(-1)
        return self.bias + u_first.unsqueeze(1) + i_first + fm + deep

    def score_candidates(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, N) of candidate items (B, N) for each request."""
        return self._logits(self._request(users, history), self._item_fields(candidates))

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self._score_all(self._request(users, history))

    def full_sort_predict_from_attributes(
        self, codes: torch.Tensor, numbers: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """Scores for users never seen in training, from their encoded attributes
        (``Attributes.users.encode``: codes (B, W), numbers (B, N)) and optional history (B, L)."""
        rows = torch.full((codes.shape[0],), self.unknown_user, device=codes.device)
        vectors = self.user_attributes.vectors(codes.long(), numbers.float())
        return self._score_all(self._request_fields(rows, vectors, history))

    def _score_all(self, request: torch.Tensor) -> torch.Tensor:
        """All items' logits; item fields computed once, pairs scored in item chunks to bound memory."""
        items = self.eval_cache(
            "item_fields",
            lambda: self._item_fields(torch.arange(self.n_items + 1, device=request.device)).unsqueeze(0),
        )
        step = max(1, self.score_chunk_items)
        chunks = [self._logits(request, items[:, s : s + step]) for s in range(0, items.shape[1], step)]
        return torch.cat(chunks, dim=1)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, item fields * k): concatenated item-side field vectors (for /similar_items)."""
        items = torch.arange(self.n_items + 1, device=self.item_id.weight.device)
        return self._item_fields(items)[..., : self.k].flatten(-2)

    def item_embeddings_from_attributes(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(B, item fields * k) of new items: the unknown id row (as for items never in train) and
        the encoded attributes, laid out as ``item_embeddings``."""
        ids = torch.full(codes.shape[:-1], self.unknown_item, dtype=torch.long, device=codes.device)
        fields = torch.cat(
            [self.item_id(ids).unsqueeze(-2), self.item_attributes.vectors(codes, numbers)], dim=-2
        )
        return fields[..., : self.k].flatten(-2)
