"""Diversity: re-ranking a relevance-ordered candidate list, and measuring how diverse a list is.

Pure functions on tensors, shared by serving (``serving.recommender``: the ``diversity`` knob of
``/recommend``) and evaluation (``training.metrics``: intra-list diversity), so a list is re-ranked and
judged with the same similarity.

**Maximal marginal relevance** (Carbonell & Goldstein, 1998). Given candidates ``C`` with relevance
``r(i)`` and item-item similarity ``sim(i, j)``, the list ``S`` is built greedily::

    next = argmax over i in C \\ S of  (1 - λ) · r̂(i) - λ · max over j in S of sim(i, j)

with ``λ = diversity`` in [0, 1]. The first pick is the most relevant candidate (the max over an empty
``S`` counts as 0). ``r̂`` is the relevance min-max scaled to [0, 1] over the candidates, so that λ
weighs relevance against cosine similarity (in [-1, 1]) the same way whatever the scale of a model's
scores. λ = 0 returns the relevance order itself (no arithmetic: exactly the top k); λ = 1 ignores
relevance after the first pick. Ties go to the more relevant candidate.

**Intra-list diversity** of a list ``L`` (Ziegler et al., 2005)::

    ILD(L) = 1 - mean over pairs i < j in L of cos(v_i, v_j)

with ``v`` an item's vector (model embeddings, or the multi-hot of its attributes). An item without any
attribute has a zero vector: its cosine with every item counts as 0. A list of fewer than two items has
no pair: NaN.
"""

from __future__ import annotations

import torch


def normalized_rows(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` (..., d) scaled to unit length (zero rows stay zero)."""
    vectors = vectors.float()
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def cosine_similarity(vectors: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarity of the rows of ``vectors`` (N, d)."""
    unit = normalized_rows(vectors)
    return unit @ unit.T


def mmr(relevance: torch.Tensor, similarity: torch.Tensor, k: int, diversity: float) -> torch.Tensor:
    """Positions (into the candidates) of the ``k`` items MMR picks, in pick order (module docstring).

    ``relevance`` (N,): higher is better, finite for every candidate; ``similarity`` (N, N) between the
    candidates. Raises ``ValueError`` for a ``diversity`` outside [0, 1].
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must lie in [0, 1], got {diversity}")
    n = int(relevance.shape[0])
    k = min(int(k), n)
    order = torch.argsort(relevance, descending=True, stable=True)
    if diversity == 0.0 or k <= 1:
        return order[:k]
    # Candidates in relevance order, so that argmax ties fall to the more relevant one.
    rel = relevance[order].double()
    spread = rel.max() - rel.min()
    scaled = (rel - rel.min()) / spread if spread > 0 else torch.ones_like(rel)
    sim = similarity[order][:, order].double()
    picked = torch.zeros(n, dtype=torch.bool)
    redundancy = torch.full((n,), -torch.inf, dtype=torch.float64)  # max sim to the picked items
    chosen: list[int] = []
    for _ in range(k):
        penalty = torch.where(picked.any(), redundancy, torch.zeros_like(redundancy))
        gain = (1.0 - diversity) * scaled - diversity * penalty
        gain[picked] = -torch.inf
        best = int(torch.argmax(gain))
        chosen.append(best)
        picked[best] = True
        redundancy = torch.maximum(redundancy, sim[best])
    return order[torch.tensor(chosen, dtype=torch.long)]


def intra_list_diversity(vectors: torch.Tensor) -> torch.Tensor:
    """ILD of each list: ``vectors`` (B, L, d) -> (B,), or (L, d) -> a 0-d tensor (module docstring)."""
    unit = normalized_rows(vectors)
    return diversity_of_gram(unit @ unit.transpose(-1, -2))


def diversity_of_gram(gram: torch.Tensor) -> torch.Tensor:
    """ILD from the lists' cosine Gram matrices (..., L, L): 1 - the mean off-diagonal entry."""
    length = gram.shape[-1]
    if length < 2:
        return torch.full(gram.shape[:-2], torch.nan)
    off_diagonal = gram.sum(dim=(-1, -2)) - torch.diagonal(gram, dim1=-2, dim2=-1).sum(dim=-1)
    return 1.0 - off_diagonal / (length * (length - 1))
