"""Full-ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.metrics import RankingAccumulator, per_user_metrics, ranking_metrics

torch.set_num_threads(1)
LOG3 = math.log2(3)


def _mask(n_items: int, rows: list[list[int]]) -> torch.Tensor:
    mask = torch.zeros(len(rows), n_items + 1, dtype=torch.bool)
    for r, items in enumerate(rows):
        mask[r, items] = True
    return mask


def test_single_user_hand_computed() -> None:
    # Items 1..5 ranked 1 > 2 > 3 > 4 > 5; column 0 (padding) has the highest score and must be ignored.
    scores = torch.tensor([[99.0, 5, 4, 3, 2, 1]])
    truth = _mask(5, [[2, 4]])
    values, top = per_user_metrics(scores, truth, None, [2, 3])
    assert top[0].tolist() == [1, 2, 3]
    ndcg = (1 / LOG3) / (1 + 1 / LOG3)
    assert values["ndcg@2"].item() == pytest.approx(ndcg)
    assert values["ndcg@3"].item() == pytest.approx(ndcg)
    assert values["recall@2"].item() == pytest.approx(0.5)
    assert values["precision@2"].item() == pytest.approx(0.5)
    assert values["precision@3"].item() == pytest.approx(1 / 3)
    assert values["hr@2"].item() == 1.0
    assert values["mrr@2"].item() == pytest.approx(0.5)


def test_exclusions_are_never_ranked() -> None:
    scores = torch.tensor([[0.0, 5, 4, 3, 2, 1]])
    truth = _mask(5, [[2, 4]])
    exclude = _mask(5, [[1]])
    values, top = per_user_metrics(scores, truth, exclude, [3])
    assert top[0].tolist() == [2, 3, 4]
    assert values["ndcg@3"].item() == pytest.approx((1 + 0.5) / (1 + 1 / LOG3))
    assert values["recall@3"].item() == pytest.approx(1.0)
    assert values["precision@3"].item() == pytest.approx(2 / 3)
    assert values["mrr@3"].item() == pytest.approx(1.0)


def test_means_over_users_and_coverage() -> None:
    scores = torch.tensor([[0.0, 5, 4, 3, 2, 1], [0.0, 1, 2, 3, 4, 5]])
    truth = _mask(5, [[1], [1]])  # user 0 hits at rank 1, user 1 has item 1 ranked last
    result = ranking_metrics(scores, truth, None, [2])
    assert result["ndcg@2"] == pytest.approx(0.5)
    assert result["hr@2"] == pytest.approx(0.5)
    assert result["mrr@2"] == pytest.approx(0.5)
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["precision@2"] == pytest.approx(0.25)
    assert result["coverage@2"] == pytest.approx(4 / 5)  # {1, 2} and {5, 4}


def test_ideal_dcg_is_capped_at_k() -> None:
    # 3 relevant items, k = 2, both top items relevant: NDCG must be exactly 1.
    scores = torch.tensor([[0.0, 5, 4, 3, 2, 1]])
    values, _ = per_user_metrics(scores, _mask(5, [[1, 2, 3]]), None, [2])
    assert values["ndcg@2"].item() == pytest.approx(1.0)
    assert values["recall@2"].item() == pytest.approx(2 / 3)


def test_accumulator_equals_one_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(10, 31, generator=gen)
    truth = torch.rand(10, 31, generator=gen) > 0.8
    truth[:, 1] = True
    exclude = (torch.rand(10, 31, generator=gen) > 0.9) & ~truth
    whole = ranking_metrics(scores, truth, exclude, [5, 10])
    acc = RankingAccumulator(30, [5, 10])
    acc.update(scores[:4], truth[:4], exclude[:4])
    acc.update(scores[4:], truth[4:], exclude[4:])
    assert acc.n_users == 10
    assert acc.compute() == pytest.approx(whole)


def test_no_users_is_an_error() -> None:
    with pytest.raises(ValueError, match="no users"):
        RankingAccumulator(5, [10]).compute()
