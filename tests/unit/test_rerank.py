"""MMR re-ranking and intra-list diversity (``training.rerank``) on hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from training.rerank import cosine_similarity, intra_list_diversity, mmr

S = 2**-0.5
# Six candidates, most relevant first. Items 0 and 1 are the same kind (A), item 2 is half A half B,
# item 3 is B, items 4 and 5 are C.
VECTORS = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1.0]])
RELEVANCE = torch.tensor([1.0, 0.95, 0.9, 0.5, 0.55, 0.0])


def test_zero_diversity_is_the_relevance_order() -> None:
    shuffled = torch.tensor([0.3, 2.0, -1.0, 0.7, 0.7])
    similarity = torch.rand(5, 5)
    assert mmr(shuffled, similarity, 5, 0.0).tolist() == [1, 3, 4, 0, 2]  # ties keep candidate order
    assert mmr(RELEVANCE, cosine_similarity(VECTORS), 3, 0.0).tolist() == [0, 1, 2]


def test_more_diversity_picks_other_kinds_and_raises_intra_list_diversity() -> None:
    """Worked by hand (relevance already spans [0, 1], so r̂ = r):

    λ = 0.3, after item 0: gains 0.7 r - 0.3 maxsim = 1: .365, 2: .63 - .3 * .707 = .418, 3: .35,
    4: .385 -> item 2; then 1: .365, 3: .35 - .212 = .138, 4: .385 -> item 4.
    λ = 0.7, after item 0: 1: -.415, 2: -.225, 3: .15, 4: .165 -> item 4; then 3: .15, 5: -.7 -> 3.
    """
    similarity = cosine_similarity(VECTORS)
    lists = {lam: mmr(RELEVANCE, similarity, 3, lam).tolist() for lam in (0.0, 0.3, 0.7)}
    assert lists == {0.0: [0, 1, 2], 0.3: [0, 2, 4], 0.7: [0, 4, 3]}
    ild = {lam: float(intra_list_diversity(VECTORS[items])) for lam, items in lists.items()}
    # ILD = 1 - mean pairwise cosine: (1 + .707 + .707) / 3, (.707 + 0 + 0) / 3, 0.
    assert ild[0.0] == pytest.approx(1 - (1 + 2 * S) / 3, abs=1e-6)
    assert ild[0.3] == pytest.approx(1 - S / 3, abs=1e-6)
    assert ild[0.7] == pytest.approx(1.0, abs=1e-6)
    assert ild[0.0] < ild[0.3] < ild[0.7]


def test_mmr_scale_of_scores_does_not_matter_and_bounds_are_checked() -> None:
    similarity = cosine_similarity(VECTORS)
    assert mmr(RELEVANCE * 1000 - 5, similarity, 3, 0.3).tolist() == [0, 2, 4]
    assert mmr(RELEVANCE, similarity, 10, 0.5).numel() == 6  # k beyond the candidates: all of them
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mmr(RELEVANCE, similarity, 3, 1.5)


def test_intra_list_diversity_batched_and_degenerate() -> None:
    lists = torch.stack([VECTORS[[0, 1]], VECTORS[[3, 4]]])
    assert intra_list_diversity(lists).tolist() == pytest.approx([0.0, 1.0])
    assert math.isnan(float(intra_list_diversity(VECTORS[:1])))  # one item: no pair
    # An item without attributes (zero vector) is dissimilar to everything.
    assert float(intra_list_diversity(torch.tensor([[0, 0, 0], [1, 0, 0.0]]))) == pytest.approx(1.0)
