"""Session-based bench: next-item prediction within the newest sessions, from the session prefix alone.

The protocol is ``training.session_eval`` (sessions cut by ``evaluation.session_gap_minutes`` of
inactivity, the last ``evaluation.session_test_share`` of sessions by start time as test, every next
item of a test session predicted from its prefix by an anonymous scorer, full ranking, NDCG@10 /
HR@10 / MRR@10). The models train on the pipeline's ``temporal`` split whose test part starts exactly
at the first test session (``test_share`` = the share of events from that moment on), so nothing a
model trains or early-stops on lies in a test session; the bench checks it.

Rows: the sequential models (SASRec, GRU4Rec, NARM: ``train_model`` for a few epochs, best epoch by
the pipeline's validation NDCG@10), item-kNN from the session (``ItemKNN`` with an unknown user
profiled from the prefix) and training popularity, all scored through ``full_sort_predict(users=-1,
history=prefix)``. Writes ``bench/results/session.json`` and ``session.md``.

Usage (from a clean tree, so the recorded commit is exact):
    RECFORGE_HOME=/tmp/home OMP_NUM_THREADS=1 python bench/bench_session.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from leaderboard import prepare_dataset, train_briefly  # noqa: E402

from orchestration.runs import model_params  # noqa: E402
from pipeline.config import SplitConfig  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.provenance import bench_provenance, provenance_line  # noqa: E402
from training.artifact import DEFAULT_HISTORY_LENGTH, load_model_artifact  # noqa: E402
from training.models import build_model  # noqa: E402
from training.session_eval import (  # noqa: E402
    cut_sessions,
    evaluate_next_items,
    first_test_start,
    next_item_examples,
)
from training.split import PARTS, SplitIndex, make_split, read_part, train_matrix  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEQUENTIAL = ("sasrec", "gru4rec", "narm")
BASELINES = {"itemknn": "item-kNN from the session", "popularity": "popularity"}
KS = (10,)
SHOWN = ("ndcg@10", "hr@10", "mrr@10")


def session_split(feature_set: Any, layout: Layout, gap: pd.Timedelta, test_share: float, seed: int) -> dict:
    """Sessions of every event, the first test session's start, and the temporal split cut there."""
    events = pd.read_parquet(
        feature_set.examples, columns=["event_id", "user_id", "item_id", "event_timestamp"]
    )
    sessions = cut_sessions(events, gap)
    start = first_test_start(sessions, test_share)
    times = pd.to_datetime(events["event_timestamp"], utc=True)
    share = float((times >= start).sum()) / len(events)
    split = make_split(feature_set, SplitConfig(protocol="temporal", test_share=share, seed=seed), layout)
    seen = pd.concat(
        [read_part(split, p, ["event_id", "user_id", "item_id", "event_timestamp"]) for p in PARTS[:2]]
    )
    if (pd.to_datetime(seen["event_timestamp"], utc=True) >= start).any():
        raise RuntimeError("the split's train/valid parts reach into the test sessions")
    return {"sessions": sessions, "start": start, "split": split, "event_share": share}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--models", default=",".join(SEQUENTIAL))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    feature_set, cfg = prepare_dataset("ml-100k")
    layout = Layout(cfg.home_dir)
    gap = pd.Timedelta(minutes=cfg.evaluation.session_gap_minutes)
    cut = session_split(feature_set, layout, gap, cfg.evaluation.session_test_share, cfg.split.seed)
    split, sessions = cut["split"], cut["sessions"]
    index = SplitIndex.load(split)
    train = train_matrix(split)
    known = np.asarray((train > 0).sum(axis=0)).ravel() > 0
    known[0] = False
    test = sessions[sessions["session_start"] >= cut["start"]]
    prefixes, targets = next_item_examples(test, index.item_index, known)
    excluded = torch.from_numpy(~known)
    sizes = sessions.groupby("session").size()
    print(f"{len(targets)} next-item examples from {test['session'].nunique()} test sessions", flush=True)

    rows: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        trained, seconds = train_briefly(name, split, cfg.home_dir, args.epochs, "bench-session")
        artifact = load_model_artifact(Path(trained.run_dir) / "model")
        length = artifact.history_length or DEFAULT_HISTORY_LENGTH
        metrics = evaluate_next_items(artifact.score, prefixes, targets, index.n_items, length, KS, excluded)
        rows.append(
            {
                "model": name,
                "epochs": trained.epochs,
                "best_valid_ndcg10": trained.best_valid_ndcg10,
                "train_seconds": seconds,
                "history_length": length,
                "metrics": metrics,
            }
        )
        print(name, metrics, flush=True)
    for name, label in BASELINES.items():
        module = build_model(name, index.n_users, index.n_items, **model_params(name)).fit(train)
        metrics = evaluate_next_items(
            module.full_sort_predict, prefixes, targets, index.n_items, DEFAULT_HISTORY_LENGTH, KS, excluded
        )
        rows.append(
            {"model": label, "epochs": 0, "history_length": DEFAULT_HISTORY_LENGTH, "metrics": metrics}
        )
        print(label, metrics, flush=True)

    result: dict[str, Any] = {
        **bench_provenance("bench/bench_session.py", sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "protocol": {
            "gap_minutes": cfg.evaluation.session_gap_minutes,
            "test_share": cfg.evaluation.session_test_share,
            "sessions": int(sizes.size),
            "session_length_median": float(sizes.median()),
            "test_sessions": int(test["session"].nunique()),
            "test_start": str(cut["start"]),
            "test_event_share": round(cut["event_share"], 4),
            "examples": len(targets),
        },
        "split": {"protocol": split.protocol, "data_version": split.data_version, "counts": split.counts},
        "max_epochs": args.epochs,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "session.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "session.md").write_text(markdown(result))
    print((args.out / "session.md").read_text())
    return 0


def markdown(r: dict[str, Any]) -> str:
    p = r["protocol"]
    lines = [
        "# Session-based next-item prediction (anonymous sessions, full ranking)",
        "",
        provenance_line(r) + f" {r['threads']} torch thread.",
        "",
        f"Protocol (`training/session_eval.py`): sessions cut at {p['gap_minutes']:g} min of inactivity "
        f"({p['sessions']} sessions, median length {p['session_length_median']:g}); the last "
        f"{p['test_share']:g} of sessions by start time are test ({p['test_sessions']} sessions from "
        f"{p['test_start']}, {p['test_event_share']:.1%} of events); every next item of a test session is "
        f"predicted from its prefix, with the user unknown (-1): {p['examples']} examples. Items without a "
        "training interaction are removed from the test sessions and never ranked; the prefix's items "
        "are not ranked either.",
        "",
        f"Training: the temporal split of {r['split']['data_version']} cut at the first test session "
        f"(train/valid/test events {r['split']['counts']['train']}/{r['split']['counts']['valid']}/"
        f"{r['split']['counts']['test']}); sequential models at most {r['max_epochs']} epochs, one thread, "
        "the epoch with the best validation NDCG@10 (the pipeline's, per user) kept.",
        "",
        "| model | " + " | ".join(SHOWN) + " | epochs | best valid NDCG@10 | train s |",
        "|---|" + "---:|" * (len(SHOWN) + 3),
    ]
    for row in r["rows"]:
        cells = [f"{row['metrics'][m]:.4f}" for m in SHOWN]
        valid = f"{row['best_valid_ndcg10']:.4f}" if "best_valid_ndcg10" in row else "-"
        lines.append(
            f"| {row['model']} | "
            + " | ".join(cells)
            + f" | {row['epochs']} | {valid} | {row.get('train_seconds', '-')} |"
        )
    lines += [
        "",
        "Few epochs on a shared 2-core machine: the sequential models are not converged; the ordering "
        "may change with full training (bench/results/training.md trains to early stopping).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
