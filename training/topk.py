"""Top-k lists without a dense (users x catalogue) score matrix, for models whose scores are a global
order (Popularity) or sparse per user (ItemKNN: only the neighbours of the user's items score).

Ranking a batch by dense scores costs (users x catalogue) work and memory whatever the model; at a
million users and a million items that is 10^12 cells for a model that knows its answer from a few
hundred. Both helpers give exactly the list a stable descending sort of the dense scores gives:
excluded items are never listed, and ties go to the lower item index. A user with fewer than ``k``
rankable items gets padding (item 0) at the end of the list.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def first_unblocked(order: np.ndarray, blocked: sp.csr_matrix, k: int) -> np.ndarray:
    """(B, k) the first ``k`` items of ``order`` (item indices, best first) that are not in row b of
    ``blocked`` (B, n_items + 1), per row b.

    Only the first ``k`` + (the row's blocked count) items of the order can be listed, so the work is
    (B x (k + the batch's largest blocked count)), not (B x catalogue).
    """
    blocked = blocked.tocsr()
    n_rows, width = blocked.shape
    out = np.zeros((n_rows, k), dtype=np.int64)
    if n_rows == 0 or k == 0 or len(order) == 0:
        return out
    per_row = np.diff(blocked.indptr)
    window = int(min(len(order), k + per_row.max()))
    position = np.full(width, window, dtype=np.int64)  # an item's place in the order's window
    position[order[:window]] = np.arange(window)
    row_of = np.repeat(np.arange(n_rows), per_row)
    place = position[blocked.indices]
    inside = place < window
    taken = np.zeros((n_rows, window), dtype=bool)
    taken[row_of[inside], place[inside]] = True
    free = ~taken
    slot = np.cumsum(free, axis=1)  # 1-based slot of each free item in its row's list
    rows, places = np.nonzero(free & (slot <= k))
    out[rows, slot[rows, places] - 1] = order[places]
    return out


def row_item_keys(rows: sp.csr_matrix) -> np.ndarray:
    """The sorted keys row * width + item of a sparse matrix's stored entries."""
    rows = rows.tocsr()
    row_of = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr))
    return np.sort(row_of * rows.shape[1] + rows.indices)


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` (any shape) is among ``sorted_keys`` (binary search)."""
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    return sorted_keys[np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)] == keys


def rows_per_sort(width: int) -> int:
    """How many rows ``descending_order`` can order at once for a catalogue of ``width`` columns."""
    return 1 << (63 - 32 - column_bits(width))


def column_bits(width: int) -> int:
    """Bits that hold any column index of a catalogue of ``width`` columns."""
    return max(1, int(width - 1).bit_length())


def descending_order(rows: np.ndarray, values: np.ndarray, columns: np.ndarray, width: int) -> np.ndarray:
    """The permutation that orders entries by (row, value descending, column): one sort of unique int64
    keys instead of a three-key lexsort (several times faster). ``values`` are non-negative float32,
    whose bit patterns order as the floats do, so 2^32 - 1 - bits orders them descending; ``rows``
    must lie below ``rows_per_sort(width)`` and the (row, column) pairs must be unique."""
    bits = column_bits(width)
    descending = (np.uint32(0xFFFFFFFF) - values.astype(np.float32).view(np.uint32)).astype(np.int64)
    return np.argsort(
        (rows.astype(np.int64) << (32 + bits)) | (descending << bits) | columns.astype(np.int64)
    )


def top_k_of_sparse(
    scores: sp.csr_matrix, blocked: sp.csr_matrix, fill_order: np.ndarray, k: int
) -> np.ndarray:
    """(B, k) each row's ``k`` best items by ``scores`` (B, n_items + 1), leaving out the items of
    ``blocked``'s row and any item not in ``fill_order``; ties go to the lower item index.

    ``scores`` are sparse, non-negative and without duplicate entries (as a sparse product's are); an
    item without an entry scores 0. A row with fewer than ``k`` positive scores is filled from
    ``fill_order`` (the rankable items, ascending), as zero-score items tied at the bottom.
    """
    n_rows, width = scores.shape
    rankable = np.zeros(width, dtype=bool)
    rankable[fill_order] = True
    scores, blocked = scores.tocsr(copy=True), blocked.tocsr()
    scores.data[(scores.data <= 0) | ~rankable[scores.indices]] = 0.0  # never listed ahead of the fill
    scores.eliminate_zeros()
    blocked_count = np.diff(blocked.indptr)
    blocked_keys = row_item_keys(blocked)
    out = np.zeros((n_rows, k), dtype=np.int64)
    listed = np.zeros(n_rows, dtype=np.int64)
    step = rows_per_sort(width)
    for first in range(0, n_rows, step):
        part = scores[first : first + step]
        per_row = np.diff(part.indptr)
        rows = np.repeat(np.arange(part.shape[0]), per_row)
        order = descending_order(rows, part.data, part.indices, width)
        rank = np.arange(len(order)) - np.repeat(part.indptr[:-1], per_row)
        # Only a row's first k + (its blocked count) entries can make its list: look up just those.
        near = rank < k + blocked_count[first + rows]
        rows, items = first + rows[near], part.indices[order[near]]
        kept = ~contains(blocked_keys, rows * width + items)
        rows, items = rows[kept], items[kept]
        counts = np.bincount(rows - first, minlength=part.shape[0])
        rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        top = rank < k
        out[rows[top], rank[top]] = items[top]
        listed[first : first + part.shape[0]] = np.minimum(counts, k)
    short = np.flatnonzero(listed < k)
    if len(short):
        # A short row listed every item it scores: its fill is the rankable items, lowest index first,
        # past its blocked and its scored items.
        fill = first_unblocked(fill_order, (blocked[short] + scores[short]).tocsr(), k)
        place = np.arange(k)[None, :] - listed[short][:, None]  # the fill's item for each open slot
        out[short] = np.where(place >= 0, np.take_along_axis(fill, np.maximum(place, 0), axis=1), out[short])
    return out
