"""training.topk: top-k lists from a global order, sparse scores or dot products block by block equal a
stable sort of the dense scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.topk import RankableVectors, first_unblocked, top_k_of_dot_product, top_k_of_sparse


def _stable_top(scores: np.ndarray, blocked: np.ndarray, rankable: np.ndarray, k: int) -> np.ndarray:
    """Reference: a stable descending sort of dense scores, blocked and unrankable items out, 0-padded."""
    masked = np.where(blocked | ~rankable[None, :], -np.inf, scores.astype(np.float64))
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    lists = np.where(np.isfinite(np.take_along_axis(masked, order, axis=1)), order, 0)
    return np.pad(lists, ((0, 0), (0, k - lists.shape[1])))


@pytest.mark.parametrize("seed", range(5))
def test_first_unblocked_is_the_order_without_each_rows_blocked_items(seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, rows, k = 40, 9, 6
    counts = rng.integers(0, 5, width).astype(np.float64)  # many ties
    counts[0] = 0.0
    order = np.argsort(-counts, kind="stable")
    order = order[(order > 0) & (counts[order] > 0)]
    blocked = rng.random((rows, width)) < rng.uniform(0.05, 0.9, (rows, 1))  # some rows nearly all blocked
    rankable = np.zeros(width, dtype=bool)
    rankable[order] = True
    got = first_unblocked(order, sp.csr_matrix(blocked), k)
    np.testing.assert_array_equal(got, _stable_top(np.tile(counts, (rows, 1)), blocked, rankable, k))


@pytest.mark.parametrize("seed", range(5))
def test_top_k_of_sparse_is_a_stable_sort_with_the_zero_tail_by_index(seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, rows, k = 30, 12, 8
    # Few non-zeros per row (some rows fewer than k: the zero-score tail fills them), values with ties.
    dense = np.where(
        rng.random((rows, width)) < rng.uniform(0.05, 0.6, (rows, 1)), rng.integers(1, 4, (rows, width)), 0
    )
    dense[:, 0] = 0
    blocked = rng.random((rows, width)) < 0.3
    rankable = rng.random(width) < 0.85
    rankable[0] = False
    got = top_k_of_sparse(
        sp.csr_matrix(dense.astype(np.float32)), sp.csr_matrix(blocked), np.flatnonzero(rankable), k
    )
    np.testing.assert_array_equal(got, _stable_top(dense, blocked, rankable, k))


@pytest.mark.parametrize("seed", range(3))
def test_top_k_of_sparse_selects_rows_of_every_length_in_groups(seed: int) -> None:
    """Rows from empty to nearly full (several length groups, each padded to its longest row), with
    tied scores, and blocked counts from none to more than a row's entries."""
    rng = np.random.default_rng(seed)
    width, rows, k = 300, 40, 10
    density = np.concatenate([[0.0, 0.002, 0.9], rng.uniform(0.0, 0.8, rows - 3) ** 3])[:, None]
    dense = np.where(rng.random((rows, width)) < density, rng.integers(1, 6, (rows, width)), 0)
    dense[:, 0] = 0
    blocked = rng.random((rows, width)) < rng.choice([0.0, 0.02, 0.5], (rows, 1))
    rankable = rng.random(width) < 0.9
    rankable[0] = False
    got = top_k_of_sparse(
        sp.csr_matrix(dense.astype(np.float32)), sp.csr_matrix(blocked), np.flatnonzero(rankable), k
    )
    np.testing.assert_array_equal(got, _stable_top(dense, blocked, rankable, k))


def test_empty_inputs_give_padding_only() -> None:
    empty = sp.csr_matrix((3, 10), dtype=np.float32)
    assert (first_unblocked(np.array([], dtype=np.int64), empty, 4) == 0).all()
    assert (top_k_of_sparse(empty, empty, np.array([], dtype=np.int64), 4) == 0).all()
    assert top_k_of_sparse(empty, empty, np.arange(1, 10), 4).tolist() == [[1, 2, 3, 4]] * 3


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_items", [1, 3, 7, 64])
def test_top_k_of_dot_product_block_by_block_is_a_stable_sort_of_the_product(
    seed: int, block_items: int
) -> None:
    """Any block size gives the stable-sort list of the masked product: later blocks' entries merged in,
    the k-th best's ties kept behind the earlier item, short rows padded."""
    rng = np.random.default_rng(seed)
    width, rows, k, dim = 40, 11, 6, 3
    # Small integer vectors: exact products, with many ties, including ties at the k-th place.
    queries = rng.integers(-2, 3, (rows, dim)).astype(np.float32)
    items = rng.integers(-2, 3, (width, dim)).astype(np.float32)
    blocked = rng.random((rows, width)) < rng.uniform(0.0, 0.95, (rows, 1))
    blocked[0, 3:] = True  # fewer than k rankable items left
    never = rng.random(width) < 0.2
    rankable = ~never
    rankable[0] = False
    got = top_k_of_dot_product(
        torch.from_numpy(queries),
        RankableVectors(torch.from_numpy(items), torch.from_numpy(never)),
        sp.csr_matrix(blocked),
        k,
        block_items,
    )
    # Ties in the order RankableVectors packs the items: the longer vector first, then the lower index.
    lengths = torch.linalg.vector_norm(torch.from_numpy(items), dim=1).numpy()
    masked = np.where(blocked | ~rankable[None, :], -np.inf, (queries @ items.T).astype(np.float64))
    grid = np.broadcast_to
    order = np.lexsort((grid(np.arange(width), masked.shape), grid(-lengths, masked.shape), -masked))[:, :k]
    expected = np.where(np.isfinite(np.take_along_axis(masked, order, axis=1)), order, 0)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert (got.numpy()[0, 2:] == 0).all()  # the first row ran out of rankable items


def test_top_k_of_dot_product_without_rankable_items_or_rows() -> None:
    items = torch.ones(5, 2)
    never = torch.tensor([False, True, True, True, True])
    none_rankable = top_k_of_dot_product(
        torch.ones(3, 2), RankableVectors(items, never), sp.csr_matrix((3, 5)), 4
    )
    assert none_rankable.shape == (3, 0)
    no_rows = top_k_of_dot_product(torch.ones(0, 2), RankableVectors(items), sp.csr_matrix((0, 5)), 4)
    assert no_rows.shape == (0, 4)
    # k above the rankable items: the list is as long as the catalogue's rankable part
    assert top_k_of_dot_product(torch.ones(1, 2), RankableVectors(items), sp.csr_matrix((1, 5)), 9).shape == (
        1,
        4,
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("block_items", [2, 8])
def test_rows_that_no_later_item_can_enter_stop_being_scored_without_changing_lists(
    seed: int, block_items: int
) -> None:
    """Queries and items in one orthant (products near the lengths' product) and item lengths over
    three orders of magnitude: most rows' k-th best soon exceeds |query| x every later item's length, so
    the bound rules those blocks out; the lists still equal the dense top-k."""
    rng = np.random.default_rng(seed)
    width, rows, k = 300, 20, 5
    queries = (rng.uniform(0.5, 1.0, (rows, 4)) * rng.uniform(0.1, 10.0, (rows, 1))).astype(np.float32)
    directions = rng.uniform(0.5, 1.0, (width, 4))
    items = (directions * np.logspace(0, -3, width)[rng.permutation(width), None]).astype(np.float32)
    blocked = rng.random((rows, width)) < 0.1
    got = top_k_of_dot_product(
        torch.from_numpy(queries),
        RankableVectors(torch.from_numpy(items)),
        sp.csr_matrix(blocked),
        k,
        block_items,
    )
    rankable = np.ones(width, dtype=bool)
    rankable[0] = False
    scores = (torch.from_numpy(queries) @ torch.from_numpy(items).T).numpy()
    np.testing.assert_array_equal(got.numpy(), _stable_top(scores, blocked, rankable, k))
