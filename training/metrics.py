"""Full-ranking top-k metrics: every item of the catalogue is ranked, no sampled negatives.

Sampled-negative metrics overstate quality and reorder models (Krichene & Rendle, 2020), so both
validation (early stopping) and test evaluation rank the whole catalogue. Inputs are dense batches:
``scores`` (B, n_items + 1), ``truth`` and ``exclude`` boolean masks of the same shape. Column 0 is
padding and never ranked. Excluded items (already seen in training) are never ranked either; a
ground-truth item that is also excluded counts in the denominator but can never be hit.

Per-user definitions at cut-off k (``hits`` = ground-truth items among the top k):
- recall = hits / |truth|; precision = hits / k; hr = 1 if hits > 0;
- ndcg = DCG / IDCG with binary gains, DCG = sum over hit ranks r (1-based) of 1 / log2(r + 1),
  IDCG = the DCG of min(|truth|, k) hits at the top;
- mrr = 1 / rank of the first hit within the top k (0 if none).
Reported values are means over evaluated users. ``coverage@k`` = share of catalogue items that appear
in at least one user's top-k list.
"""

from __future__ import annotations

import torch

METRIC_NAMES = ("recall", "ndcg", "hr", "mrr", "precision")


def ranking_exclusions(module: object, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a model may not recommend in an evaluation batch: the user's seen items, and items without
    a training interaction unless the model scores items from their attributes (``scores_cold_items``);
    others would rank such an item by an embedding that never trained."""
    from training.models.capabilities import ScoresColdItems, can

    exclude = batch["exclude"]
    if can(module, ScoresColdItems) or "untrained" not in batch:
        return exclude
    return exclude | batch["untrained"].unsqueeze(0)


def top_k_items(scores: torch.Tensor, exclude: torch.Tensor | None, k: int) -> torch.Tensor:
    """Indices (B, k) of the k best items, padding column and excluded items removed."""
    masked = scores.float().clone()
    masked[:, 0] = -torch.inf
    if exclude is not None:
        masked.masked_fill_(exclude, -torch.inf)
    return torch.topk(masked, k=min(k, masked.shape[1] - 1), dim=1).indices


def per_user_metrics(
    scores: torch.Tensor, truth: torch.Tensor, exclude: torch.Tensor | None, ks: list[int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-user metric values ``{"ndcg@10": (B,), ...}`` and the (B, max k) top-k item indices."""
    max_k = max(ks)
    top = top_k_items(scores, exclude, max_k)
    hits = truth.gather(1, top).float()  # (B, K): 1 where the item at rank r is relevant
    n_truth = truth[:, 1:].sum(dim=1).float()
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float32, device=hits.device)
    discounts = 1.0 / torch.log2(ranks + 1.0)
    safe_truth = n_truth.clamp(min=1.0)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hits_k = hits[:, :k]
        n_hits = hits_k.sum(dim=1)
        out[f"recall@{k}"] = n_hits / safe_truth
        out[f"precision@{k}"] = n_hits / k
        out[f"hr@{k}"] = (n_hits > 0).float()
        dcg = (hits_k * discounts[: hits_k.shape[1]]).sum(dim=1)
        ideal_hits = torch.clamp(n_truth, max=k).long()
        idcg = torch.cumsum(discounts[:k], dim=0)[(ideal_hits - 1).clamp(min=0)]
        out[f"ndcg@{k}"] = torch.where(ideal_hits > 0, dcg / idcg, torch.zeros_like(dcg))
        first_hit = torch.where(
            n_hits > 0, hits_k.argmax(dim=1).float() + 1.0, torch.full_like(n_hits, torch.inf)
        )
        out[f"mrr@{k}"] = 1.0 / first_hit
    return out, top


class RankingAccumulator:
    """Accumulates full-ranking metrics over user batches; ``compute()`` gives the means + coverage."""

    def __init__(self, n_items: int, ks: list[int]) -> None:
        self.n_items = n_items
        self.ks = sorted(set(ks))
        self.sums: dict[str, float] = {}
        self.n_users = 0
        self.recommended = {k: torch.zeros(n_items + 1, dtype=torch.bool) for k in self.ks}

    def update(self, scores: torch.Tensor, truth: torch.Tensor, exclude: torch.Tensor | None) -> None:
        values, top = per_user_metrics(scores, truth, exclude, self.ks)
        for name, per_user in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(per_user.sum())
        for k in self.ks:
            self.recommended[k][top[:, :k].reshape(-1).cpu()] = True
        self.n_users += scores.shape[0]

    def compute(self) -> dict[str, float]:
        if self.n_users == 0:
            raise ValueError("no users were evaluated: the evaluated part has no user with a training event")
        result = {name: total / self.n_users for name, total in self.sums.items()}
        for k in self.ks:
            result[f"coverage@{k}"] = float(self.recommended[k][1:].sum()) / max(self.n_items, 1)
        return dict(sorted(result.items()))


def ranking_metrics(
    scores: torch.Tensor, truth: torch.Tensor, exclude: torch.Tensor | None, ks: list[int]
) -> dict[str, float]:
    """Means over the batch of every metric at every k, plus coverage@k (one-batch convenience)."""
    acc = RankingAccumulator(scores.shape[1] - 1, ks)
    acc.update(scores, truth, exclude)
    return acc.compute()


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of ``scores`` against 0/1 ``labels`` (any shape, flattened), by the rank-sum formula.

    AUC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), ranks 1-based in
    ascending score order with ties given their average rank (so a tie counts 1/2). NaN when one of
    the two classes is empty. Shared by the CTR rankers' ``pointwise_metrics``.
    """
    from scipy.stats import rankdata

    flat_scores = scores.detach().reshape(-1).double().cpu().numpy()
    positive = labels.detach().reshape(-1).cpu().numpy() > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(flat_scores, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of ``logits`` (pre-sigmoid) against 0/1 ``labels``."""
    return float(
        torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()).item()
    )
