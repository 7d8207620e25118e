"""Diversity bench: what the service's ``diversity`` knob (MMR re-ranking) costs in accuracy, and
what a request costs in latency.

One model (BPR by default, a few epochs) is trained with the pipeline's own stage functions
(``leaderboard.prepare_data`` -> ``make_split`` -> ``train_model``) and loaded the way the service
loads it (``serving.recommender.load_recommender``). Then:

- **Trade-off, on the VALIDATION part** (the knob is a choice, so the test part is never read): every
  validation user is served by ``Recommender.recommend(user_id, None, k=10, diversity=λ)``, the very
  call the service makes, so the re-ranking is ``training.rerank.mmr`` over the service's candidate
  count (``max(DIVERSITY_MIN_CANDIDATES, DIVERSITY_CANDIDATES_PER_K * k)``) with the service's item
  similarity. The returned lists are scored against the user's validation items with the evaluator's
  accumulator (``training.metrics.RankingAccumulator``): NDCG@10, HR@10, novelty, coverage, Gini and
  intra-list diversity by item attributes (genres) and by the model's item embeddings.
- **Latency, in-process**: ``Recommender.recommend`` p50/p99 for a known user, an anonymous session
  of 10 items (a validation user's last 10 train items, given without the user id) and a known user
  with diversity 0.5; one thread, after a warm-up.

Writes ``bench/results/diversity.json``, ``diversity.md`` and ``diversity_tradeoff.svg`` (NDCG@10
against ILD, points labelled with λ; a dependency-free SVG, as ``leaderboard.py`` draws: matplotlib
is not among the pinned requirements).

Usage (from a clean tree, so the recorded commit is exact):
    RECFORGE_HOME=/tmp/home OMP_NUM_THREADS=1 python bench/bench_diversity.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from leaderboard import prepare_dataset, svg_frame, train_briefly  # noqa: E402

from pipeline.config import SplitConfig  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.provenance import bench_provenance, provenance_line  # noqa: E402
from serving.recommender import (  # noqa: E402
    DIVERSITY_CANDIDATES_PER_K,
    DIVERSITY_MIN_CANDIDATES,
    Recommender,
    load_recommender,
)
from training.data import EvalInputs, build_eval_inputs  # noqa: E402
from training.evaluate import beyond_accuracy  # noqa: E402
from training.metrics import BeyondAccuracy, RankingAccumulator  # noqa: E402
from training.split import SplitIndex, make_split, read_part  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KNOBS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
K = 10
SESSION_ITEMS = 10
SHOWN = ("ndcg@10", "hr@10", "ild_attributes@10", "ild_embeddings@10", "novelty@10", "coverage@10")


# ------------------------------------------------------------------------------------ trade-off


def served_lists(rec: Recommender, user_ids: list[str], diversity: float) -> list[list[int]]:
    """The item rows the service returns to each user (``k`` = K), known users, no online history."""
    lists = []
    for user_id in user_ids:
        answer = rec.recommend(user_id, None, K, diversity=diversity)
        if answer.strategy != "known_user":
            raise RuntimeError(f"user {user_id} served as {answer.strategy!r}, expected a known user")
        lists.append([rec.item_index[item.item_id] for item in answer.items])
    return lists


def list_metrics(
    lists: list[list[int]], inputs: EvalInputs, beyond: BeyondAccuracy, batch: int = 256
) -> dict[str, float]:
    """The evaluator's metrics of fixed top-k ``lists`` (one per user of ``inputs``, best first)."""
    acc = RankingAccumulator(inputs.n_items, [K], beyond)
    for start in range(0, len(lists), batch):
        chunk = lists[start : start + batch]
        scores = torch.full((len(chunk), inputs.n_items + 1), -torch.inf)
        for row, items in enumerate(chunk):
            scores[row, torch.as_tensor(items, dtype=torch.long)] = torch.arange(len(items), 0, -1).float()
        truth = torch.from_numpy(inputs.truth[start : start + len(chunk)].toarray() > 0)
        acc.update(scores, truth, None)
    return acc.compute()


# -------------------------------------------------------------------------------------- latency


def latency(call: Any, arguments: list[Any], requests: int, warmup: int = 20) -> dict[str, float]:
    """p50/p99/mean milliseconds of ``call(arg)`` over ``requests`` calls cycling through ``arguments``."""
    for i in range(warmup):
        call(arguments[i % len(arguments)])
    times = []
    for i in range(requests):
        arg = arguments[i % len(arguments)]
        start = time.perf_counter()
        call(arg)
        times.append((time.perf_counter() - start) * 1000.0)
    values = np.asarray(times)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
        "requests": requests,
    }


def last_train_items(split: Any, user_ids: list[str], n: int) -> list[list[str]]:
    """Each user's last ``n`` train items (item ids, oldest first): the anonymous sessions."""
    # read_part orders by (time, event_id); groupby keeps that order within a user.
    train = read_part(split, "train", ["event_id", "user_id", "item_id", "event_timestamp"])
    train = train.astype({"user_id": str, "item_id": str})
    tails = train.groupby("user_id")["item_id"].apply(lambda s: list(s.tail(n)))
    return [tails[u] for u in user_ids if u in tails.index and len(tails[u]) == n]


# ----------------------------------------------------------------------------------------- plot


def place_labels(
    points: list[tuple[float, float]], labels: list[str], bounds: tuple[float, float, float, float]
) -> list[tuple[float, float]]:
    """Top-left corners of label boxes next to ``points`` (pixels) such that no box overlaps another
    box or a point marker and every box stays within ``bounds`` (x0, y0, x1, y1), where a free spot
    exists among 16 candidates per point at growing distance; else the first candidate."""
    char_w, box_h, marker = 6.5, 12.0, 5.0
    placed: list[tuple[float, float, float, float]] = []
    corners = []

    def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    markers = [(x - marker, y - marker, x + marker, y + marker) for x, y in points]
    for (x, y), label in zip(points, labels, strict=True):
        width = char_w * len(label)
        candidates = []
        for gap in (8.0, 22.0):
            for dx, dy in ((1, -1), (1, 1), (-1, -1), (-1, 1), (0, -1), (0, 1), (1, 0), (-1, 0)):
                left = x + gap if dx > 0 else x - gap - width if dx < 0 else x - width / 2
                top = y - gap - box_h if dy < 0 else y + gap if dy > 0 else y - box_h / 2
                candidates.append((left, top, left + width, top + box_h))
        inside = [
            c
            for c in candidates
            if c[0] >= bounds[0] and c[1] >= bounds[1] and c[2] <= bounds[2] and c[3] <= bounds[3]
        ]
        free = [c for c in inside if not any(overlaps(c, o) for o in placed + markers)]
        box = (free or inside or candidates)[0]
        placed.append(box)
        corners.append((box[0], box[1]))
    return corners


def svg_tradeoff(rows: list[dict[str, Any]], width: int = 640, height: int = 420) -> str:
    """NDCG@10 (y) against intra-list diversity (x) per knob value, one series per ILD kind."""
    series = [
        (name, colour)
        for name, colour in (("ild_attributes@10", "#1f77b4"), ("ild_embeddings@10", "#d62728"))
        if all(name in r["valid"] for r in rows)
    ]
    left, right, top, bottom = 70, 190, 30, 55
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [r["valid"][name] for r in rows for name, _ in series] or [0.0, 1.0]
    ys = [r["valid"]["ndcg@10"] for r in rows]
    x0, x1 = min(xs), max(xs)
    pad_x = (x1 - x0) * 0.12 or 0.05
    x0, x1 = x0 - pad_x, x1 + pad_x
    y0, y1 = min(ys), max(ys)
    pad_y = (y1 - y0) * 0.15 or 0.01
    y0, y1 = max(0.0, y0 - pad_y), y1 + pad_y

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    out = svg_frame(
        (width, height),
        (left, top, plot_w, plot_h),
        "intra-list diversity @10 (validation)",
        "validation NDCG@10",
    )
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(
            f'<line x1="{px(xv):.1f}" y1="{top + plot_h}" x2="{px(xv):.1f}" y2="{top + plot_h + 5}" stroke="black"/>'
        )
        out.append(f'<text x="{px(xv):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{xv:.3f}</text>')
        out.append(f'<line x1="{left - 5}" y1="{py(yv):.1f}" x2="{left}" y2="{py(yv):.1f}" stroke="black"/>')
        out.append(f'<text x="{left - 8}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.3f}</text>')
    points, labels, colours = [], [], []
    for i, (name, colour) in enumerate(series):
        out.append(f'<circle cx="{left + plot_w + 20}" cy="{top + 10 + 18 * i}" r="5" fill="{colour}"/>')
        legend = "by genres" if "attributes" in name else "by item embeddings"
        out.append(f'<text x="{left + plot_w + 30}" y="{top + 14 + 18 * i}">ILD {legend}</text>')
        coords = [(px(r["valid"][name]), py(r["valid"]["ndcg@10"])) for r in rows]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-opacity="0.4"/>')
        for (x, y), r in zip(coords, rows, strict=True):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
            points.append((x, y))
            labels.append(f"λ={r['diversity']:g}")
            colours.append(colour)
    legend_y = top + 14 + 18 * len(series) + 10
    out.append(f'<text x="{left + plot_w + 12}" y="{legend_y}">λ: the diversity knob</text>')
    corners = place_labels(points, labels, (left + 1, top, left + plot_w, top + plot_h))
    for (x, y), label, colour in zip(corners, labels, colours, strict=True):
        out.append(f'<text x="{x:.1f}" y="{y + 10:.1f}" fill="{colour}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- report


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Diversity knob: accuracy against intra-list diversity, and serving latency",
        "",
        provenance_line(r) + f" {r['threads']} torch thread.",
        "",
        f"Model: {r['model']['name']} trained {r['model']['epochs']} epochs (max {r['model']['max_epochs']}) "
        f"on the {r['split']['protocol']} split of {r['split']['data_version']} "
        f"(train/valid/test {r['split']['counts']}); best validation NDCG@10 during training "
        f"{r['model']['best_valid_ndcg10']:.4f}. Training took {r['model']['train_seconds']} s.",
        "",
        f"## Trade-off on the validation part ({r['valid_users']} users; the test part is not read)",
        "",
        f"Each user is served by `Recommender.recommend(user, None, k={K}, diversity=λ)`: MMR "
        f"(`training.rerank.mmr`) re-ranks the {r['mmr_candidates']} most relevant items with the "
        f"service's similarity (`{r['diversity_method']}`). ILD = 1 - mean pairwise cosine within a "
        "list, by genres (multi-hot) and by the model's item embeddings.",
        "",
        "| λ | " + " | ".join(SHOWN) + " | NDCG@10 vs λ=0 |",
        "|---|" + "---|" * (len(SHOWN) + 1),
    ]
    base = r["tradeoff"][0]["valid"]["ndcg@10"]
    for row in r["tradeoff"]:
        cells = [f"{row['valid'].get(m, float('nan')):.4f}" for m in SHOWN]
        change = (row["valid"]["ndcg@10"] / base - 1.0) * 100 if base else float("nan")
        lines.append(f"| {row['diversity']:g} | " + " | ".join(cells) + f" | {change:+.1f}% |")
    lines += [
        "",
        "![NDCG@10 against ILD](diversity_tradeoff.svg)",
        "",
        f"## Serving latency, in-process (`Recommender.recommend`, k={K}, 1 thread)",
        "",
        "| request | p50 ms | p99 ms | mean ms | requests |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["latency"].items():
        lines.append(f"| {name} | {v['p50_ms']} | {v['p99_ms']} | {v['mean_ms']} | {v['requests']} |")
    lines += [
        "",
        "No HTTP, Feast or BentoML in these timings: the model's scoring, exclusion, top-k and MMR only "
        "(bench/results/serving.md measures the HTTP service). The machine was shared with other jobs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bpr")
    # BPR's default lr is tuned for the pipeline's 30 epochs; the results record the best validation NDCG@10.
    parser.add_argument("--epochs", type=int, default=20)
    # random_holdout: every user has validation items (the temporal split validates only the users
    # active in the last window), and the protocol the model defaults were tuned on.
    parser.add_argument("--protocol", default="random_holdout")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    feature_set, cfg = prepare_dataset("ml-100k")
    layout = Layout(cfg.home_dir)
    split = make_split(feature_set, SplitConfig(protocol=args.protocol, seed=cfg.split.seed), layout)
    trained, train_seconds = train_briefly(args.model, split, cfg.home_dir, args.epochs, "bench-diversity")

    rec = load_recommender(Path(trained.run_dir) / "model")
    index = SplitIndex.load(split)
    if list(rec.item_ids) != list(index.item_ids):
        raise RuntimeError("the artifact's item index differs from the split's")
    inputs = build_eval_inputs(split, "valid", rec.history_length)
    user_ids = [index.user_ids[int(u)] for u in inputs.users]
    beyond = beyond_accuracy(split, rec.artifact.module)
    tradeoff = []
    for knob in KNOBS:
        metrics = list_metrics(served_lists(rec, user_ids, knob), inputs, beyond)
        tradeoff.append({"diversity": knob, "valid": metrics})
        print(
            f"λ={knob:g}: " + ", ".join(f"{m} {metrics.get(m, float('nan')):.4f}" for m in SHOWN), flush=True
        )

    sessions = last_train_items(split, user_ids, SESSION_ITEMS)
    timings = {
        "known user": latency(lambda u: rec.recommend(u, None, K), user_ids, args.requests),
        f"anonymous session of {SESSION_ITEMS} items": latency(
            lambda s: rec.recommend(None, None, K, session=s), sessions, args.requests
        ),
        "known user, diversity 0.5": latency(
            lambda u: rec.recommend(u, None, K, diversity=0.5), user_ids, args.requests
        ),
    }
    result: dict[str, Any] = {
        **bench_provenance("bench/bench_diversity.py", sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "split": {
            "protocol": split.protocol,
            "data_version": split.data_version,
            "counts": split.counts,
        },
        "model": {
            "name": args.model,
            "params": trained.hparams,
            "max_epochs": args.epochs,
            "epochs": trained.epochs,
            "best_valid_ndcg10": trained.best_valid_ndcg10,
            "train_seconds": train_seconds,
        },
        "valid_users": len(user_ids),
        "mmr_candidates": max(DIVERSITY_MIN_CANDIDATES, DIVERSITY_CANDIDATES_PER_K * K),
        "diversity_method": rec.diversity_method,
        "tradeoff": tradeoff,
        "latency": timings,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diversity.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "diversity_tradeoff.svg").write_text(svg_tradeoff(tradeoff))
    (args.out / "diversity.md").write_text(markdown(result))
    print((args.out / "diversity.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
