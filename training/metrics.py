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

Beyond accuracy, over the same top-k lists:
- ``gini@k``: Gini coefficient of how often each catalogue item is recommended, counts ``c`` sorted
  ascending over all ``n`` items: G = sum over i = 1..n of (2i - n - 1) c_i / (n sum c); 0 = every
  item equally often, towards 1 = a few items take every list.
- ``novelty@k`` (with the train part's item counts, ``BeyondAccuracy``): mean self-information of the
  recommended items, -log2(p_i), p_i = the item's share of the train interactions (an item without a
  train interaction counts as one interaction: finite, and the most novel); mean per list, then over users.
- ``ild_<name>@k`` (with item vectors ``name``: ``attributes`` = multi-hot genres and other categorical
  fields, ``embeddings`` = the model's item embeddings): intra-list diversity, 1 - mean pairwise
  cosine similarity within a list (``training.rerank.intra_list_diversity``), mean over users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from training.rerank import intra_list_diversity
from training.topk import contains, row_item_keys

METRIC_NAMES = ("recall", "ndcg", "hr", "mrr", "precision")


def ranking_exclusions(module: object, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a model may not recommend in an evaluation batch: the user's seen items, and items without
    a training interaction unless the model scores items from their attributes (``scores_cold_items``);
    others would rank such an item by an embedding that never trained."""
    exclude = batch["exclude"]
    never = never_ranked(module, batch.get("untrained"))
    return exclude if never is None else exclude | never.unsqueeze(0)


def never_ranked(module: object, untrained: torch.Tensor | None) -> torch.Tensor | None:
    """The (n_items + 1,) items ``module`` may never recommend whoever asks: those without a training
    interaction (``untrained``), unless it scores items from their attributes (``ScoresColdItems``)."""
    from training.models.capabilities import ScoresColdItems, can

    return None if can(module, ScoresColdItems) else untrained


def top_k_items(
    scores: torch.Tensor, exclude: torch.Tensor | None, k: int, work: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices (B, k) of the k best items, padding column and excluded items removed.

    The masking happens in a copy of ``scores``, in ``work`` when given (a float32 tensor of the same
    shape, overwritten: reusing one across batches spares the allocation and first touch of a
    (users x catalogue) tensor per batch, which cost more than the copy itself), or in ``scores``
    itself when ``work`` is ``scores`` (the caller's scratch: no copy at all).
    """
    if work is scores:
        masked = scores
    elif work is not None:
        masked = work.copy_(scores)
    else:
        masked = scores.float().clone()
    masked[:, 0] = -torch.inf
    if exclude is not None:
        masked.masked_fill_(exclude, -torch.inf)
    return torch.topk(masked, k=min(k, masked.shape[1] - 1), dim=1).indices


def _count_relevant(truth: torch.Tensor) -> torch.Tensor:
    """(B,) relevant items per row, padding column excluded. On CPU, NumPy's count (SIMD) over the bool
    rows: torch's bool reductions cost most of a batch at 10^5+ items."""
    if truth.device.type == "cpu" and truth.dtype == torch.bool:
        return torch.from_numpy(np.count_nonzero(truth.numpy()[:, 1:], axis=1)).float()
    return truth[:, 1:].sum(dim=1).float()


def per_user_metrics(
    scores: torch.Tensor,
    truth: torch.Tensor,
    exclude: torch.Tensor | None,
    ks: list[int],
    work: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-user metric values ``{"ndcg@10": (B,), ...}`` and the (B, max k) top-k item indices
    (``work``: see ``top_k_items``)."""
    top = top_k_items(scores, exclude, max(ks), work)
    hits = truth.gather(1, top).float()  # (B, K): 1 where the item at rank r is relevant
    return metrics_of_hits(hits, _count_relevant(truth), ks), top


def list_hits(top: torch.Tensor, truth_rows: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """``hits`` (B, K) float, 1 where ``top[b, r]`` is among row b's ground-truth items, and the (B,)
    relevant-item counts, from the sparse truth rows: no dense (B, catalogue) mask. Padding (item 0)
    is never relevant."""
    truth_rows = truth_rows.tocsr(copy=True)
    truth_rows.data[(truth_rows.data <= 0) | (truth_rows.indices == 0)] = 0  # padding is never relevant
    truth_rows.eliminate_zeros()
    n_rows, width = truth_rows.shape
    items = top.numpy().astype(np.int64)
    hit = contains(row_item_keys(truth_rows), np.arange(n_rows, dtype=np.int64)[:, None] * width + items)
    counts = np.diff(truth_rows.indptr)
    return torch.from_numpy(hit.astype(np.float32)), torch.from_numpy(counts.astype(np.float32))


def metrics_of_hits(hits: torch.Tensor, n_truth: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Per-user metric values ``{"ndcg@10": (B,), ...}`` of ranked lists from their ``hits`` (B, K)
    (1 where the item at rank r is relevant) and ``n_truth`` (B,) relevant items per user."""
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
    return out


class ItemVectors(Protocol):
    """(n_items + 1, d) item vectors indexed by item codes: a tensor, or rows built on demand
    (``training.attributes.MultiHotRows``)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor: ...


def list_diversity(vectors: ItemVectors, lists: torch.Tensor) -> torch.Tensor:
    """(B,) intra-list diversity of (B, L) item lists over ``vectors``: by the vectors' own
    ``intra_list_diversity(lists)`` where they have one (``MultiHotRows``: from the codes, without
    building the rows), else from the indexed rows."""
    own = getattr(vectors, "intra_list_diversity", None)
    return own(lists) if own is not None else intra_list_diversity(vectors[lists].float())


@dataclass(frozen=True)
class BeyondAccuracy:
    """What novelty and intra-list diversity are measured against (module docstring).

    ``train_counts`` (n_items + 1,): train interactions per item (column 0 = padding);
    ``item_vectors``: name -> (n_items + 1, d) item vectors, e.g. ``{"attributes": ..., "embeddings": ...}``.
    """

    train_counts: torch.Tensor
    item_vectors: dict[str, ItemVectors] = field(default_factory=dict)

    @property
    def self_information(self) -> torch.Tensor:
        """(n_items + 1,) -log2 of each item's share of the train interactions (at least one each)."""
        counts = self.train_counts.double().clamp_min(1.0)
        return -torch.log2(counts / self.train_counts.double().sum().clamp_min(1.0))

    @classmethod
    def from_train_matrix(
        cls, train: sp.spmatrix, item_vectors: dict[str, ItemVectors] | None = None
    ) -> BeyondAccuracy:
        """From the train user x item matrix (scipy sparse, (n_users, n_items + 1))."""
        counts = np.asarray((train > 0).sum(axis=0)).ravel()
        return cls(torch.as_tensor(counts, dtype=torch.float64), dict(item_vectors or {}))


def gini(counts: torch.Tensor) -> float:
    """Gini coefficient of non-negative ``counts`` (module docstring); 0 when nothing was counted."""
    values = torch.sort(counts.double().reshape(-1)).values
    n, total = values.numel(), float(values.sum())
    if n == 0 or total == 0.0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * ranks - n - 1) * values).sum() / (n * total))


class RankingAccumulator:
    """Accumulates full-ranking metrics over user batches; ``compute()`` gives the means, coverage and
    Gini, and with ``beyond`` novelty and intra-list diversity. With ``keep_per_user`` it also keeps
    every user's value of each per-user metric (``per_user_values()``, NaN where a user has none): the
    means ``compute()`` reports are unchanged, the per-user values feed bootstrap intervals."""

    def __init__(
        self, n_items: int, ks: list[int], beyond: BeyondAccuracy | None = None, keep_per_user: bool = False
    ) -> None:
        self.n_items = n_items
        self.kept: dict[str, list[torch.Tensor]] | None = {} if keep_per_user else None
        self.ks = sorted(set(ks))
        self.beyond = beyond
        self.sums: dict[str, float] = {}
        self.counted: dict[str, int] = {}  # users behind a sum, where not every user has a value (ILD)
        self.n_users = 0
        self.recommended = {k: torch.zeros(n_items + 1, dtype=torch.float64) for k in self.ks}
        self._information = beyond.self_information if beyond is not None else None
        self._work: torch.Tensor | None = None  # the masked copy of a batch's scores, reused

    def update(
        self,
        scores: torch.Tensor,
        truth: torch.Tensor,
        exclude: torch.Tensor | None,
        scratch: bool = False,
    ) -> None:
        """Add a batch: ``scores`` (B, n_items + 1); ``scratch``: float32 scores the accumulator may
        overwrite (e.g. written into ``score_buffer``), masked where they lie instead of in a copy."""
        rows, width = scores.shape
        work = scores if scratch else self.score_buffer(rows, width, device=scores.device)
        values, top = per_user_metrics(scores, truth, exclude, self.ks, work)
        self._add_lists(values, top.cpu())

    def update_lists(self, top: torch.Tensor, truth_rows: sp.csr_matrix) -> None:
        """Add a batch of ranked lists: ``top`` (B, max k) item indices, best first (0 = padding, for a
        user with fewer rankable items), from a model that ranks without scoring the whole catalogue
        (``RanksTopK``); ``truth_rows`` (B, n_items + 1) sparse ground truth."""
        if top.shape[1] < max(self.ks):
            raise ValueError(f"lists of {top.shape[1]} items cannot give metrics at k = {max(self.ks)}")
        hits, n_truth = list_hits(top, truth_rows)
        self._add_lists(metrics_of_hits(hits, n_truth, self.ks), top)

    def _add_lists(self, values: dict[str, torch.Tensor], top: torch.Tensor) -> None:
        for name, per_user in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(per_user.sum())
            self._keep(name, per_user)
        for k in self.ks:
            lists = top[:, :k]
            self.recommended[k] += torch.bincount(lists.reshape(-1), minlength=self.n_items + 1).double()
            if self.beyond is None:
                continue
            novelty = self._information[lists].mean(dim=1)  # type: ignore[index]
            self._add(f"novelty@{k}", novelty)
            for name, vectors in self.beyond.item_vectors.items():
                self._add(f"ild_{name}@{k}", list_diversity(vectors, lists))
        self.n_users += top.shape[0]

    def score_buffer(self, rows: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """A (rows, width) float32 tensor kept across batches (its first rows for a smaller batch): where
        a batch's scores are masked, or written by a caller that then passes ``scratch=True``."""
        work = self._work
        if (
            work is None
            or work.shape[1] != width
            or work.shape[0] < rows
            or work.device != torch.device(device)
        ):
            work = self._work = torch.empty(rows, width, dtype=torch.float32, device=device)
        return work[:rows]

    def release_buffer(self) -> None:
        """Free ``score_buffer``'s memory (a later batch makes a new one)."""
        self._work = None

    def _add(self, name: str, per_user: torch.Tensor) -> None:
        known = per_user[~torch.isnan(per_user)]
        self.sums[name] = self.sums.get(name, 0.0) + float(known.sum())
        self.counted[name] = self.counted.get(name, 0) + int(known.numel())
        self._keep(name, per_user)

    def _keep(self, name: str, per_user: torch.Tensor) -> None:
        if self.kept is not None:
            self.kept.setdefault(name, []).append(per_user.detach().double().cpu())

    def per_user_values(self) -> dict[str, np.ndarray]:
        """``{metric: (n_users,) float64}`` in evaluation order (needs ``keep_per_user=True``)."""
        if self.kept is None:
            raise ValueError("per-user values were not kept: build the accumulator with keep_per_user=True")
        return {name: torch.cat(parts).numpy() for name, parts in sorted(self.kept.items())}

    def compute(self) -> dict[str, float]:
        if self.n_users == 0:
            raise ValueError("no users were evaluated: the evaluated part has no user with a training event")
        result = {
            name: total / self.counted.get(name, self.n_users) if self.counted.get(name, 1) else float("nan")
            for name, total in self.sums.items()
        }
        for k in self.ks:
            counts = self.recommended[k][1:]
            result[f"coverage@{k}"] = float((counts > 0).sum()) / max(self.n_items, 1)
            result[f"gini@{k}"] = gini(counts)
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
