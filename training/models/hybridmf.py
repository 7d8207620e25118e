"""Hybrid matrix factorisation: MF with user and item side features (LightFM, Kula 2015), BPR loss.

A user's vector is its id vector plus one vector per declared user attribute; an item's vector is its
id vector plus one vector per declared item attribute (``training.attributes.AttributeEncoder``:
categorical and numeric-bucket embeddings, list/text token means, a learned direction per numeric
value). score(u, i) = <p_u, q_i> + b_i, where b_i = the item's id bias + the sum of its attributes'
biases. Attributes enter linearly, as in LightFM and SVDFeature (Chen et al., 2012): the difference
from the two-tower model is that there is no MLP, so this is still MF: the user and item vectors
are sums of embeddings and a score is their dot product plus the item's bias.

Trained with the BPR pairwise loss of ``bpr.py`` (uniform negatives, L2 on the vectors the batch
touched).

Cold start. An item without a training interaction has no id vector and no id bias (its id row is
masked by ``item_in_train``), so it is scored from its attributes alone. With probability
``id_dropout`` a training row's user and item id parts are dropped, so the attribute vectors learn to
carry an entity on their own. Without it the id vectors absorb the signal (LightFM's identity
features do the same) and a cold item's attribute vector is barely trained. A user the model has never
seen is its attributes' vector (``full_sort_predict_from_attributes``) plus the mean of its history
items' vectors (the BPR fold-in). A user index of -1 without attributes is the all-unknown attribute
row plus that mean.

With an ids-only schema the model is BPR-MF with an item bias.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from training.attributes import AttributeEncoder, Attributes
from training.models.base import RecommenderModule, item_train_counts, latent_factor_tables
from training.models.capabilities import (
    EmbedsNewItems,
    NeedsTrainMatrix,
    ScoresByDotProduct,
    ScoresColdItems,
    ScoresFromAttributes,
    ScoresFromHistory,
    UsesAttributes,
)


class HybridMF(
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
        id_dropout: float = 0.1,
        lr: float = 2e-3,
        reg_weight: float = 5e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["attributes"])
        self.n_users, self.n_items = n_users, n_items
        self.id_dropout, self.lr, self.reg_weight = id_dropout, lr, reg_weight
        self.user_id, self.item_id = latent_factor_tables(n_users, n_items, embedding_size)
        self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        nn.init.zeros_(self.item_bias.weight)
        attributes = attributes or Attributes.empty(n_users, n_items)
        # Row n_users of the user attributes is the all-unknown row of users outside the index.
        self.user_attributes = AttributeEncoder(
            attributes.users, embedding_size, init_std=0.1
        ).with_unknown_row()
        self.item_attributes = AttributeEncoder(attributes.items, embedding_size, init_std=0.1)
        self.item_attribute_bias = AttributeEncoder(attributes.items, 1, init_std=0.0)
        # Filled by set_train_matrix; in the state dict so a loaded artifact knows them too.
        self.register_buffer("item_in_train", torch.zeros(n_items + 1, dtype=torch.bool))

    def set_train_matrix(self, matrix: sp.csr_matrix) -> None:
        """Which items have training interactions: the others are scored from their attributes."""
        self.item_in_train.copy_(item_train_counts(matrix) > 0)

    # ---- vectors --------------------------------------------------------------------------------
    def _kept(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """1 where a training row keeps its id part, 0 where ``id_dropout`` drops it (1 when scoring)."""
        if not self.training or self.id_dropout <= 0:
            return torch.ones(shape, device=device)
        return (torch.rand(shape, device=device) >= self.id_dropout).float()

    def _item_id_weight(self, items: torch.Tensor) -> torch.Tensor:
        """1 for items with training interactions, 0 for the others (and for padding)."""
        if not bool(self.item_in_train.any()):  # no train matrix given (bare module): trust every id
            return (items > 0).float()
        return self.item_in_train[items].float()

    def _items(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) vectors and (...) biases of item indices ``items``."""
        keep = self._item_id_weight(items) * self._kept(items.shape, items.device)
        vectors = self.item_id(items) * keep.unsqueeze(-1) + self.item_attributes(items).sum(-2)
        bias = self.item_bias(items).squeeze(-1) * keep + self.item_attribute_bias(items).sum((-2, -1))
        return vectors, bias

    def _users(self, users: torch.Tensor) -> torch.Tensor:
        """(B, d) vectors of user indices: id + attributes; a user outside the index (-1) has no id part
        and the all-unknown attribute row."""
        known = (users >= 0) & (users < self.n_users)
        rows = torch.where(known, users, torch.full_like(users, self.n_users))
        keep = known.float() * self._kept(users.shape, users.device)
        ids = self.user_id(users.clamp(min=0, max=self.n_users - 1)) * keep.unsqueeze(-1)
        return ids + self.user_attributes(rows).sum(-2)

    def _catalogue(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors (n_items + 1, d) and biases (n_items + 1) of every item (row 0 = padding)."""
        items = torch.arange(self.n_items + 1, device=self.item_id.weight.device)
        return self._items(items)

    def _history_mean(self, history: torch.Tensor) -> torch.Tensor:
        """(B, d) mean vector of the history items (zeros for an empty history)."""
        vectors = self.eval_cache("catalogue", self._catalogue)[0][history]
        mask = (history > 0).unsqueeze(-1).to(vectors.dtype)
        return (vectors * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def item_embeddings(self) -> torch.Tensor:
        return self.eval_cache("catalogue", self._catalogue)[0]

    def item_embeddings_from_attributes(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(B, d) vectors of new items from their encoded attributes (no id part, as for cold items)."""
        return self.item_attributes.vectors(codes.long(), numbers.float()).sum(-2)

    # ---- training -------------------------------------------------------------------------------
    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = self._users(batch["users"])
        pos, pos_bias = self._items(batch["positives"])
        neg, neg_bias = self._items(batch["negatives"])
        margin = (user * (pos - neg)).sum(-1) + pos_bias - neg_bias
        reg = (user.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()) / user.shape[0]
        return -F.logsigmoid(margin).mean() + self.reg_weight * reg

    # ---- scoring --------------------------------------------------------------------------------
    def _score(self, user_vectors: torch.Tensor) -> torch.Tensor:
        vectors, bias = self.eval_cache("catalogue", self._catalogue)
        return user_vectors @ vectors.T + bias.unsqueeze(0)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        vectors = self._users(users)
        unknown = (users < 0) | (users >= self.n_users)
        if bool(unknown.any()):  # folded in: the unknown attribute row + the mean of their history
            vectors = vectors + self._history_mean(history) * unknown.unsqueeze(1)
        return self._score(vectors)

    def full_sort_predict_from_attributes(
        self, codes: torch.Tensor, numbers: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """Scores for users never seen in training, from their encoded attributes
        (``Attributes.users.encode``: codes (B, W), numbers (B, N)) and optional history (B, L)."""
        vectors = self.user_attributes.vectors(codes.long(), numbers.float()).sum(-2)
        return self._score(vectors + self._history_mean(history))

    # ---- retrieval by an inner-product index (additive: the scoring above is unchanged) -----------
    def dot_product_queries(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``full_sort_predict``'s user vectors with a trailing 1, which picks up the item bias column."""
        vectors = self._users(users)
        unknown = (users < 0) | (users >= self.n_users)
        if bool(unknown.any()):
            vectors = vectors + self._history_mean(history) * unknown.unsqueeze(1)
        return torch.cat([vectors, torch.ones_like(vectors[:, :1])], dim=1)

    def dot_product_items(self) -> torch.Tensor:
        """(n_items + 1, d + 1): the item vectors and, as the last column, the item biases."""
        vectors, bias = self.eval_cache("catalogue", self._catalogue)
        return torch.cat([vectors, bias.unsqueeze(1)], dim=1)
