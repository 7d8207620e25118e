"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional self-attention encoder trained by the cloze task.

SASRec (``training.models.sasrec``) reads a history left to right and learns the next item at every
position. BERT4Rec lets every position attend to the whole sequence, both directions, so it cannot be
trained on "the next item" (it would see it); instead a share ``mask_prob`` of the items of each
training sequence is replaced by a [MASK] token and the model learns to restore them from both sides.
Every training sequence keeps at least one masked item: one with none gets its newest item masked,
the case that matches prediction. Masked items are scored against the whole catalogue with softmax
cross-entropy, as SASRec's default loss is.

Prediction appends [MASK] to the newest ``history_length - 1`` items and ranks the catalogue for it:
the item that would fill the next position. Everything before the last position is known, so the
bidirectional encoder sees as much as SASRec's causal one does at the last position.

Network: SASRec's (embeddings, pre-LN Transformer blocks, final LayerNorm) without the causal mask,
with one more item row for the [MASK] token (index ``n_items + 1``), and the paper's output head: a
dense layer with GELU and LayerNorm, then the tied item embeddings plus a per-item output bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.sasrec import SASRec


def cloze_mask(
    items: torch.Tensor, mask_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which positions of right-aligned ``items`` (B, L; 0 = padding) to mask: each real item with
    probability ``mask_prob``, and the newest item of a sequence in which no other was drawn."""
    real = items > 0
    draws = torch.rand(items.shape, device=items.device, generator=generator)
    masked = (draws < mask_prob) & real
    nothing = ~masked.any(dim=1)
    masked[nothing, -1] = real[nothing, -1]
    return masked


class BERT4Rec(SASRec):
    causal = False

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
        mask_prob: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"bert4rec mask_prob must lie in (0, 1], not {mask_prob}")
        if history_length < 2:
            raise ValueError("bert4rec needs history_length >= 2: one known item and the [MASK] to predict")
        super().__init__(
            n_users,
            n_items,
            hidden_size=hidden_size,
            n_layers=n_layers,
            n_heads=n_heads,
            inner_size=inner_size,
            dropout=dropout,
            history_length=history_length,
            lr=lr,
            weight_decay=weight_decay,
        )
        self.mask_prob = mask_prob
        self.mask_token = n_items + 1
        # SASRec's table plus the [MASK] row; rows 0..n_items stay the items' (and padding's) vectors.
        self.item_embedding = nn.Embedding(n_items + 2, hidden_size, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size))
        self.output_bias = nn.Parameter(torch.zeros(n_items + 1))

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items + 1]  # without the [MASK] row

    def _logits(self, states: torch.Tensor) -> torch.Tensor:
        """Catalogue scores (T, n_items + 1) of encoder states (T, d); column 0 is padding's."""
        return self.head(states) @ self.item_embeddings().T + self.output_bias

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The sequence data kind gives each window as history (items 0..L-1) and targets (items
        # 1..L); the targets row is the whole window but its oldest item, right-aligned: the sequence.
        items = batch["targets"]
        masked = cloze_mask(items, self.mask_prob)
        hidden = self.encode(items.masked_fill(masked, self.mask_token))
        logits = self._logits(hidden[masked])
        logits[:, 0] = -torch.inf  # padding is never the answer
        return F.cross_entropy(logits, items[masked])

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        known = history[:, -(self.history_length - 1) :]  # the newest items; shorter histories whole
        query = F.pad(known, (0, 1), value=self.mask_token)
        return self._logits(self.encode(query)[:, -1])
