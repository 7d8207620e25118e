"""SASRec (Kang & McAuley, 2018): next-item prediction with a causal self-attention encoder.

Input: a right-aligned sequence of item indices (0 = padding). Item embedding + learned positional
embedding -> dropout -> LayerNorm -> ``n_layers`` pre-LN Transformer blocks with a causal mask ->
LayerNorm. The hidden state at position t scores every item by a dot product with the (tied) item
embeddings and is trained to predict the item at t + 1, at every position of the sequence at once.

Loss: full softmax cross-entropy over the whole catalogue (``loss_type: ce``, default) or BCE with
one uniformly sampled negative per position (``loss_type: bce``, the original paper). CE is the
default because it optimises what the full-ranking evaluation measures (the rank of the true item
among all items) and costs only a (tokens x n_items) matmul on catalogues of this size (the CE/BCE
comparison on ML-100K: bench/results/model_defaults.md). RecBole defaults SASRec to CE too.
For catalogues where (tokens x n_items) logits do not fit in memory, switch to ``bce``.

Attention mask: causal, and padding keys are masked, except that every position may attend to
itself (a padding query then sees only itself rather than nothing, avoiding NaN rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import RecommenderModule
from training.models.capabilities import EmbedsItems, ScoresFromHistory


class SASRec(RecommenderModule, ScoresFromHistory, EmbedsItems):
    causal = True  # a position attends to itself and older positions only (BERT4Rec: to all)

    def __init__(
        self,
        n_users: int,
        n_items: int,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
        history_length: int = 50,
        loss_type: str = "ce",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if loss_type not in ("ce", "bce"):
            raise ValueError(f"sasrec loss_type must be 'ce' or 'bce', not {loss_type!r}")
        self.save_hyperparameters()
        self.n_users, self.n_items, self.history_length = n_users, n_items, history_length
        self.n_heads, self.loss_type = n_heads, loss_type
        self.lr, self.weight_decay = lr, weight_decay
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(history_length, hidden_size)
        self.input_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_size, n_heads, inner_size, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(hidden_size)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, d) of a right-aligned history (B, L), L <= history_length."""
        length = history.shape[1]
        positions = torch.arange(self.history_length - length, self.history_length, device=history.device)
        x = self.item_embedding(history) + self.position_embedding(positions).unsqueeze(0)
        x = self.input_norm(self.dropout(x))
        pad = history == 0
        x = x * (~pad).unsqueeze(-1)
        allowed = ~pad.unsqueeze(1)
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=history.device).unsqueeze(0)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.n_heads, dim=0)  # (B * heads, L, L)
        return self.output_norm(self.encoder(x, mask=mask))

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encode(batch["history"])
        targets = batch["targets"]
        valid = targets > 0
        states = hidden[valid]  # (T, d): only positions with a real next item
        if self.loss_type == "ce":
            logits = states @ self.item_embedding.weight.T
            logits[:, 0] = -torch.inf
            return F.cross_entropy(logits, targets[valid])
        pos = (states * self.item_embedding(targets[valid])).sum(-1)
        neg = (states * self.item_embedding(batch["negatives"][valid])).sum(-1)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if history.shape[1] > self.history_length:
            history = history[:, -self.history_length :]
        last = self.encode(history)[:, -1]
        return last @ self.output_weights().T

    def output_weights(self) -> torch.Tensor:
        """(n_items + 1, d): the vectors the hidden state scores items with (here the input table, tied)."""
        return self.item_embedding.weight
