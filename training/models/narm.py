"""NARM (Li et al., 2017): a GRU encoder with a global and an attentive local summary of the sequence.

Input: a right-aligned sequence of item indices (0 = padding). Item embedding -> dropout -> GRU
(packed, so left padding never enters the recurrence; see ``gru4rec.run_gru``), giving states h_1..h_L.
At position t:
- global encoder c_g = h_t (the last hidden state of the prefix);
- local encoder c_l = sum_j alpha_tj h_j over the real items j <= t, with
  alpha_tj = v^T sigmoid(A1 h_t + A2 h_j) (the query is the last hidden state h_t; as in the paper and
  RecBole the weights are not softmax-normalised; padding and future positions get weight 0);
- c_t = [c_g; c_l] -> dropout -> B (linear, 2H -> embedding size) -> scores = B c_t . item embeddings
  (the paper's bilinear decoder).

Training: full softmax cross-entropy at EVERY position, like SASRec's ``ce`` loss, with causal
attention (the local summary at t uses only h_1..h_t), so one window trains all its prefixes in one
forward and c_t at the last position is exactly what ``full_sort_predict`` computes. The causal
attention builds a (B, L, L, H) tensor; with batch_size 128, history_length 50 and H 100 that is 32M floats
per copy, fine on CPU. ``full_sort_predict`` needs only the last query: (B, L, H).

Numbers on ML-100K: bench/leaderboard.md; how its defaults were set: bench/results/model_defaults.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import RecommenderModule
from training.models.capabilities import EmbedsItems, ScoresFromHistory
from training.models.gru4rec import run_gru


class NARM(RecommenderModule, ScoresFromHistory, EmbedsItems):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 64,
        hidden_size: int = 100,
        n_layers: int = 1,
        dropout: float = 0.25,
        ct_dropout: float = 0.5,
        history_length: int = 50,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items, self.history_length = n_users, n_items, history_length
        self.lr, self.weight_decay = lr, weight_decay
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, n_layers, batch_first=True, bias=False)
        self.a_1 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.a_2 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_t = nn.Linear(hidden_size, 1, bias=False)
        self.ct_dropout = nn.Dropout(ct_dropout)
        self.b = nn.Linear(2 * hidden_size, embedding_size, bias=False)
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def states(self, history: torch.Tensor) -> torch.Tensor:
        """GRU states (B, L, H) of a right-aligned history; padding positions are zero."""
        return run_gru(self.gru, self.emb_dropout(self.item_embedding(history)), history)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """Session representations B c_t (B, L, d) at every position, causal local attention."""
        h = self.states(history)
        real = (history > 0).to(h.dtype)
        length = history.shape[1]
        causal = torch.ones(length, length, dtype=h.dtype, device=h.device).tril()  # [t, j]: j <= t
        weights = causal.unsqueeze(0) * real.unsqueeze(1)  # (B, L_t, L_j)
        q = self.a_1(h).unsqueeze(2)  # (B, L, 1, H): query h_t
        k = self.a_2(h).unsqueeze(1)  # (B, 1, L, H)
        alpha = self.v_t(torch.sigmoid(q + k)).squeeze(-1) * weights  # (B, L_t, L_j)
        c_local = alpha @ h  # (B, L, H)
        return self.b(self.ct_dropout(torch.cat([h, c_local], dim=-1)))

    def encode_last(self, history: torch.Tensor) -> torch.Tensor:
        """``encode(history)[:, -1]`` without the other positions' attention: (B, d)."""
        h = self.states(history)
        last = h[:, -1]
        alpha = self.v_t(torch.sigmoid(self.a_1(last).unsqueeze(1) + self.a_2(h))).squeeze(-1)
        alpha = alpha * (history > 0).to(h.dtype)  # (B, L)
        c_local = (alpha.unsqueeze(-1) * h).sum(1)
        return self.b(self.ct_dropout(torch.cat([last, c_local], dim=-1)))

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encode(batch["history"])
        targets = batch["targets"]
        valid = targets > 0
        logits = hidden[valid] @ self.item_embedding.weight.T  # (T, n_items + 1)
        logits[:, 0] = -torch.inf
        return F.cross_entropy(logits, targets[valid])

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if history.shape[1] > self.history_length:
            history = history[:, -self.history_length :]
        return self.encode_last(history) @ self.item_embedding.weight.T
