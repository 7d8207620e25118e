"""Approximate nearest-neighbour retrieval: which library, and what the served index costs and finds.

Two parts, both in-process on the same vectors:

1. ``--compare``: the candidate libraries (faiss-cpu HNSW and IVF, usearch HNSW, hnswlib HNSW, each
   skipped when not importable) on the same item vectors: build time, serialized size, resident
   memory added, recall@100 against the exact inner-product top-100, single-query latency p50/p99
   (one thread). The serving index (``serving/ann.py``) uses the winner.
2. The serving index itself (``serving.ann.ItemIndex`` at its defaults): recall@100 and per-query
   latency next to the exact matrix-vector product, at every catalogue size.

Vectors. Gaussian noise is an unrealistic stand-in (no neighbourhood structure: every item is
about equally far away). Item vectors here are built like trained factor models' item tables:
``CLUSTERS`` cluster centres in a rank-``RANK`` subspace of the ``--dim`` space, each item its
cluster's centre plus a within-cluster offset in the same subspace plus a little full-rank noise;
the direction is then scaled by a norm that grows with the item's popularity (Zipf ranks, exponent
``ZIPF``), as BPR-like models give popular items longer vectors. Queries (users) are drawn the same
way from a mixture of two clusters, with unit-order norms. Inner product is the score.

    python bench/bench_ann.py --compare --items 100000 1000000         # writes bench/results/ann.{md,json}

Writes ``bench/results/ann.json`` and ``bench/results/ann.md``; the machine is shared, so the load
average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipeline.provenance import code_commit  # noqa: E402
from serving.ann import ItemIndex  # noqa: E402

RANK, CLUSTERS, ZIPF = 16, 512, 0.8
K = 100


def item_vectors(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, dim) clustered low-rank item vectors with popularity-scaled norms; also the basis and centres."""
    basis = rng.standard_normal((RANK, dim)).astype(np.float32) / np.sqrt(RANK)
    centres = rng.standard_normal((CLUSTERS, RANK)).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, n)
    latent = centres[cluster] + 0.6 * rng.standard_normal((n, RANK)).astype(np.float32)
    vectors = latent @ basis + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    popularity = 1.0 / np.arange(1, n + 1, dtype=np.float32) ** ZIPF
    rng.shuffle(popularity)
    norms = 1.0 + 0.15 * np.log(popularity / popularity.min())
    return (vectors * norms[:, None]).astype(np.float32), basis, centres


def query_vectors(n: int, basis: np.ndarray, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) users: a mix of two cluster centres plus an offset, in the items' subspace."""
    a, b = rng.integers(0, CLUSTERS, n), rng.integers(0, CLUSTERS, n)
    w = rng.uniform(0.0, 1.0, (n, 1)).astype(np.float32)
    latent = w * centres[a] + (1 - w) * centres[b] + 0.6 * rng.standard_normal((n, RANK)).astype(np.float32)
    dim = basis.shape[1]
    return (latent @ basis + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) exact inner-product top-k rows (unordered within the top)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ items.T
        out[start : start + 64] = np.argpartition(-scores, k, axis=1)[:, :k]
    return out


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def rss_mb() -> float:
    """Current resident memory (MiB), from /proc (peak RSS would hide what each index adds)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def time_queries(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[list[np.ndarray], dict[str, float]]:
    found, times = [], []
    search(queries[0])  # warm-up
    for q in queries:
        t0 = time.perf_counter()
        found.append(np.asarray(search(q)).ravel())
        times.append((time.perf_counter() - t0) * 1000)
    return found, {
        "p50_ms": pct(times, 0.5),
        "p99_ms": pct(times, 0.99),
        "mean_ms": round(statistics.mean(times), 3),
    }


# ---- candidate libraries ------------------------------------------------------------------------------
# Each builds on ``x`` and returns (index, effort -> single-query search, serialized bytes). All use the
# inner product directly except "faiss-cpu L2 on MIPS transform": the classic reduction of maximum inner
# product to L2 search (append sqrt(M^2 - |x|^2) to items, 0 to queries; Bachrach et al., 2014).

Built = tuple[Any, Callable[[int], Callable[[np.ndarray], np.ndarray]], int]


def mips_items(vectors: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(sq.max() - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]))


def mips_queries(queries: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]))


def _faiss_hnsw(x: np.ndarray, m: int, ef_construction: int, tmp: Path, inner_product: bool) -> Built:
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(x.shape[1], m, metric)
    index.hnsw.efConstruction = ef_construction
    index.add(x)
    path = tmp / "faiss.index"
    faiss.write_index(index, str(path))

    def at(ef: int) -> Callable[[np.ndarray], np.ndarray]:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        return lambda q: index.search(q.reshape(1, -1), K, params=params)[1][0]

    return index, at, path.stat().st_size


def _faiss_ivf(x: np.ndarray, nlist: int, tmp: Path) -> Built:
    import faiss

    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    sample = x[np.random.default_rng(0).choice(len(x), min(len(x), 40 * nlist), replace=False)]
    index.train(sample)
    index.add(x)
    path = tmp / "ivf.index"
    faiss.write_index(index, str(path))

    def at(nprobe: int) -> Callable[[np.ndarray], np.ndarray]:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        return lambda q: index.search(q.reshape(1, -1), K, params=params)[1][0]

    return index, at, path.stat().st_size


def _usearch(x: np.ndarray, m: int, ef_construction: int, tmp: Path) -> Built:
    from usearch.index import Index

    index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=ef_construction)
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=1)
    path = tmp / "usearch.index"
    index.save(str(path))

    def at(ef: int) -> Callable[[np.ndarray], np.ndarray]:
        def search(q: np.ndarray) -> np.ndarray:
            index.expansion_search = ef
            return index.search(q, K, threads=1).keys

        return search

    return index, at, path.stat().st_size


def _hnswlib(x: np.ndarray, m: int, ef_construction: int, tmp: Path) -> Built:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=m, ef_construction=ef_construction)
    index.set_num_threads(1)
    index.add_items(x, np.arange(len(x)))
    path = tmp / "hnswlib.index"
    index.save_index(str(path))

    def at(ef: int) -> Callable[[np.ndarray], np.ndarray]:
        def search(q: np.ndarray) -> np.ndarray:
            index.set_ef(ef)
            return index.knn_query(q, K)[0][0]

        return search

    return index, at, path.stat().st_size


def compare(
    items: np.ndarray, queries: np.ndarray, truth: np.ndarray, m: int, ef_construction: int
) -> list[dict[str, Any]]:
    """Every importable candidate, built once, searched at a few effort settings."""
    nlist = int(4 * np.sqrt(len(items)))
    efforts = [64, 128, 256, 512]
    hnsw = f"HNSW M={m} efC={ef_construction}"
    # (library, index, build, search efforts, the queries it takes)
    candidates: list[tuple[str, str, Callable[[Path], Built], list[int], np.ndarray]] = [
        (
            "faiss-cpu",
            f"{hnsw}, inner product",
            lambda t: _faiss_hnsw(items, m, ef_construction, t, True),
            efforts,
            queries,
        ),
        (
            "usearch",
            f"{hnsw}, inner product",
            lambda t: _usearch(items, m, ef_construction, t),
            efforts,
            queries,
        ),
        (
            "hnswlib",
            f"{hnsw}, inner product",
            lambda t: _hnswlib(items, m, ef_construction, t),
            efforts,
            queries,
        ),
        (
            "faiss-cpu",
            f"{hnsw}, L2 on MIPS transform",
            lambda t: _faiss_hnsw(mips_items(items), m, ef_construction, t, False),
            [128, 512],
            mips_queries(queries),
        ),
        (
            "faiss-cpu",
            f"IVFFlat nlist={nlist}, inner product",
            lambda t: _faiss_ivf(items, nlist, t),
            [16, 64],
            queries,
        ),
    ]
    # Build every candidate first, then time the searches interleaved (query by query, every index and
    # effort in turn): on a shared machine, load that comes and goes then falls on all alike.
    built: list[tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray], np.ndarray]] = []
    rows: list[dict[str, Any]] = []
    indexes = []
    with tempfile.TemporaryDirectory() as tmp:
        for position, (library, config, build, library_efforts, query_set) in enumerate(candidates):
            module = {"faiss-cpu": "faiss"}.get(library, library)
            if importlib.util.find_spec(module) is None:
                rows.append({"library": library, "config": config, "skipped": "not installed"})
                print(f"{library}: not installed, skipped", flush=True)
                continue
            folder = Path(tmp) / str(position)
            folder.mkdir()
            before = rss_mb()
            t0 = time.perf_counter()
            index, at, size = build(folder)
            build_s = time.perf_counter() - t0
            indexes.append(index)
            base = {
                "library": library,
                "config": config,
                "build_s": round(build_s, 1),
                "file_mb": round(size / 2**20, 1),
                "rss_added_mb": round(rss_mb() - before, 1),
            }
            print(json.dumps(base), flush=True)
            for effort in library_efforts:
                built.append(({**base, "effort": effort}, at(effort), query_set))
        found: list[list[np.ndarray]] = [[] for _ in built]
        times: list[list[float]] = [[] for _ in built]
        for _, search, query_set in built:
            search(query_set[0])  # warm-up
        for i in range(len(queries)):
            for j, (_, search, query_set) in enumerate(built):
                t0 = time.perf_counter()
                result = search(query_set[i])
                times[j].append((time.perf_counter() - t0) * 1000)
                found[j].append(np.asarray(result).ravel())
        for j, (base, _, _) in enumerate(built):
            row = {
                **base,
                f"recall@{K}": round(recall(found[j], truth), 4),
                "p50_ms": pct(times[j], 0.5),
                "p99_ms": pct(times[j], 0.99),
                "mean_ms": round(statistics.mean(times[j]), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    del indexes
    return rows


def serving_index(items: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """``serving.ann.ItemIndex`` at its defaults (row 0 = padding, as in a model's item table), vs exact."""
    table = np.vstack([np.zeros((1, items.shape[1]), np.float32), items])
    t0 = time.perf_counter()
    index = ItemIndex.build(table)
    build_s = time.perf_counter() - t0
    found, latency = time_queries(lambda q: index.search(q, K) - 1, queries)
    exact_found, exact_latency = time_queries(lambda q: np.argpartition(-(items @ q), K)[:K], queries)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "index")
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    return {
        "library": index.library,
        "settings": index.settings(),
        "build_s": round(build_s, 1),
        "file_mb": round(size / 2**20, 1),
        f"recall@{K}": round(recall(found, truth), 4),
        "ann": latency,
        "exact_matvec_top100": exact_latency,
        f"exact_recall@{K}": round(recall(exact_found, truth), 4),
        "ef_sweep": [
            served_quality(dataclasses.replace(index, ef_search=ef), items, queries, truth) for ef in EF_SWEEP
        ],
    }


EF_SWEEP = (64, 128, 256, 512, 1024)
SERVED_K = 10


def served_quality(
    index: ItemIndex, items: np.ndarray, queries: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    """One search effort as the service uses it: recall@100 of the index, and recall@10 of the answer the
    service gives (the max(100, 4k) candidates re-scored exactly, their top 10) against the exact top 10."""
    pool = max(K, 4 * SERVED_K)
    found, latency = time_queries(lambda q: index.search(q, pool) - 1, queries)
    answers, exact_answers = [], []
    for q, candidates in zip(queries, found, strict=True):
        scores = items[candidates] @ q
        answers.append(candidates[np.argsort(-scores)[:SERVED_K]])
        exact_answers.append(np.argpartition(-(items @ q), SERVED_K)[:SERVED_K])
    return {
        "ef_search": index.ef_search,
        f"recall@{K}": round(recall([f[:K] for f in found], truth), 4),
        f"served_recall@{SERVED_K}": round(recall(answers, np.asarray(exact_answers)), 4),
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--compare", action="store_true", help="also compare the candidate libraries")
    parser.add_argument(
        "--compare-max-items", type=int, default=100_000, help="compare libraries up to this size"
    )
    parser.add_argument("--m", type=int, default=32, help="HNSW graph degree for the comparison")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass

    sizes = []
    for n in args.items:
        rng = np.random.default_rng(n)
        items, basis, centres = item_vectors(n, args.dim, rng)
        queries = query_vectors(args.queries, basis, centres, rng)
        truth = exact_top(items, queries, K)
        entry: dict[str, Any] = {"n_items": n, "dim": args.dim, "queries": args.queries}
        if args.compare and n <= args.compare_max_items:
            entry["comparison"] = compare(items, queries, truth, args.m, args.ef_construction)
        entry["serving_index"] = serving_index(items, queries, truth)
        print(json.dumps(entry["serving_index"]), flush=True)
        sizes.append(entry)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": code_commit(),
        "command": "python bench/bench_ann.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "threads": 1,
        },
        "vectors": {"rank": RANK, "clusters": CLUSTERS, "zipf": ZIPF, "k": K},
        "sizes": sizes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ann.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ann.md").write_text(_markdown(report))
    print(f"wrote {out / 'ann.json'} and {out / 'ann.md'}")


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# ANN retrieval benchmark",
        "",
        f"`{report['command']}` at commit `{report['code_commit']}`, {report['measured_at']}; "
        f"{m['cpus']} CPUs shared with other work (load avg {m['loadavg_1m_at_end']} at the end), one thread "
        "for building and searching. Vectors: clustered low-rank items with popularity-scaled norms, "
        "users drawn the same way (bench/bench_ann.py docstring); recall@100 against the exact "
        "inner-product top-100; latency of one query at a time, searches of all indexes interleaved "
        "query by query (shared-load noise falls on all alike). RSS added is approximate (allocator reuse).",
        "",
        "Why faiss-cpu HNSW (inner product) serves: the three HNSW libraries implement the same algorithm "
        "at the same graph degree, so compare their recall and latency at equal search effort in the "
        "table below; the choice also weighs installation: faiss-cpu installs as a wheel, "
        "hnswlib only as a source distribution (needs a C++ compiler in every image) and usearch needs an "
        "extra compiled dependency (numkong). Compare the inner-product search with the classic "
        "MIPS-to-L2 transform and IVF at their efforts in the same table. The service over-fetches "
        "max(100, 4k) candidates and re-scores them exactly: the search-effort table of each size gives "
        "the recall@10 of that answer against the exact top 10.",
        "",
    ]
    for entry in report["sizes"]:
        lines += [f"## {entry['n_items']:,} items x {entry['dim']} dims, {entry['queries']} queries", ""]
        if entry.get("comparison"):
            lines += [
                "| library | index | ef / nprobe | build s | file MB | RSS added MB | recall@100 | p50 ms | p99 ms |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in entry["comparison"]:
                if "skipped" in r:
                    lines.append(f"| {r['library']} | {r['config']} | {r['skipped']} | | | | | | |")
                    continue
                lines.append(
                    f"| {r['library']} | {r['config']} | {r['effort']} | {r['build_s']} | {r['file_mb']} | "
                    f"{r['rss_added_mb']} | {r['recall@100']} | {r['p50_ms']} | {r['p99_ms']} |"
                )
            lines.append("")
        s = entry["serving_index"]
        lines += [
            f"Serving index (`serving.ann.ItemIndex`, {s['library']}, {s['settings']}): built in {s['build_s']} s, "
            f"{s['file_mb']} MB on disk, recall@100 {s['recall@100']}, query p50 {s['ann']['p50_ms']} ms / "
            f"p99 {s['ann']['p99_ms']} ms; exact matrix-vector product + top-100: p50 "
            f"{s['exact_matvec_top100']['p50_ms']} ms / p99 {s['exact_matvec_top100']['p99_ms']} ms.",
            "",
            "| ef_search | recall@100 | served recall@10 (candidates re-scored) | p50 ms | p99 ms |",
            "|---:|---:|---:|---:|---:|",
            *(
                f"| {r['ef_search']} | {r['recall@100']} | {r['served_recall@10']} | {r['p50_ms']} | {r['p99_ms']} |"
                for r in s.get("ef_sweep", [])
            ),
            "",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
