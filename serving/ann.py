"""Approximate nearest-neighbour item index for dot-product models over large catalogues.

Full ranking scores every item per request: a matrix-vector product that is memory-bound and grows
with the catalogue. For models whose score is a dot product of a user vector and an item vector
(``training.models.capabilities.ScoresByDotProduct``), packaging builds this index over the item
vectors when the catalogue holds at least ``serving.ann_min_items`` items; the service then asks it
for candidates, re-scores them exactly and keeps the top k (``serving.recommender``).

Maximum inner product directly: the graph is built and searched with the inner product as its
similarity (item norms, popularity included, count as the model counts them). The classic reduction to
L2 search (append sqrt(M^2 - |x|^2) to every item) lost recall on the benchmark's vectors, so it is not
used. An item bias enters as one more column of the item vectors with a 1 in the query (the model's
``dot_product_items``/``dot_product_queries`` do that).

Library: faiss-cpu's ``IndexHNSWFlat`` (chosen by ``bench/bench_ann.py``; ``bench/results/ann.md``
says why). Row 0 of a model's item table is padding and is never indexed, nor are the items the model may
not rank (``ModelArtifact.untrained_items``: no training interaction, for a model that does not score
cold items), so a search never spends its effort on them; search returns item rows (1..n_items),
nearest first.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE, META_FILE, ROWS_FILE = "index.faiss", "ann.json", "rows.npy"
FORMAT_VERSION = 1
# HNSW graph degree and build effort: the settings bench/bench_ann.py compares the libraries at.
DEFAULT_M, DEFAULT_EF_CONSTRUCTION = 32, 100
# Search effort floor; a search for more candidates than this uses ef = the number asked for. Chosen
# from the bench's search-effort sweep (recall@100 against latency at 100k and 1M items).
DEFAULT_EF_SEARCH = 512


class AnnIndexError(ValueError):
    """A stored index that cannot be used (missing file, other format, other catalogue)."""


@dataclass
class ItemIndex:
    """An HNSW index over the item rows ``rows`` (a subset of 1..n_items) of a (n_items + 1, d) item table."""

    index: Any  # faiss.IndexHNSWFlat, inner product; faiss id j = item row rows[j]
    rows: np.ndarray  # (indexed,) int64 item rows
    n_items: int
    dim: int
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int = DEFAULT_EF_SEARCH
    library: str = "faiss-cpu"

    @classmethod
    def build(
        cls,
        table: np.ndarray,
        rows: np.ndarray | None = None,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> ItemIndex:
        """Index ``rows`` (default: all, 1..n_items) of ``table`` (row 0 = padding), vectors in the space of
        the model's queries."""
        import faiss

        table = np.asarray(table, dtype=np.float32)
        if table.ndim != 2 or table.shape[0] < 2:
            raise ValueError(f"item table must be (n_items + 1, d) with n_items >= 1, got {table.shape}")
        n_items = table.shape[0] - 1
        rows = np.arange(1, n_items + 1) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 1 or rows.max() > n_items):
            raise ValueError(f"rows must lie in 1..{n_items} (row 0 is padding)")
        if not np.isfinite(table[rows]).all():
            raise ValueError("item table holds NaN or infinite values: the model's weights are broken")
        index = faiss.IndexHNSWFlat(table.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(np.ascontiguousarray(table[rows]))
        return cls(index, rows.astype(np.int64), n_items, table.shape[1], m, ef_construction, ef_search)

    def settings(self) -> dict[str, Any]:
        return {
            "index": "HNSWFlat inner product",
            "M": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }

    def search(self, query: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` item rows (1..n_items) nearest ``query`` (d,) by inner product, nearest first."""
        import faiss

        n = max(0, min(int(n), len(self.rows)))
        if n == 0:
            return np.empty(0, dtype=np.int64)
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, self.dim))
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, n))  # type: ignore[attr-defined]
        _, ids = self.index.search(q, n, params=params)
        ids = ids[0]
        return self.rows[ids[ids >= 0]]

    def save(self, directory: Path) -> Path:
        """Write to a temporary sibling, then rename into ``directory`` (a reader never sees half an index)."""
        import faiss

        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(self.index, str(tmp / INDEX_FILE))
        np.save(tmp / ROWS_FILE, self.rows)
        meta = {
            "format": FORMAT_VERSION,
            "library": self.library,
            "library_version": faiss.__version__,
            "n_items": self.n_items,
            "indexed_items": int(len(self.rows)),
            "dim": self.dim,
            **self.settings(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
        return directory

    @classmethod
    def load(cls, directory: Path, n_items: int | None = None, dim: int | None = None) -> ItemIndex:
        """Read an index written by ``save``; ``n_items``/``dim``: what the model expects (checked)."""
        import faiss

        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise AnnIndexError(
                f"{directory / META_FILE}: cannot read the index description ({exc})"
            ) from None
        if meta.get("format") != FORMAT_VERSION or meta.get("library") != "faiss-cpu":
            raise AnnIndexError(
                f"{directory / META_FILE}: format {meta.get('format')} / {meta.get('library')}, this code reads "
                f"format {FORMAT_VERSION} / faiss-cpu; repackage the model"
            )
        for name, expected in (("n_items", n_items), ("dim", dim)):
            if expected is not None and meta.get(name) != expected:
                raise AnnIndexError(
                    f"{directory}: index built for {name}={meta.get(name)}, the model has {expected}; "
                    "repackage the model"
                )
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
            rows = np.load(directory / ROWS_FILE)
        except (OSError, RuntimeError, ValueError) as exc:
            raise AnnIndexError(f"{directory}: cannot read the index ({exc}); repackage the model") from None
        if index.ntotal != len(rows):
            raise AnnIndexError(
                f"{directory}: {index.ntotal} vectors for {len(rows)} item rows; repackage the model"
            )
        faiss.omp_set_num_threads(1)  # one query per request: threads only add spin-waiting
        return cls(
            index,
            rows.astype(np.int64),
            int(meta["n_items"]),
            int(meta["dim"]),
            int(meta["M"]),
            int(meta["ef_construction"]),
            int(meta["ef_search"]),
        )
