"""What does ranking a dot-product model's test users against a large catalogue cost, dense or by blocks?

The evaluation ranks every test user against the whole catalogue. For a dot-product model
(``ScoresByDotProduct``) it can write each batch's (users x catalogue) scores into one buffer, mask
the exclusions there from dense masks and take ``torch.topk`` (the path below ``LISTS_MIN_ITEMS``
items), or score the catalogue block by block and merge each block's entries into running top-k lists,
with the truth and exclusions kept as sparse rows (``training.topk.top_k_of_dot_product``, the path
from ``LISTS_MIN_ITEMS`` on). This ranks the same model on the same test inputs both ways, one after
the other in one process, ``--repeats`` times, and reports the seconds of each and whether every
metric agrees.

The model is the one ``bench/bench_scale.py`` trained (one BPR epoch) on a synthetic shop log: pass
that size's data directory (the bench keeps its ``home`` after it ends). Only the ranking is timed:
the test inputs are built once, before.

Writes ``bench/results/eval_ranking.json`` and ``.md``.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_eval_ranking.py
        --scale-data /tmp/scale-data/events5000000-items300000-users250000 [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from pipeline.provenance import code_commit  # noqa: E402  (pipeline first: it sets torch's allocator options)

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {"dense": 10**12, "blocks": 0}  # lists_min_items that picks each path
KS = [10, 20]


def rank(module: Any, inputs: Any, method: str, batch_users: int) -> tuple[float, dict[str, float]]:
    from training.train import evaluation_accumulator

    started = time.perf_counter()
    acc = evaluation_accumulator(module, inputs, KS, batch_users, lists_min_items=METHODS[method])
    metrics = acc.compute()
    return time.perf_counter() - started, metrics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale-data", type=Path, required=True, help="a size's directory of bench_scale.py")
    parser.add_argument(
        "--run", default="bpr/scale", help="the run under home/runs (bench_scale's: bpr/scale)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-users", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_ranking")
    args = parser.parse_args()

    os.environ["RECFORGE_HOME"] = str(args.scale_data / "home")
    import torch

    from pipeline.artifacts import Split, TrainResult
    from training.artifact import DEFAULT_HISTORY_LENGTH, load_model_artifact
    from training.data import build_eval_inputs

    torch.set_num_threads(args.threads)
    run_dir = args.scale_data / "home" / "runs" / args.run
    train = TrainResult.load(run_dir / "train.json")
    split = Split.load(run_dir / "split.json")
    artifact = load_model_artifact(Path(train.run_dir) / "model")
    module = artifact.module
    started = time.perf_counter()
    inputs = build_eval_inputs(split, "test", artifact.history_length or DEFAULT_HISTORY_LENGTH)
    inputs_s = time.perf_counter() - started
    print(f"{inputs.n_users:,} test users x {inputs.n_items:,} items; inputs {inputs_s:.1f}s", flush=True)

    runs: dict[str, list[float]] = {method: [] for method in METHODS}
    metrics: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        order = list(METHODS) if repeat % 2 == 0 else list(reversed(METHODS))  # alternate who goes first
        for method in order:
            seconds, metrics[method] = rank(module, inputs, method, args.batch_users)
            runs[method].append(seconds)
            print(
                f"repeat {repeat}: {method} {seconds:.1f}s ndcg@10 {metrics[method]['ndcg@10']:.6f}",
                flush=True,
            )
    differences = {name: abs(metrics["blocks"][name] - value) for name, value in metrics["dense"].items()}
    result = {
        "code_commit": code_commit(),
        "command": "python bench/bench_eval_ranking.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "scale_data": args.scale_data.name,
        "model": train.model,
        "threads": args.threads,
        "batch_users": args.batch_users,
        "test_users": inputs.n_users,
        "items": inputs.n_items,
        "inputs_s": round(inputs_s, 1),
        "seconds": {method: [round(s, 2) for s in values] for method, values in runs.items()},
        "metrics": metrics,
        "largest_metric_difference": max(differences.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(result: dict[str, Any]) -> str:
    best = {method: min(values) for method, values in result["seconds"].items()}
    lines = [
        "# Ranking a dot-product model's test users: dense scores or blocks of the catalogue",
        "",
        f"{result['model']} trained by `bench/bench_scale.py` on `{result['scale_data']}`; "
        f"{result['test_users']:,} test users x {result['items']:,} items, every test user, the whole "
        f"catalogue; batches of {result['batch_users']} users, {result['threads']} torch threads, both "
        "methods in one process on the same inputs, alternating which goes first. "
        f"Machine: {result['machine']}; generated {result['generated']}.",
        "",
        "| method | seconds (each repeat) | best s | µs per user |",
        "|---|---|---:|---:|",
    ]
    for method, values in result["seconds"].items():
        per_user = best[method] / result["test_users"] * 1e6
        lines.append(
            f"| {method} | {', '.join(f'{v:.1f}' for v in values)} | {best[method]:.1f} | {per_user:,.0f} |"
        )
    ratio = best["dense"] / best["blocks"]
    lines += [
        "",
        f"Dense / blocks (best of each): {ratio:.2f}x. Largest difference of any metric between the two: "
        f"{result['largest_metric_difference']:.2e}.",
        "",
        "| metric | dense | blocks |",
        "|---|---:|---:|",
    ]
    for name in sorted(result["metrics"]["dense"]):
        if not math.isnan(result["metrics"]["dense"][name]):
            lines.append(
                f"| {name} | {result['metrics']['dense'][name]:.6f} | {result['metrics']['blocks'][name]:.6f} |"
            )
    lines += ["", f"Command: `{result['command']}` at git `{result['code_commit']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
