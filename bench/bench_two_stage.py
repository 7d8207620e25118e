"""The served two-stage system as one leaderboard row: retrieval recall, then NDCG@10 of the final list.

The service answers a ranker (DIN by default) packaged with a retriever (TwoTower) in two stages: the
retriever's top ``--candidates`` unseen items, ordered by the ranker. Each model's own leaderboard row
ranks the whole catalogue alone, which is not what users get. This bench trains both models exactly as
``bench/leaderboard.py`` does (same splits, seeds, settings, run ids; ML-100K), then scores the unit
with ``training.two_stage.evaluate_two_stage`` on the same test part under full ranking: the
retriever's recall at the candidate depth (the ceiling of the final list), and the final list's
NDCG@10 / recall@10 next to each model alone. Verdicts use the leaderboard's noise rule (mean ± sample
std over the seeds).

Usage:
    .venv/bin/python bench/bench_two_stage.py [--seeds 2026,2027,2028] [--protocols random_holdout]
        [--retriever twotower --ranker din --candidates 200] [--home DIR] [--out bench/results/two_stage_eval]
Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import leaderboard as lb  # noqa: E402

from orchestration.runs import model_params  # noqa: E402
from pipeline.artifacts import FeatureSet  # noqa: E402
from pipeline.provenance import bench_provenance, provenance_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("ndcg@10", "recall@10")


def two_stage_record(
    home: Path, feature_manifest: Path, protocol: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The retriever and ranker runs of (protocol, seed), evaluated as one system on the test part."""
    from pipeline.config import SplitConfig
    from pipeline.layout import Layout
    from training.artifact import load_model_artifact
    from training.data import build_eval_inputs
    from training.split import make_split
    from training.two_stage import evaluate_two_stage

    layout = Layout(home)
    split = make_split(FeatureSet.load(feature_manifest), SplitConfig(protocol=protocol, seed=seed), layout)
    run_id = f"{lb.RUN_PREFIX}-{protocol}-seed{seed}"
    retriever = load_model_artifact(layout.run(args.retriever, run_id) / "model")
    ranker = load_model_artifact(layout.run(args.ranker, run_id) / "model")
    lengths = (retriever.history_length or 50, ranker.history_length or 50)
    inputs = build_eval_inputs(split, "test", max(lengths))
    metrics = evaluate_two_stage(
        retriever.module, ranker.module, inputs, args.candidates, [10, 20], history_lengths=lengths
    )
    return {"protocol": protocol, "seed": seed, "metrics": metrics, "test_users": inputs.n_users}


def stats(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(values: list[float]) -> str:
    mean, std = stats(values)
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def verdict(system: list[float], alone: list[float]) -> str:
    """The leaderboard's noise rule: beats / below / within noise."""
    a, b = stats(system), stats(alone)
    noise = max(s for s in (a[1], b[1], 0.0) if s is not None)
    if a[0] - b[0] > noise:
        return "beats"
    if b[0] - a[0] > noise:
        return "below"
    return "within noise"


def markdown(result: dict[str, Any]) -> str:
    args = result["settings"]
    retriever, ranker, depth = args["retriever"], args["ranker"], args["candidates"]
    lines = [
        f"# Two-stage system ({retriever} retrieves {depth}, {ranker} ranks) under full ranking",
        "",
        provenance_line(result["provenance"]),
        "",
        f"ML-100K, test part, seen items excluded; {retriever} and {ranker} trained as `bench/leaderboard.py` "
        "trains them (same splits, seeds and settings; max "
        f"{args['max_epochs']} epochs, patience {args['patience']}, {args['threads']} thread(s)). "
        f"`{ranker}` alone and `{retriever}` alone rank the whole catalogue; the system ranks the "
        f"retriever's top {depth} unseen items by the ranker (as the service does). Mean ± sample std "
        f"over seeds {', '.join(map(str, args['seeds']))}.",
        "",
        f"| protocol | retrieval recall@{depth} | system NDCG@10 | {retriever} NDCG@10 | {ranker} NDCG@10 "
        f"| system recall@10 | system vs {retriever} | system vs {ranker} |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for protocol in args["protocols"]:
        rows = [r for r in result["systems"] if r["protocol"] == protocol]
        if not rows:
            continue
        alone = {
            model: [
                r["metrics"]["ndcg@10"]
                for r in result["models"]
                if r["model"] == model and r["protocol"] == protocol
            ]
            for model in (retriever, ranker)
        }
        system = [r["metrics"]["ndcg@10"] for r in rows]
        lines.append(
            f"| {protocol} | {cell([r['metrics'][f'retrieval_recall@{depth}'] for r in rows])} | "
            f"{cell(system)} | {cell(alone[retriever])} | {cell(alone[ranker])} | "
            f"{cell([r['metrics']['recall@10'] for r in rows])} | {verdict(system, alone[retriever])} | "
            f"{verdict(system, alone[ranker])} |"
        )
    lines += [
        "",
        "Per seed (NDCG@10: system / retriever alone / ranker alone):",
        "",
    ]
    for row in result["systems"]:
        alone = {
            r["model"]: r["metrics"]["ndcg@10"]
            for r in result["models"]
            if r["protocol"] == row["protocol"] and r["seed"] == row["seed"]
        }
        lines.append(
            f"- {row['protocol']} seed {row['seed']}: {row['metrics']['ndcg@10']:.4f} / "
            f"{alone.get(retriever, float('nan')):.4f} / {alone.get(ranker, float('nan')):.4f}; "
            f"retrieval recall@{depth} {row['metrics'][f'retrieval_recall@{depth}']:.4f} "
            f"({row['test_users']} test users)"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="2026,2027,2028")
    parser.add_argument("--protocols", default="random_holdout,leave_last_out")
    parser.add_argument("--retriever", default="twotower")
    parser.add_argument("--ranker", default="din")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--home", type=Path, default=Path("/tmp/two-stage-home"))
    parser.add_argument("--out", type=Path, default=RESULTS / "two_stage_eval")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    provenance = bench_provenance("bench/bench_two_stage.py", sys.argv[1:] if argv is None else argv)

    home = args.home.resolve()
    overrides = lb.source_overrides("ml-100k", None, home)
    feature_set, feature_manifest = lb.prepare_data(overrides)
    lb.prepare_splits(feature_set, protocols, overrides, seeds)
    jobs = [
        lb.training_job(model, protocol, seed, model_params(model), feature_manifest, home, args)
        for model in (args.ranker, args.retriever)  # the ranker's epochs cost more: it starts first
        for protocol in protocols
        for seed in seeds
    ]
    models = lb.run_all(jobs, args.workers)
    failed = [r for r in models if r["status"] != "ok"]
    if failed:
        raise SystemExit(
            f"training failed: {[(r['model'], r['protocol'], r['seed'], r['error']) for r in failed]}"
        )
    systems = [two_stage_record(home, feature_manifest, p, s, args) for p in protocols for s in seeds]
    for row in systems:
        print(f"{row['protocol']:15s} seed {row['seed']} system {json.dumps(row['metrics'])}", flush=True)
    result = {
        "provenance": provenance,
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("home", "out")},
            "seeds": seeds,
            "protocols": protocols,
        },
        "models": models,
        "systems": systems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
