"""Offline evaluation of the served two-stage system: a retriever's top N, re-ordered by a ranker.

The service answers a ranker packaged with a retriever in two stages (``serving.recommender``): the
retriever ranks the catalogue with the user's seen items excluded and keeps its best ``n_candidates``;
the ranker's ``score_candidates`` orders them. Each model's own full-ranking metrics say little about
that unit: the ranker never sees the items retrieval missed, and the retriever's order below its top N
does not matter. This scores the unit under full ranking, on the same evaluation inputs as any model:

- ``retrieval_recall@N``: the share of each user's held-out items among the N candidates (mean over
  users), the ceiling of every metric of the final list;
- the final list's metrics (NDCG@k, recall@k, ...): the candidates in the ranker's order; items outside
  them are never recommended, as in the service.
"""

from __future__ import annotations

from typing import Any

import torch

from training.data import EvalInputs
from training.metrics import RankingAccumulator, ranking_exclusions


def two_stage_scores(
    retriever: torch.nn.Module,
    ranker: Any,
    batch: dict[str, torch.Tensor],
    n_candidates: int,
    history_lengths: tuple[int | None, int | None] = (None, None),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final scores, retriever scores, excluded) for one evaluation batch.

    Final scores: the ranker's scores on the retriever's top ``n_candidates`` (seen items and the
    padding column excluded first), -inf everywhere else. ``history_lengths``: the (retriever, ranker)
    history each model reads, the newest entries of the right-aligned batch history (None: all of it),
    as the service hands each model its own tail.
    """
    retriever_history, ranker_history = (
        batch["history"] if length is None else batch["history"][:, -length:] for length in history_lengths
    )
    excluded = ranking_exclusions(retriever, batch)
    retrieval = retriever.full_sort_predict(batch["users"], retriever_history).float()
    masked = retrieval.masked_fill(excluded, -torch.inf)
    masked[:, 0] = -torch.inf
    depth = min(n_candidates, masked.shape[1] - 1)
    candidates = torch.topk(masked, k=depth, dim=1).indices
    ranked = ranker.score_candidates(batch["users"], ranker_history, candidates).float()
    final = torch.full_like(masked, -torch.inf)
    final.scatter_(1, candidates, ranked)
    return final, retrieval, excluded


def evaluate_two_stage(
    retriever: torch.nn.Module,
    ranker: Any,
    inputs: EvalInputs,
    n_candidates: int,
    ks: list[int],
    batch_users: int = 256,
    history_lengths: tuple[int | None, int | None] = (None, None),
) -> dict[str, float]:
    """Metrics of the final lists at ``ks`` plus ``retrieval_recall@<n_candidates>``."""
    if max(ks) > n_candidates:
        raise ValueError(f"lists of {max(ks)} items cannot come from {n_candidates} candidates")
    final_acc = RankingAccumulator(inputs.n_items, ks)
    retrieval_acc = RankingAccumulator(inputs.n_items, [n_candidates])
    retriever.eval()
    ranker.eval()
    with torch.no_grad():
        for batch in inputs.batches(batch_users):
            final, retrieval, excluded = two_stage_scores(
                retriever, ranker, batch, n_candidates, history_lengths
            )
            final_acc.update(final, batch["truth"], excluded)
            retrieval_acc.update(retrieval, batch["truth"], excluded)
    metrics = final_acc.compute()
    metrics[f"retrieval_recall@{n_candidates}"] = retrieval_acc.compute()[f"recall@{n_candidates}"]
    return metrics
