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
    window = int(min(len(order), k + (per_row.max() if n_rows else 0)))
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


def top_k_of_sparse(
    scores: sp.csr_matrix, blocked: sp.csr_matrix, fill_order: np.ndarray, k: int
) -> np.ndarray:
    """(B, k) each row's ``k`` best items by ``scores`` (B, n_items + 1), sparse and non-negative (an
    item without an entry scores 0), leaving out the items of ``blocked``'s row and any item not in
    ``fill_order``; ties go to the lower item index. A row with fewer than ``k`` positive scores is
    filled from ``fill_order`` (the rankable items, ascending), as zero-score items tied at the bottom.
    """
    scores = scores.tocsr()
    blocked = blocked.tocsr()
    n_rows, width = scores.shape
    rankable = np.zeros(width, dtype=bool)
    rankable[fill_order] = True
    entries = scores.tocoo()
    row_of, items, values = entries.row.astype(np.int64), entries.col.astype(np.int64), entries.data
    blocked_rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(blocked.indptr))
    blocked_keys = np.sort(blocked_rows * width + blocked.indices)
    keys = row_of * width + items
    if len(blocked_keys):
        found = np.minimum(np.searchsorted(blocked_keys, keys), len(blocked_keys) - 1)
        kept = blocked_keys[found] != keys
    else:
        kept = np.ones(len(keys), dtype=bool)
    kept &= rankable[items] & (values > 0)
    row_of, items, values = row_of[kept], items[kept], values[kept]
    order = np.lexsort((items, -values, row_of))
    row_of, items = row_of[order], items[order]
    rank = np.arange(len(row_of)) - np.searchsorted(row_of, row_of, side="left")
    top = rank < k
    out = np.zeros((n_rows, k), dtype=np.int64)
    out[row_of[top], rank[top]] = items[top]
    listed = np.bincount(row_of[top], minlength=n_rows)
    short = np.flatnonzero(listed < k)
    if len(short):
        # The zero-score items of a short row, lowest index first, skipping its blocked and listed items.
        listed_rows = sp.csr_matrix(
            (np.ones(int(top.sum()), np.float32), (row_of[top], items[top])), shape=(n_rows, width)
        )
        skip = (blocked[short] + listed_rows[short]).tocsr()
        fill = first_unblocked(fill_order, skip, k)
        place = np.arange(k)[None, :] - listed[short][:, None]  # the fill's item for each open slot
        open_slot = place >= 0
        rows = np.broadcast_to(short[:, None], place.shape)
        out[rows[open_slot], np.broadcast_to(np.arange(k), place.shape)[open_slot]] = np.take_along_axis(
            fill, np.maximum(place, 0), axis=1
        )[open_slot]
    return out
