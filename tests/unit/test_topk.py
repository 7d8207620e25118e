"""training.topk: top-k lists from a global order or sparse scores equal a stable sort of the dense scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from training.topk import first_unblocked, top_k_of_sparse


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


def test_empty_inputs_give_padding_only() -> None:
    empty = sp.csr_matrix((3, 10), dtype=np.float32)
    assert (first_unblocked(np.array([], dtype=np.int64), empty, 4) == 0).all()
    assert (top_k_of_sparse(empty, empty, np.array([], dtype=np.int64), 4) == 0).all()
    assert top_k_of_sparse(empty, empty, np.arange(1, 10), 4).tolist() == [[1, 2, 3, 4]] * 3
