"""gSASRec (Petrov & Macdonald, RecSys 2023): SASRec trained with many sampled negatives and gBCE.

The network, the scoring and so the serving contract are SASRec's (``training.models.sasrec``): this
class only replaces the training loss. Every position of a training window gets ``negatives`` items
drawn uniformly, with replacement, from the catalogue without that position's positive, and the loss
is the generalised binary cross-entropy

    gBCE = -log(sigma(s+)^beta) - sum_negatives log(1 - sigma(s-)),

    beta = alpha * (t * (1 - 1/alpha) + 1/alpha),   alpha = negatives / (|I| - 1) (the sampling rate).

Plain BCE with sampled negatives leaves the model overconfident: it learns the positive's probability
as if only the sampled items competed with it. Raising sigma(s+) to the power beta corrects that; the
calibration parameter ``gbce_t`` moves beta from 1 (t = 0: plain BCE) to alpha (t = 1: the paper's
fully calibrated case, which removes the overconfidence that sampling causes). Computed as
``-beta * logsigmoid(s+) + sum softplus(s-)``, which stays finite for any logit.

A catalogue with fewer than ``negatives + 1`` items is sampled at rate 1 (``|I| - 1`` negatives).

``tied_output`` (default true, as SASRec): score items with the input item table; false gives the
output side a table of its own, as the paper's reference code does, so that pushing many sampled
negatives down does not move the vectors the encoder reads its input with.

Negative logits are read from the full (tokens x n_items) score matrix when that is smaller than the
gathered (tokens x negatives x d) embeddings, i.e. while n_items + 1 <= negatives * hidden_size; both
ways give the same logits, the cheaper one decides memory and time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.sasrec import SASRec


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """The power on the positive's probability, for ``n_negatives`` of the ``n_items - 1`` other items."""
    alpha = n_negatives / (n_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(positive: torch.Tensor, negative: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over positions of gBCE: ``positive`` logits (T,), ``negative`` logits (T, k)."""
    return (-beta * F.logsigmoid(positive) + F.softplus(negative).sum(-1)).mean()


def sample_negatives(
    targets: torch.Tensor, n_items: int, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``count`` uniform draws per target (T,) -> (T, count), each from items 1..n_items but that target."""
    draws = torch.randint(1, n_items, (targets.shape[0], count), device=targets.device, generator=generator)
    # Draws are from n_items - 1 values; shifting those at or above the target skips it, uniformly.
    return draws + (draws >= targets.unsqueeze(-1)).long()


def negative_logits(states: torch.Tensor, weights: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Scores (T, k) of ``items`` (T, k) for ``states`` (T, d) against the item table ``weights``."""
    if weights.shape[0] <= items.shape[1] * weights.shape[1]:
        return (states @ weights.T).gather(1, items)
    return torch.einsum("td,tkd->tk", states, weights[items])


class GSASRec(SASRec):
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
        negatives: int = 256,
        gbce_t: float = 0.75,
        tied_output: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        if negatives < 1:
            raise ValueError(f"gsasrec negatives must be at least 1, not {negatives}")
        if not 0.0 <= gbce_t <= 1.0:
            raise ValueError(f"gsasrec gbce_t must lie in [0, 1], not {gbce_t}")
        if n_items < 2:
            raise ValueError("gsasrec needs at least 2 items: a positive and something to sample against it")
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
        self.loss_type = "gbce"  # SASRec's loss switch does not apply here: calculate_loss is replaced
        self.negatives = min(negatives, n_items - 1)
        self.gbce_t = gbce_t
        self.beta = gbce_beta(self.negatives, n_items, gbce_t)
        self.output_embedding = None if tied_output else nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        if self.output_embedding is not None:
            nn.init.normal_(self.output_embedding.weight, std=0.02)
            with torch.no_grad():
                self.output_embedding.weight[0].zero_()

    def output_weights(self) -> torch.Tensor:
        return self.item_embedding.weight if self.output_embedding is None else self.output_embedding.weight

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encode(batch["history"])
        targets = batch["targets"]
        valid = targets > 0
        states = hidden[valid]  # (T, d): only positions with a real next item
        positives = targets[valid]
        negatives = sample_negatives(positives, self.n_items, self.negatives)
        weights = self.output_weights()
        positive = (states * weights[positives]).sum(-1)
        return gbce_loss(positive, negative_logits(states, weights, negatives), self.beta)
