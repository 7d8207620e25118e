"""Full-ranking metrics against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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


# ---- beyond accuracy ------------------------------------------------------------------------------


def _two_lists() -> tuple[torch.Tensor, torch.Tensor]:
    """4 items; user A's top 2 = [1, 2], user B's = [1, 3] (item 4 is never recommended)."""
    scores = torch.tensor([[0.0, 9, 8, 1, 0], [0.0, 9, 1, 8, 0]])
    return scores, _mask(4, [[2], [3]])


def test_gini_novelty_and_intra_list_diversity_by_hand() -> None:
    from training.metrics import BeyondAccuracy

    scores, truth = _two_lists()
    # Train counts 4, 2, 1, 1 of 8: shares 1/2, 1/4, 1/8, 1/8 -> self-information 1, 2, 3, 3 bits.
    genres = torch.tensor([[0, 0], [1, 0], [1, 0], [0, 1], [1, 1.0]])  # items 1, 2 alike; 3 apart
    beyond = BeyondAccuracy(torch.tensor([0.0, 4, 2, 1, 1]), {"attributes": genres})
    acc = RankingAccumulator(4, [2], beyond)
    acc.update(scores, truth, None)
    result = acc.compute()
    # Recommendation counts 2, 1, 1, 0 -> sorted 0, 1, 1, 2: (-3*0 - 1*1 + 1*1 + 3*2) / (4 * 4).
    assert result["gini@2"] == pytest.approx(6 / 16)
    assert result["coverage@2"] == pytest.approx(3 / 4)
    assert result["novelty@2"] == pytest.approx(((1 + 2) / 2 + (1 + 3) / 2) / 2)
    # A: cos(item 1, item 2) = 1 -> ILD 0; B: cos(item 1, item 3) = 0 -> ILD 1.
    assert result["ild_attributes@2"] == pytest.approx(0.5)


def test_gini_extremes_and_unseen_items_count_once() -> None:
    from training.metrics import BeyondAccuracy, gini

    assert gini(torch.tensor([3.0, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0, 0, 0, 8])) == pytest.approx(3 / 4)  # (n - 1) / n: one item takes all
    assert gini(torch.zeros(5)) == 0.0
    info = BeyondAccuracy(torch.tensor([0.0, 3, 1, 0])).self_information
    assert info[1:].tolist() == pytest.approx([-math.log2(3 / 4), 2.0, 2.0])  # item 3 counts as one of 4


def test_beyond_accuracy_accumulates_like_one_batch() -> None:
    from training.metrics import BeyondAccuracy

    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(8, 21, generator=gen)
    truth = torch.rand(8, 21, generator=gen) > 0.7
    beyond = BeyondAccuracy(torch.arange(21.0), {"embeddings": torch.randn(21, 3, generator=gen)})
    whole = RankingAccumulator(20, [5], beyond)
    whole.update(scores, truth, None)
    parts = RankingAccumulator(20, [5], beyond)
    parts.update(scores[:3], truth[:3], None)
    parts.update(scores[3:], truth[3:], None)
    assert parts.compute() == pytest.approx(whole.compute())
    assert {"gini@5", "novelty@5", "ild_embeddings@5"} <= set(whole.compute())


def test_item_attributes_multi_hot_keeps_categorical_and_list_fields() -> None:
    from pipeline.schema import FieldSpec
    from training.attributes import EntityAttributes, FieldEncoding

    genre = FieldEncoding("genres", FieldSpec(type="list", max_tokens=2), ["Drama", "Comedy", "War"])
    year = FieldEncoding("year", FieldSpec(type="numeric", bin_width=10), ["1990", "2000"])
    codes = np.array([[0, 0, 0], [1, 3, 2], [2, 0, 1], [0, 0, 0]])  # genres (2 codes), year bucket
    side = EntityAttributes("item", [genre, year], codes, np.zeros((4, 1), np.float32))
    assert side.multi_hot().tolist() == [[0, 0, 0], [1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert side.multi_hot(("list", "numeric")).shape == (4, 5)
    # Rows on demand (what the evaluation indexes per ranked list): the same rows, any index shape.
    rows = side.multi_hot_rows()
    lists = torch.tensor([[1, 2], [3, 1], [0, 0]])
    assert rows.shape == (4, 3) and rows.any()
    assert torch.equal(rows[lists], side.multi_hot()[lists])
    blank = EntityAttributes("item", [genre, year], np.zeros((4, 3), np.int64), np.zeros((4, 1), np.float32))
    assert not blank.multi_hot_rows().any()
    assert blank.multi_hot_rows(("numeric",)).shape == (4, 2)


def test_list_diversity_from_codes_equals_the_multi_hot_rows_ild() -> None:
    """``MultiHotRows.intra_list_diversity`` (shared codes, no rows built) gives the ILD of the
    multi-hot rows: a list field with a repeated code, items without any value, a one-item list."""
    from pipeline.schema import FieldSpec
    from training.attributes import EntityAttributes, FieldEncoding
    from training.metrics import list_diversity
    from training.rerank import intra_list_diversity

    tags = FieldEncoding("tags", FieldSpec(type="list", max_tokens=3), ["a", "b", "c", "d"])
    brand = FieldEncoding("brand", FieldSpec(type="categorical"), ["x", "y"])
    rng = np.random.default_rng(3)
    codes = np.column_stack([rng.integers(0, 5, (40, 3)), rng.integers(0, 3, (40, 1))])
    codes[5] = [2, 2, 0, 1]  # a repeated tag counts once, as in the multi-hot row
    codes[7] = [0, 0, 0, 0]  # no value at all: a zero row
    side = EntityAttributes("item", [tags, brand], codes, np.zeros((40, 0), np.float32))
    rows = side.multi_hot_rows()
    lists = torch.from_numpy(rng.integers(0, 40, (25, 6)))
    lists[0, :3] = torch.tensor([5, 7, 5])
    expected = intra_list_diversity(rows[lists].float())
    assert torch.allclose(list_diversity(rows, lists), expected, atol=1e-6)
    assert torch.allclose(list_diversity(side.multi_hot(), lists), expected, atol=1e-6)  # a plain tensor
    assert torch.isnan(rows.intra_list_diversity(lists[:, :1])).all()


def test_masking_in_a_reused_or_the_scores_own_buffer_ranks_alike() -> None:
    """``top_k_items`` masks in a copy (the caller's scores untouched), in a reused work tensor, or in
    the scores themselves when they are the work tensor: the same top items each way."""
    from training.metrics import top_k_items

    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(6, 31, generator=gen)
    exclude = torch.rand(6, 31, generator=gen) > 0.6
    original = scores.clone()
    expected = top_k_items(scores, exclude, 5)
    assert torch.equal(scores, original)
    work = torch.full((6, 31), 7.0)
    assert torch.equal(top_k_items(scores, exclude, 5, work), expected)
    assert torch.equal(scores, original)
    assert torch.equal(top_k_items(scores, exclude, 5, scores), expected)
    assert torch.isinf(scores[:, 0]).all() and torch.isinf(scores[exclude]).all()  # masked in place
    acc, whole = RankingAccumulator(30, [5]), RankingAccumulator(30, [5])
    for part in (slice(0, 4), slice(4, 6)):  # a smaller last batch uses the buffer's first rows
        acc.update(original[part], exclude[part], exclude[part])
    whole.update(original, exclude, exclude)
    assert acc.compute() == pytest.approx(whole.compute())


def test_dense_mask_is_the_positive_entries_of_the_sparse_rows() -> None:
    """The evaluation's truth/exclusion masks: set from the non-zeros, equal to ``toarray() > 0``
    (explicit zeros and negative entries stay unset)."""
    import scipy.sparse as sp

    from training.data import dense_mask

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((7, 30)) < 0.2, rng.integers(-1, 3, (7, 30)), 0).astype(np.float32)
    rows = sp.csr_matrix(dense)
    rows.data[::3] = 0.0  # explicit zeros kept in the structure
    mask = dense_mask(rows[[4, 0, 6]])
    assert mask.dtype == torch.bool
    assert torch.equal(mask, torch.from_numpy(rows[[4, 0, 6]].toarray() > 0))
    assert dense_mask(sp.csr_matrix((0, 5))).shape == (0, 5)


_HUGE_PAGE_PROBE = """
import sys
import training.metrics  # recforge first, as every entry point does
import torch

tensor = torch.ones(16 << 20)  # 64 MB, a batch's scores at a small scale
address = tensor.data_ptr()
eligible = None
for line in open("/proc/self/smaps"):
    fields = line.split()
    if "-" in fields[0] and ":" not in fields[0]:
        start, end = (int(x, 16) for x in fields[0].split("-"))
        inside = start <= address < end
    elif inside and fields[0] == "THPeligible:":
        eligible = fields[1]
print(eligible)
"""


@pytest.mark.slow  # Python subprocesses
def test_torch_tensors_may_use_transparent_huge_pages_unless_switched_off() -> None:
    """Importing recforge before torch lets torch back big tensors with huge pages (the evaluation's
    page faults); ``THP_MEM_ALLOC_ENABLE=0`` in the environment keeps 4 KB pages."""
    import os
    import subprocess
    import sys

    mode_file = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = mode_file.read_text() if mode_file.exists() else "[never]"
    if "[never]" in mode:
        pytest.skip("this kernel has transparent huge pages switched off")

    def eligible(env: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _HUGE_PAGE_PROBE],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert eligible(env) == "1"
    if "[madvise]" in mode:  # with [always] every big mapping is eligible, whatever torch asks
        assert eligible({**env, "THP_MEM_ALLOC_ENABLE": "0"}) == "0"


def test_ranked_lists_with_sparse_truth_equal_dense_scores() -> None:
    """``update_lists`` (a model's own top-k lists, sparse ground truth) gives the values ``update`` gives
    for dense scores whose top-k are those lists: users with none, one or many relevant items."""
    import scipy.sparse as sp

    from training.metrics import BeyondAccuracy, top_k_items

    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(12, 41, generator=gen)
    truth = torch.rand(12, 41, generator=gen) > 0.85
    truth[0] = False  # a user without a relevant item
    truth[:, 0] = False
    exclude = (torch.rand(12, 41, generator=gen) > 0.8) & ~truth
    beyond = BeyondAccuracy(torch.arange(41, dtype=torch.float64))
    dense = RankingAccumulator(40, [5, 10], beyond, keep_per_user=True)
    dense.update(scores, truth, exclude)
    lists = RankingAccumulator(40, [5, 10], beyond, keep_per_user=True)
    lists.update_lists(top_k_items(scores, exclude, 10), sp.csr_matrix(truth.numpy()))
    assert lists.compute() == pytest.approx(dense.compute(), rel=1e-6)
    for metric, values in dense.per_user_values().items():
        np.testing.assert_allclose(lists.per_user_values()[metric], values, rtol=1e-6, err_msg=metric)
    with pytest.raises(ValueError, match="k = 10"):
        lists.update_lists(top_k_items(scores, exclude, 5), sp.csr_matrix(truth.numpy()))
