"""Classic baselines every learned model must beat. Fitted in closed form from the training matrix.

They are ``nn.Module``s with their fitted state in buffers, so they save, load, evaluate and serve
through exactly the same code as the learned models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from training.models.capabilities import (
    AddsHistoryToKnownUser,
    ItemSimilarity,
    RanksTopK,
    ScoresFromHistory,
)
from training.topk import descending_order, first_unblocked, rows_per_sort, top_k_of_sparse


class FittedBaseline(nn.Module):
    """Base: ``fit(train)`` with ``train`` a CSR matrix of shape (n_users, n_items + 1)."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items

    def fit(self, train: sp.csr_matrix) -> FittedBaseline:  # pragma: no cover - interface
        raise NotImplementedError

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface


class Popularity(FittedBaseline, RanksTopK):
    """Scores every item by its number of training interactions, the same for every user.

    Its top-k list is the global order minus the user's seen items (``top_k``), no catalogue-wide scores.
    """

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("item_counts", torch.zeros(n_items + 1))

    def fit(self, train: sp.csr_matrix) -> Popularity:
        counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
        self.item_counts = torch.from_numpy(counts)
        return self

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.item_counts.unsqueeze(0).expand(users.shape[0], -1).clone()

    def top_k(
        self, users: torch.Tensor, history: torch.Tensor, blocked: sp.csr_matrix, k: int
    ) -> torch.Tensor:
        return torch.from_numpy(first_unblocked(self._order(), blocked, k))

    def _order(self) -> np.ndarray:
        """The items by training interactions, most first, ties to the lower index; without padding and
        items that have none. Rebuilt per fit/load."""
        key = (id(self.item_counts), self.item_counts._version)
        cached = getattr(self, "_cached_order", None)
        if cached is None or cached[0] != key:
            counts = self.item_counts.numpy()
            order = np.argsort(-counts, kind="stable")
            cached = self._cached_order = (key, order[(order > 0) & (counts[order] > 0)])
        return cached[1]


class ProfileBaseline(FittedBaseline, AddsHistoryToKnownUser):
    """Base of the baselines that score a user from a dense binary item profile (EASE).

    A profile is the set of items the user is known to have chosen: for a user known at training time,
    its training row (``user_items``, kept at fit time) plus the items of the given history; for a user
    unknown at training time (index -1), the history alone. The history is what the user did up to
    the moment of scoring (the feature store's events, then a visitor's session), so a known user's
    session counts at once instead of after the next retraining. Adding the history is no leak: the
    evaluator gives a validation history only training events and a test history training and
    validation events.
    """

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("user_items", torch.zeros(0, n_items + 1))

    def profiles(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B, n_items + 1) binary profiles; column 0 (padding) is always 0."""
        return binary_profiles(self.user_items, users, history)


def binary_profiles(user_items: torch.Tensor, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """(B, n_items + 1) binary profiles: the items of each user's ``history``, plus, for a user known at
    training time, its row of ``user_items`` (its training items); a user unknown at training time
    (index -1, or beyond the kept rows) has its history alone. Column 0 (padding) is always 0. Shared by
    the models that score from a whole item profile (ItemKNN, EASE, Mult-VAE), so the service and the
    evaluator profile a user the same way for all of them."""
    width = user_items.shape[1]
    known = (users >= 0) & (users < user_items.shape[0])
    rows = history.to(user_items.device)
    profile = torch.zeros(users.shape[0], width, device=user_items.device).scatter_(1, rows, 1.0)
    if known.any():
        profile[known] = torch.maximum(profile[known], user_items[users[known]].float())
    profile[:, 0] = 0.0
    return profile


class TrainRows(nn.Module):
    """The binary training matrix (n_users, n_items + 1) as CSR buffers (``indptr``, ``indices``).

    Dense, a shop's matrix would not fit in memory (50k users x 100k items is 20 GB of float32), and the
    kNN baselines read only a batch of rows at a time. ``matrix()`` rebuilds the SciPy CSR once per
    change of the buffers (fit or artifact load).
    """

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.register_buffer("indptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long))
        self._cached: tuple[tuple[int, int], sp.csr_matrix] | None = None

    def fit(self, binary: sp.csr_matrix) -> None:
        binary = binary.tocsr()
        binary.sort_indices()
        self.indptr = torch.from_numpy(binary.indptr.astype(np.int64))
        self.indices = torch.from_numpy(binary.indices.astype(np.int64))

    def matrix(self) -> sp.csr_matrix:
        key = (self.indptr._version + self.indices._version, id(self.indices))
        if self._cached is None or self._cached[0] != key:
            indices = self.indices.numpy()
            shape = (len(self.indptr) - 1, self.n_items + 1)
            data = np.ones(len(indices), np.float32)
            self._cached = (key, sp.csr_matrix((data, indices, self.indptr.numpy()), shape=shape))
        return self._cached[1]

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def trained_items(self) -> np.ndarray:
        """The items with at least one training interaction, ascending (padding never); kept with
        ``matrix()``."""
        matrix = self.matrix()
        if getattr(self, "_trained", (None,))[0] is not matrix:
            counts = np.bincount(matrix.indices, minlength=matrix.shape[1])
            counts[0] = 0
            self._trained = (matrix, np.flatnonzero(counts))
        return self._trained[1]

    def profiles(self, users: torch.Tensor, history: torch.Tensor) -> sp.csr_matrix:
        """(B, n_items + 1) binary profiles as ``binary_profiles`` builds them, sparse: the items of each
        user's ``history`` plus, for a user known at training time, its training row."""
        users_np = users.numpy()
        history_np = history.numpy()
        width = self.n_items + 1
        rows = np.repeat(np.arange(len(users_np)), history_np.shape[1])
        columns = history_np.ravel()
        given = columns > 0
        profile = sp.csr_matrix(
            (np.ones(int(given.sum()), np.float32), (rows[given], columns[given])),
            shape=(len(users_np), width),
        )
        known = (users_np >= 0) & (users_np < self.n_rows)
        if known.any():
            trained = self.matrix()[np.where(known, users_np, 0)]
            profile = profile + sp.diags(known.astype(np.float32)) @ trained
        profile = (profile > 0).astype(np.float32).tocsr()
        profile.sort_indices()
        return profile


def _adopt_dense_user_items(train_rows: TrainRows, state_dict: dict, prefix: str) -> None:
    """Artifacts saved before the kNN baselines kept their state sparse hold a dense ``user_items`` (and
    ItemKNN a dense ``similarity``): convert it in ``state_dict`` so a promoted model keeps serving."""
    if f"{prefix}user_items" in state_dict:
        dense = state_dict.pop(f"{prefix}user_items")
        train_rows.fit(sp.csr_matrix((dense.numpy() > 0).astype(np.float32)))
        state_dict[f"{prefix}train_rows.indptr"] = train_rows.indptr
        state_dict[f"{prefix}train_rows.indices"] = train_rows.indices


def _item_blocks(by_item: sp.csr_matrix, user_counts: np.ndarray, block_cells: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) item ranges for ItemKNN's fit: each range's co-occurrence rows hold at
    most ~``block_cells`` entries, bounded per item by the sum of its users' item counts (the
    entries of its row if no two of its users share another item), and at most
    ``rows_per_sort`` items, which ``descending_order`` orders at once.

    Sizing blocks by that bound rather than by the catalogue's width keeps the many rarely bought
    items of a long tail in few blocks: each block costs a product call and a pass over the width.
    """
    width = by_item.shape[0]
    bound = np.cumsum(by_item @ user_counts.astype(np.float64))
    most_rows = rows_per_sort(width)
    blocks, start = [], 0
    while start < width:
        before = bound[start - 1] if start else 0.0
        stop = int(np.searchsorted(bound, before + block_cells, side="right"))
        stop = min(max(stop, start + 1), start + most_rows, width)
        blocks.append((start, stop))
        start = stop
    return blocks


_Part = TypeVar("_Part")


def in_threads(
    work: Callable[[tuple[int, int]], _Part], ranges: Iterable[tuple[int, int]], threads: int
) -> list[_Part]:
    """``work`` of each range, in order, run by ``threads`` threads at once.

    Why threads pay here: SciPy's sparse product (and NumPy's and torch's kernels) release the GIL but
    each runs on one core, so ranges of rows worked on side by side use the cores the evaluation and
    the fit are given (``torch.get_num_threads()``). Every range's result depends on its rows alone, so
    the parts are the same whatever the number of threads.
    """
    ranges = list(ranges)
    if threads < 2 or len(ranges) < 2:
        return [work(r) for r in ranges]
    with ThreadPoolExecutor(min(threads, len(ranges))) as pool:
        return list(pool.map(work, ranges))


def product_by_rows(left: sp.csr_matrix, right: sp.csr_matrix, threads: int) -> sp.csr_matrix:
    """``left @ right`` as CSR, ``left``'s rows split into ``threads`` ranges of about equal non-zeros
    multiplied side by side (``in_threads``): the same rows, entries and order as one product."""
    if threads < 2 or left.shape[0] < 2:
        return (left @ right).tocsr()
    cuts = np.searchsorted(left.indptr, np.linspace(0, left.nnz, threads + 1)[1:-1])
    bounds = [0, *sorted(set(int(c) for c in cuts) - {0, left.shape[0]}), left.shape[0]]
    parts = in_threads(
        lambda r: (left[r[0] : r[1]] @ right).tocsr(), zip(bounds, bounds[1:], strict=False), threads
    )
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


class ItemKNN(FittedBaseline, AddsHistoryToKnownUser, ScoresFromHistory, ItemSimilarity, RanksTopK):
    """Item-based collaborative filtering with cosine similarity, keeping each item's ``k`` neighbours.

    The standard item-kNN (Sarwar et al. 2001; Deshpande & Karypis 2004; RecBole's ItemKNN): each
    candidate item j keeps its ``k`` most similar items N(j), and a user's score for j is the sum of
    sim(i, j) over the items i of the user's history that are among N(j). The neighbourhood is the
    TARGET's: a history item that is not among j's neighbours says nothing about j, even when j is
    among its own neighbours. Row i of the similarity = the ``k`` neighbours of item i (what
    ``/similar_items`` returns), so scores = profile @ similarity.T, with the profiles of
    ``ProfileBaseline`` (training row + history).

    Everything is kept sparse (the ``k`` neighbours of each item, the training rows): a catalogue of
    100k items would need 40 GB as a dense item x item matrix. ``fit`` computes the similarity a block
    of items at a time (sparse co-occurrence counts) and chooses each item's ``k`` neighbours among the
    items it co-occurs with, ties broken by the lower item index: nothing of catalogue width is dense.
    """

    def __init__(self, n_users: int, n_items: int, k: int = 100, shrink: float = 0.0) -> None:
        super().__init__(n_users, n_items)
        if k < 1 or shrink < 0:
            raise ValueError(
                f"ItemKNN needs k >= 1 and shrink >= 0 (similarities stay non-negative), got {k}, {shrink}"
            )
        self.k = k
        self.shrink = shrink
        self.train_rows = TrainRows(n_items)
        # The similarity's non-zeros, (2, nnz) [row, column] and (nnz,) values, rows sorted.
        self.register_buffer("similarity_indices", torch.zeros(2, 0, dtype=torch.long))
        self.register_buffer("similarity_values", torch.zeros(0))
        self._cached: tuple[tuple[int, int], sp.csr_matrix, sp.csr_matrix] | None = None

    def fit(self, train: sp.csr_matrix, block_cells: int = 1 << 25, threads: int | None = None) -> ItemKNN:
        """``threads``: blocks of items worked on at once (default ``torch.get_num_threads()``); the
        same neighbours whatever the number."""
        # CSR on both sides of the product: SciPy would convert a CSC right operand to CSR on every
        # block, a copy of the whole matrix per block of items.
        binary = (train > 0).astype(np.float32).tocsr()  # (n_users, n_items + 1)
        norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel())
        by_item = binary.T.tocsr()  # (n_items + 1, n_users)
        width = binary.shape[1]

        def neighbours(block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            start, stop = block
            co = (by_item[start:stop] @ binary).tocsr()
            own = np.repeat(np.arange(start, stop), np.diff(co.indptr))
            co.data[co.indices == own] = 0.0  # an item is not its own neighbour
            co.eliminate_zeros()
            # An item co-occurring with at most k others keeps them all. The rest keep their k most
            # similar co-occurring items, chosen among the row's non-zeros (an item that never
            # co-occurs has similarity 0 and is no neighbour), ties broken by the lower item index.
            entries = co.tocoo()
            local, column = entries.row.astype(np.int64), entries.col.astype(np.int64)
            row = start + local
            sim = self._cosine(entries.data, norms[row], norms[column])
            order = descending_order(local, sim, column, width)
            per_row = np.bincount(local, minlength=stop - start)
            rank = np.arange(len(order)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
            keep = order[rank < self.k]
            return row[keep], entries.col[keep], sim[keep]

        blocks = _item_blocks(by_item, np.diff(binary.indptr), block_cells)
        rows, columns, values = zip(
            *in_threads(neighbours, blocks, torch.get_num_threads() if threads is None else threads),
            strict=True,
        )
        matrix = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=(width, width)
        )
        matrix.sort_indices()
        coo = matrix.tocoo()
        self.similarity_indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
        self.similarity_values = torch.from_numpy(coo.data.astype(np.float32))
        self.train_rows.fit(binary.tocsr())
        return self

    def _cosine(self, co: np.ndarray, norms_i: np.ndarray, norms_j: np.ndarray) -> np.ndarray:
        # Cosine of binary columns: co-occurrences over the product of the norms (shrunk by ``shrink``).
        return (co / (norms_i * norms_j + self.shrink + 1e-8)).astype(np.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        _adopt_dense_user_items(self.train_rows, state_dict, prefix)
        if f"{prefix}similarity" in state_dict:
            dense = state_dict.pop(f"{prefix}similarity").numpy()
            coo = sp.coo_matrix(dense)
            coo.sum_duplicates()  # canonical (row, column) order, as fit writes it
            self.similarity_indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
            self.similarity_values = torch.from_numpy(coo.data.astype(np.float32))
            state_dict[f"{prefix}similarity_indices"] = self.similarity_indices
            state_dict[f"{prefix}similarity_values"] = self.similarity_values
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _similarity(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The similarity as SciPy CSR (row i = item i's neighbours) and its transpose, rebuilt per fit/load."""
        key = (self.similarity_values._version + self.similarity_indices._version, id(self.similarity_values))
        if self._cached is None or self._cached[0] != key:
            width = self.n_items + 1
            rows, columns = self.similarity_indices.numpy()
            matrix = sp.csr_matrix((self.similarity_values.numpy(), (rows, columns)), shape=(width, width))
            self._cached = (key, matrix, matrix.T.tocsr())
        return self._cached[1], self._cached[2]

    @property
    def similarity(self) -> torch.Tensor:
        """The (n_items + 1, n_items + 1) similarity as a sparse COO tensor."""
        width = self.n_items + 1
        return torch.sparse_coo_tensor(
            self.similarity_indices, self.similarity_values, (width, width), check_invariants=False
        )

    def similarity_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), n_items + 1) dense rows of the similarity: row i holds item i's neighbours."""
        return torch.from_numpy(self._similarity()[0][rows.numpy()].toarray())

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._sparse_scores(users, history).toarray())

    def _sparse_scores(self, users: torch.Tensor, history: torch.Tensor) -> sp.csr_matrix:
        # score(j) = sum over profile items i of similarity[j, i]: row j holds j's own neighbours.
        profiles = self.train_rows.profiles(users, history)
        return product_by_rows(profiles, self._similarity()[1], torch.get_num_threads())

    def top_k(
        self, users: torch.Tensor, history: torch.Tensor, blocked: sp.csr_matrix, k: int
    ) -> torch.Tensor:
        # Only the neighbours of the profile's items score above 0; the rest tie at 0 (training.topk).
        trained = self.train_rows.trained_items()
        return torch.from_numpy(top_k_of_sparse(self._sparse_scores(users, history), blocked, trained, k))


def pearson_similarity(binary: sp.csr_matrix, others: sp.csr_matrix | None = None) -> np.ndarray:
    """Pearson correlation between the rows of ``binary`` and the rows of ``others`` (default: itself).

    Rows are implicit-feedback vectors over the real items (column 0 is padding and never set), each
    mean-centred over ALL items: with n items, a_u = |I_u| and c_uv = |I_u & I_v|,
    r_uv = (n c_uv - a_u a_v) / sqrt((n a_u - a_u^2) (n a_v - a_v^2)). A row with zero variance (no
    item, or every item) correlates 0 with everything. Dense (rows(binary), rows(others)) float64.
    """
    others = binary if others is None else others
    n = binary.shape[1] - 1  # real items; column 0 is padding
    a = np.asarray(binary.sum(axis=1)).ravel().astype(np.float64)
    b = np.asarray(others.sum(axis=1)).ravel().astype(np.float64)
    co = np.asarray((binary @ others.T).todense(), dtype=np.float64)
    num = n * co - np.outer(a, b)
    var_a = np.clip(n * a - a * a, 0.0, None)
    var_b = np.clip(n * b - b * b, 0.0, None)
    den = np.sqrt(np.outer(var_a, var_b))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


class UserKNN(FittedBaseline, ScoresFromHistory):
    """User-based collaborative filtering with Pearson correlation, keeping each user's ``k`` neighbours.

    The training matrix is binary (training/split.py ``interaction_matrix`` sets every value to 1; the
    examples' ``rating`` column never reaches it), so the similarity is the Pearson correlation of the
    users' implicit binary vectors, mean-centred over all items (see ``pearson_similarity``); on binary
    data "co-rated items" would leave only 1s, whose centred values are all 0. Neighbours: the ``k``
    most correlated other users with a POSITIVE correlation (anti-correlated users are dropped rather
    than subtracting their items); score(u, j) = sum over neighbours v of sim(u, v) * r_vj.
    ``shrink`` damps similarities of users sharing few items: sim * c_uv / (c_uv + shrink).

    Fitted state: ``neighbours`` / ``weights`` (n_users, k) and the binary training rows, kept sparse
    (``TrainRows``). A user unknown at training time (index -1) is correlated with the training users
    from the request's ``history`` (the same profile ItemKNN builds) and scored from its own top-k
    neighbours.
    """

    def __init__(self, n_users: int, n_items: int, k: int = 50, shrink: float = 0.0) -> None:
        super().__init__(n_users, n_items)
        self.k = k
        self.shrink = shrink
        self.register_buffer("neighbours", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(0, 0))
        self.train_rows = TrainRows(n_items)

    def _top_k(self, sim: np.ndarray, co: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.shrink > 0 and co is not None:
            sim = sim * co / (co + self.shrink)
        k = min(self.k, sim.shape[1])
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.argsort(-sim, axis=1)
        vals = np.take_along_axis(sim, idx, axis=1)
        vals = np.where(vals > 0, vals, 0.0)
        return idx.astype(np.int64), vals.astype(np.float32)

    def fit(self, train: sp.csr_matrix, block_cells: int = 1 << 24) -> UserKNN:
        binary = (train > 0).astype(np.float32).tocsr()
        n_users = binary.shape[0]
        # Users in blocks of ~block_cells correlations: each dense intermediate of the block (float64)
        # stays that size however many users there are. Rows are independent: same result per block size.
        chunk = max(1, block_cells // max(n_users, 1))
        idx_parts, val_parts = [], []
        for start in range(0, n_users, chunk):
            rows = binary[start : start + chunk]
            sim = pearson_similarity(rows, binary)
            sim[np.arange(sim.shape[0]), np.arange(start, start + sim.shape[0])] = -np.inf  # not itself
            co = np.asarray((rows @ binary.T).todense()) if self.shrink > 0 else None
            idx, vals = self._top_k(sim, co)
            idx_parts.append(idx)
            val_parts.append(vals)
        self.neighbours = torch.from_numpy(
            np.concatenate(idx_parts) if idx_parts else np.zeros((0, 0), np.int64)
        )
        self.weights = torch.from_numpy(
            np.concatenate(val_parts) if val_parts else np.zeros((0, 0), np.float32)
        )
        self.train_rows.fit(binary)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        _adopt_dense_user_items(self.train_rows, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _history_neighbours(self, history: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        rows = self.train_rows.profiles(torch.full((history.shape[0],), -1), history)
        train = self.train_rows.matrix()
        sim = pearson_similarity(rows, train)
        co = np.asarray((rows @ train.T).todense()) if self.shrink > 0 else None
        return self._top_k(sim, co)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        n_train = self.train_rows.n_rows
        if n_train == 0:
            return torch.zeros(users.shape[0], self.n_items + 1)
        users_np = users.numpy()
        idx = np.zeros((len(users_np), self.k), np.int64)
        vals = np.zeros((len(users_np), self.k), np.float32)
        known = (users_np >= 0) & (users_np < n_train)
        if known.any():
            found = self.neighbours[users_np[known]].numpy()
            idx[known, : found.shape[1]] = found
            vals[known, : found.shape[1]] = self.weights[users_np[known]].numpy()
        if (~known).any():
            found, weights = self._history_neighbours(history[torch.from_numpy(~known)])
            idx[~known, : found.shape[1]] = found
            vals[~known, : found.shape[1]] = weights
        rows = np.repeat(np.arange(len(users_np)), self.k)
        weights = sp.csr_matrix((vals.ravel(), (rows, idx.ravel())), shape=(len(users_np), n_train))
        return torch.from_numpy((weights @ self.train_rows.matrix()).toarray())
