"""Top-k lists without a dense (users x catalogue) score matrix, for models whose scores are a global
order (Popularity) or sparse per user (ItemKNN: only the neighbours of the user's items score), and
for dot-product models, ranked block by block of the catalogue (``top_k_of_dot_product``).

Ranking a batch by dense scores costs (users x catalogue) work and memory whatever the model; at a
million users and a million items that is 10^12 cells for a model that knows its answer from a few
hundred. The first two helpers give exactly the list a stable descending sort of the dense scores
gives: excluded items are never listed, and ties go to the lower item index. A dot-product model
scores every item, but a cache-sized block at a time, and its lists equal those of the dense scores
with ties in the order ``RankableVectors`` packs the items. A user with fewer than ``k`` rankable
items gets padding (item 0) at the end of the list.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


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


def descending_keys(values: np.ndarray, columns: np.ndarray, width: int) -> np.ndarray:
    """Unique int64 keys whose ascending order is (value descending, column ascending). ``values`` are
    non-negative float32, whose bit patterns order as the floats do, so 2^32 - 1 - bits orders them
    descending; the column fills the low ``column_bits(width)`` bits."""
    descending = (np.uint32(0xFFFFFFFF) - values.astype(np.float32).view(np.uint32)).astype(np.int64)
    return (descending << column_bits(width)) | columns.astype(np.int64)


def descending_order(rows: np.ndarray, values: np.ndarray, columns: np.ndarray, width: int) -> np.ndarray:
    """The permutation that orders entries by (row, value descending, column): one sort of unique int64
    keys (``descending_keys`` under the row) instead of a three-key lexsort (several times faster).
    ``rows`` must lie below ``rows_per_sort(width)`` and the (row, column) pairs must be unique."""
    rows_above = rows.astype(np.int64) << (32 + column_bits(width))
    return np.argsort(rows_above | descending_keys(values, columns, width))


def top_k_of_sparse(
    scores: sp.csr_matrix, blocked: sp.csr_matrix, fill_order: np.ndarray, k: int
) -> np.ndarray:
    """(B, k) each row's ``k`` best items by ``scores`` (B, n_items + 1), leaving out the items of
    ``blocked``'s row and any item not in ``fill_order``; ties go to the lower item index.

    ``scores`` are sparse, non-negative and without duplicate entries (as a sparse product's are); an
    item without an entry scores 0. A row with fewer than ``k`` positive scores is filled from
    ``fill_order`` (the rankable items, ascending), as zero-score items tied at the bottom.

    A row's list comes from its first ``k`` + (its blocked count) entries only, so each row is not
    sorted but selected: ``torch.topk`` over the entries' ``descending_keys`` (by score, then by the
    lower index). Rows are selected in groups of similar length, so that padding a group to a rectangle
    at most doubles its work.
    """
    n_rows, width = scores.shape
    rankable = np.zeros(width, dtype=bool)
    rankable[fill_order] = True
    scores, blocked = scores.tocsr(copy=True), blocked.tocsr()
    scores.data[(scores.data <= 0) | ~rankable[scores.indices]] = 0.0  # never listed ahead of the fill
    scores.eliminate_zeros()
    out = np.zeros((n_rows, k), dtype=np.int64)
    listed = np.zeros(n_rows, dtype=np.int64)
    per_row = np.diff(scores.indptr)
    if scores.nnz and k:
        blocked_count = np.diff(blocked.indptr)
        blocked_keys = row_item_keys(blocked)
        keys = descending_keys(scores.data, scores.indices, width)  # the smallest key is the best
        unused = np.iinfo(np.int64).max  # pads a row past its entries; never the smallest of a real one
        group = np.ceil(np.log2(np.maximum(per_row, 1))).astype(np.int64)
        group[per_row == 0] = -1
        for level in np.unique(group[group >= 0]):
            rows = np.flatnonzero(group == level)
            counts = per_row[rows]
            length = int(counts.max())
            first = np.cumsum(counts) - counts  # each row's first entry among the group's
            step = np.arange(int(counts.sum()))
            padded = np.full(len(rows) * length, unused, dtype=np.int64)
            padded[step + np.repeat(np.arange(len(rows)) * length - first, counts)] = keys[
                step + np.repeat(scores.indptr[rows] - first, counts)
            ]
            near = min(length, k + int(blocked_count[rows].max()))
            top = torch.topk(torch.from_numpy(padded.reshape(len(rows), length)), near, dim=1, largest=False)
            keys_of_top = top.values.numpy()
            items = keys_of_top & ((1 << column_bits(width)) - 1)
            keep = (keys_of_top != unused) & ~contains(blocked_keys, rows[:, None] * width + items)
            slot = np.cumsum(keep, axis=1) - 1
            at_row, at = np.nonzero(keep & (slot < k))
            out[rows[at_row], slot[at_row, at]] = items[at_row, at]
            listed[rows] = np.minimum(keep.sum(axis=1), k)
    short = np.flatnonzero(listed < k)
    if len(short):
        # A short row listed every item it scores: its fill is the rankable items, lowest index first,
        # past its blocked and its scored items.
        fill = first_unblocked(fill_order, (blocked[short] + scores[short]).tocsr(), k)
        place = np.arange(k)[None, :] - listed[short][:, None]  # the fill's item for each open slot
        out[short] = np.where(place >= 0, np.take_along_axis(fill, np.maximum(place, 0), axis=1), out[short])
    return out


# Catalogue columns per block of ``top_k_of_dot_product``: a batch's block of scores (users x this, float32)
# stays in the cache between the product that writes it and the comparison that reads it.
DOT_PRODUCT_BLOCK_ITEMS = 8192


class RankableVectors:
    """The item vectors of a dot-product model that may be ranked, packed once for every batch of
    ``top_k_of_dot_product``: without the padding row 0 and without the items where ``never``
    ((n_items + 1,) bool) is true, so that no block scores an item only to mask it, and in descending
    order of vector length (ties by item index), so that the items most likely to score high come
    first and a later block's items can be ruled out by their length."""

    def __init__(self, items: torch.Tensor, never: torch.Tensor | None = None) -> None:
        items = items.detach().float()
        rankable = torch.ones(items.shape[0], dtype=torch.bool)
        rankable[0] = False
        if never is not None:
            rankable &= ~never
        kept = torch.nonzero(rankable).reshape(-1)
        lengths = torch.linalg.vector_norm(items[kept], dim=1)
        by_length = torch.sort(lengths, descending=True, stable=True).indices
        self.items = kept[by_length]  # packed position -> item
        self.vectors = items[self.items].contiguous()
        self.lengths = lengths[by_length]  # non-increasing
        self.position = torch.full((items.shape[0],), -1, dtype=torch.int64)  # item -> packed position
        self.position[self.items] = torch.arange(len(self.items))

    def __len__(self) -> int:
        return len(self.items)


# Slack on the Cauchy-Schwarz bound |q| |v| of a product q . v: float32 products and lengths are
# rounded, and a bound that is a rounding too tight could rule out an item that belongs in a list.
BOUND_SLACK = 1e-4


@torch.no_grad()
def top_k_of_dot_product(
    queries: torch.Tensor,
    rankable: RankableVectors,
    blocked: sp.csr_matrix,
    k: int,
    block_items: int = DOT_PRODUCT_BLOCK_ITEMS,
) -> torch.Tensor:
    """(B, k) each row's ``k`` best items by the dot product of ``queries`` (B, d) with the
    ``rankable`` item vectors, leaving out the items of ``blocked``'s row (SciPy CSR
    (B, n_items + 1)); padding (0) ends the list of a row with fewer than ``k`` rankable items.

    The items are scored ``block_items`` at a time, in ``rankable``'s order (longest vector first), so
    a block's scores are read while in the cache rather than written to and re-read from a
    (B x catalogue) matrix. The first block's top k start each row's list; in a later block only a
    score above the row's current k-th best can enter it, and past the first blocks few rows have one:
    a row maximum finds those rows, and only their scores above the k-th best are merged. A row whose
    k-th best is at least |query| x (the block's longest item vector) can gain nothing from that block
    or any later one (no product exceeds the lengths' product), and is no longer scored.

    The lists are those of a top-k over the whole masked score row; exactly tied scores are ordered as
    ``rankable`` orders their items (the longer vector first, then the lower index).
    """
    n_rows, width = queries.shape[0], len(rankable)
    k = min(k, width)
    best_values = torch.full((n_rows, k), -torch.inf, dtype=torch.float32)
    best_places = torch.zeros((n_rows, k), dtype=torch.int64)
    if n_rows == 0 or k == 0:
        return best_places
    queries = queries.detach().float()
    reach = torch.linalg.vector_norm(queries, dim=1) * (1.0 + BOUND_SLACK)
    blocked = blocked.tocsr()
    blocked_places = rankable.position[torch.from_numpy(blocked.indices.astype(np.int64))]
    blocked_rows = torch.from_numpy(np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(blocked.indptr)))
    kept = blocked_places >= 0
    blocked_places, by_place = torch.sort(blocked_places[kept])
    blocked_rows = blocked_rows[kept][by_place]
    buffer = torch.empty((n_rows, min(block_items, width)), dtype=torch.float32)
    active = torch.arange(n_rows)  # the rows whose lists a block can still change
    slot_of_row = torch.arange(n_rows)  # row -> its place among the active rows (-1: none)
    for first in range(0, width, block_items):
        last = min(first + block_items, width)
        if first > 0:
            still = reach[active] * rankable.lengths[first] > best_values[active, -1]
            if not bool(still.all()):
                active = active[still]
                if len(active) == 0:
                    break
                slot_of_row.fill_(-1)
                slot_of_row[active] = torch.arange(len(active))
        scores = torch.matmul(
            queries[active], rankable.vectors[first:last].T, out=buffer[: len(active), : last - first]
        )
        lo, hi = torch.searchsorted(blocked_places, torch.tensor([first, last])).tolist()
        slots = slot_of_row[blocked_rows[lo:hi]]
        inside = slots >= 0
        scores[slots[inside], blocked_places[lo:hi][inside] - first] = -torch.inf
        if first == 0:
            # torch.topk finds each row's k-th best; the entries at or above it are then merged in
            # packed order, so that ties keep it (topk's own order among ties is unspecified).
            kth = torch.topk(scores, min(k, last), dim=1).values[:, -1:]
            rows, places = torch.nonzero(scores >= kth, as_tuple=True)
            _merge(best_values, best_places, rows, scores[rows, places], places)
            continue
        # Only a score above a row's k-th best can enter its list (a tie would stay behind it).
        threshold = best_values[active, -1]
        hit = torch.nonzero(scores.amax(dim=1) > threshold).reshape(-1)
        if len(hit):
            at, places = torch.nonzero(scores[hit] > threshold[hit, None], as_tuple=True)
            slots = hit[at]
            _merge(best_values, best_places, active[slots], scores[slots, places], places + first)
    top = rankable.items[best_places]
    top[best_values == -torch.inf] = 0
    return top


def _merge(
    best_values: torch.Tensor,
    best_items: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    items: torch.Tensor,
) -> None:
    """Merge candidates (``rows`` ascending, their ``values`` and ``items``) into the rows' sorted
    lists in place; a candidate ties behind an entry already listed."""
    hit_rows, counts = torch.unique_consecutive(rows, return_counts=True)
    slot = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    place = torch.repeat_interleave(torch.arange(len(hit_rows)), counts)
    width = int(counts.max())
    candidate_values = torch.full((len(hit_rows), width), -torch.inf, dtype=best_values.dtype)
    candidate_items = torch.zeros((len(hit_rows), width), dtype=best_items.dtype)
    candidate_values[place, slot], candidate_items[place, slot] = values, items
    merged_values = torch.cat([best_values[hit_rows], candidate_values], dim=1)
    merged_items = torch.cat([best_items[hit_rows], candidate_items], dim=1)
    order = torch.sort(merged_values, dim=1, descending=True, stable=True).indices[:, : best_values.shape[1]]
    best_values[hit_rows] = merged_values.gather(1, order)
    best_items[hit_rows] = merged_items.gather(1, order)
