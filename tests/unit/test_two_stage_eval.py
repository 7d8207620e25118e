"""Offline evaluation of retrieve-then-rank (training/two_stage.py) on hand-made evaluation inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from training.data import EvalInputs
from training.train import evaluate_module
from training.two_stage import evaluate_two_stage, two_stage_scores

N_ITEMS = 12


class HighIds(nn.Module):
    """A retriever that prefers high item ids (and reads nothing else)."""

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.arange(N_ITEMS + 1, dtype=torch.float32).repeat(users.shape[0], 1)


class LowIdsAfterHistory(nn.Module):
    """A ranker that prefers low item ids; records the history it was given."""

    def score_candidates(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        self.history_seen = history
        return -candidates.float()

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        items = torch.arange(N_ITEMS + 1).repeat(users.shape[0], 1)
        return self.score_candidates(users, history, items)


def inputs() -> EvalInputs:
    # user 0 saw items 12 and 11 (excluded); held out: 10 and 2. user 1 saw 1; held out: 9. user 2: held out 3.
    truth = sp.csr_matrix((np.ones(4), ([0, 0, 1, 2], [10, 2, 9, 3])), shape=(3, N_ITEMS + 1))
    exclude = sp.csr_matrix((np.ones(3), ([0, 0, 1], [12, 11, 1])), shape=(3, N_ITEMS + 1))
    history = torch.tensor([[0, 0, 12, 11], [0, 0, 0, 1], [0, 0, 0, 0]])
    return EvalInputs(torch.arange(3), history, truth, exclude, N_ITEMS)


def test_the_ranker_orders_the_retrievers_top_n_of_the_unseen_items() -> None:
    batch = next(iter(inputs().batches(3)))
    final, retrieval, excluded = two_stage_scores(HighIds(), LowIdsAfterHistory(), batch, 3)
    top = torch.topk(final, 3, dim=1).indices
    # User 0: retrieval's best unseen items are 10, 9, 8 (12 and 11 were seen); the ranker reverses them.
    assert top[0].tolist() == [8, 9, 10]
    assert top[1].tolist() == [10, 11, 12]
    assert torch.isinf(final).sum(dim=1).tolist() == [N_ITEMS + 1 - 3] * 3  # nothing else is listed
    assert torch.equal(retrieval, HighIds().full_sort_predict(batch["users"], batch["history"]))
    assert bool(excluded[0, 12]) and bool(excluded[1, 1])


def test_metrics_are_those_of_the_final_lists_and_retrieval_recall_of_the_candidates() -> None:
    data = inputs()
    metrics = evaluate_two_stage(HighIds(), LowIdsAfterHistory(), data, n_candidates=3, ks=[1, 3])
    # Candidates: user 0 {10, 9, 8} holds 10 of {10, 2}; user 1 {12, 11, 10} holds none of {9}; user 2
    # {12, 11, 10} none of {3}.
    assert metrics["retrieval_recall@3"] == pytest.approx((1 / 2) / 3)
    assert metrics["retrieval_recall@3"] == pytest.approx(
        evaluate_module(HighIds(), data, [3], 3)["recall@3"]
    )
    # The final list of user 0 is [8, 9, 10]: its hit (10) is at rank 3, so not in the top 1.
    assert metrics["recall@1"] == 0.0 and metrics["recall@3"] == pytest.approx((1 / 2) / 3)
    assert metrics["ndcg@3"] == pytest.approx((1 / np.log2(4)) / (1 + 1 / np.log2(3)) / 3)

    # With every item a candidate, the system is the ranker alone under full ranking.
    everything = evaluate_two_stage(HighIds(), LowIdsAfterHistory(), data, n_candidates=N_ITEMS, ks=[3])
    alone = evaluate_module(LowIdsAfterHistory(), data, [3], 3)
    assert everything["ndcg@3"] == pytest.approx(alone["ndcg@3"]) and alone["ndcg@3"] > 0
    assert everything[f"retrieval_recall@{N_ITEMS}"] == 1.0


def test_each_model_reads_its_own_history_and_lists_cannot_outgrow_the_candidates() -> None:
    ranker = LowIdsAfterHistory()
    batch = next(iter(inputs().batches(3)))
    two_stage_scores(HighIds(), ranker, batch, 3, history_lengths=(None, 2))
    assert ranker.history_seen.tolist() == [[12, 11], [0, 1], [0, 0]]  # the newest two entries
    with pytest.raises(ValueError, match="lists of 10 items cannot come from 3 candidates"):
        evaluate_two_stage(HighIds(), ranker, inputs(), n_candidates=3, ks=[10])
