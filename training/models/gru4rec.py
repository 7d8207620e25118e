"""GRU4Rec (Hidasi et al., 2016; the full-softmax variant of RecBole): next-item prediction with a GRU.

Input: a right-aligned sequence of item indices (0 = padding). Item embedding -> dropout -> ``n_layers``
GRU layers -> linear projection to the embedding size. The state at position t scores every item by
a dot product with the (tied) item embeddings and is trained to predict the item at t + 1, at every
position of the sequence at once, with full softmax cross-entropy over the catalogue (as SASRec's
default ``ce`` loss, for the same reason: it optimises what the full-ranking evaluation measures).

Padding: sequences are right-aligned, so the padding comes FIRST in time. A GRU run over the padded
row would step through the padding before the first real item, and even with zero (padding)
embeddings the gate biases move the state away from h0 = 0, so the final state would depend on how
much padding a row has (the training windows, the evaluation histories and the service's histories
are padded differently). ``run_gru`` therefore left-aligns each row (a per-row rotation, one
``gather``), runs the GRU on a ``PackedSequence`` of the true lengths, so it never sees a padding
step, and rotates the outputs back into the right-aligned layout (padding positions give zeros).
This is exact, unlike masking the states after the fact, and keeps the fused multi-layer GRU kernel
(a Python loop over time steps with a per-step mask would be exact too but several times slower).
Scoring uses the output at the last column, which is the newest real item.

Numbers on ML-100K: bench/leaderboard.md; how its defaults were set: bench/results/model_defaults.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.models.base import RecommenderModule
from training.models.capabilities import EmbedsItems, ScoresFromHistory


def run_gru(gru: nn.GRU, x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Outputs (B, L, H) of ``gru`` (batch_first) over right-aligned inputs ``x`` (B, L, d).

    Row b's real items are the columns from its first non-zero entry of ``history`` on; the GRU sees
    only those (packed, starting from h0 = 0). Padding positions of the result are zero. A row with
    no item at all is run over its last (padding) step only, so it still gets a finite state.
    """
    batch, length = history.shape
    nonzero = history > 0
    first = torch.where(nonzero.any(1), nonzero.float().argmax(1), torch.full_like(history[:, 0], length))
    lengths = (length - first).clamp(min=1)  # (B,)
    shift = (length - lengths).unsqueeze(1)  # (B, 1): number of leading padding columns
    columns = torch.arange(length, device=history.device).unsqueeze(0)
    # Left-align: position p of the rotated row is column (p + shift) % L of the input.
    to_left = ((columns + shift) % length).unsqueeze(-1)
    left = x.gather(1, to_left.expand(-1, -1, x.shape[-1]))
    packed = pack_padded_sequence(left, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
    # Back to right-aligned: column c reads position (c - shift) % L of the left-aligned output.
    to_right = ((columns - shift) % length).unsqueeze(-1)
    return out.gather(1, to_right.expand(-1, -1, out.shape[-1]))


class GRU4Rec(RecommenderModule, ScoresFromHistory, EmbedsItems):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 64,
        hidden_size: int = 128,
        n_layers: int = 1,
        dropout: float = 0.3,
        history_length: int = 50,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items, self.history_length = n_users, n_items, history_length
        self.lr, self.weight_decay = lr, weight_decay
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, n_layers, batch_first=True, bias=True)
        self.dense = nn.Linear(hidden_size, embedding_size)
        nn.init.xavier_normal_(self.item_embedding.weight)
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(weight)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """States (B, L, d) of a right-aligned history (B, L); position t has seen items up to t."""
        x = self.dropout(self.item_embedding(history))
        return self.dense(run_gru(self.gru, x, history))

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
        last = self.encode(history)[:, -1]
        return last @ self.item_embedding.weight.T
