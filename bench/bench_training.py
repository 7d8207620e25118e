"""Training/evaluation bench: models x split protocols on an examples Parquet (e.g. ML-100K).

Runs the real stage functions (make_split -> train_model -> evaluate_run) on a FeatureSet examples
file, so the numbers are what the pipeline produces, and writes:
- bench/results/training.json: every run's test metrics, baselines, epochs, s/epoch, interactions/s,
  peak RSS, best valid NDCG@10, wall time;
- bench/results/training.md: one table per protocol.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_training.py --examples <examples.parquet> \
        [--models bpr,sasrec,popularity,itemknn] [--protocols random_holdout,leave_last_out] \
        [--max-epochs 30] [--threads 2] [--set sasrec.loss_type=bce] [--knowledge-graph <kg.parquet>]
The examples file is the features stage output (``FeatureSet.examples``); its data version here is
the file's content hash, so splits are reused between bench runs on the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from orchestration.runs import model_params  # noqa: E402
from pipeline.artifacts import FeatureSet  # noqa: E402
from pipeline.config import EvaluationConfig, SplitConfig, TrainerConfig, load_config  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.provenance import code_commit  # noqa: E402
from training.evaluate import evaluate_run  # noqa: E402
from training.split import make_split  # noqa: E402
from training.train import read_epoch_log, train_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TABLE_METRICS = (
    "ndcg@10",
    "recall@10",
    "hr@10",
    "mrr@10",
    "precision@10",
    "ndcg@20",
    "recall@20",
    "coverage@10",
)


def file_version(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "bench-" + digest.hexdigest()[:12]


def parse_overrides(values: list[str]) -> dict[str, dict[str, Any]]:
    """``["sasrec.loss_type=bce"]`` -> ``{"sasrec": {"loss_type": "bce"}}`` (values parsed as JSON if possible)."""
    out: dict[str, dict[str, Any]] = {}
    for item in values:
        key, _, raw = item.partition("=")
        model, _, param = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(model, {})[param] = value
    return out


def process_peak_rss_mb() -> float | None:
    """This process's own RSS high-water mark (Linux ``VmHWM``), training and evaluation included.

    ``getrusage``'s ``ru_maxrss`` survives fork + exec, so a worker spawned after the parent built the
    features would report the parent's peak (~1 GB) instead of its own; ``VmHWM`` belongs to the
    worker's fresh address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def train_and_evaluate(
    model: str,
    protocol: str,
    params: dict[str, Any],
    feature_set: FeatureSet,
    home: Path,
    *,
    seed: int,
    max_epochs: int,
    patience: int,
    threads: int,
    run_id: str | None = None,
    train_seed: int | None = None,
) -> dict[str, Any]:
    """Split (reused when it exists), train and evaluate one model; the row the benches report.

    ``seed`` seeds the split; ``train_seed`` the training (initialisation, sampling, shuffling),
    default ``TrainerConfig``'s: vary it alone to see how much a number moves between trainings.

    Shared by this bench and bench/leaderboard.py, so both measure exactly the same thing. Meant to
    run in its own process (peak RSS is the process's).
    """
    torch.set_num_threads(threads)
    layout = Layout(Path(home))
    split = make_split(feature_set, SplitConfig(protocol=protocol, seed=seed), layout)
    trainer_cfg = TrainerConfig(max_epochs=max_epochs, patience=patience, num_threads=threads)
    if train_seed is not None:
        trainer_cfg = trainer_cfg.model_copy(update={"seed": train_seed})
    start = time.perf_counter()
    # Keyed by the configuration: two benches of different hyperparameters in one home never share
    # (and overwrite) a checkpoint directory.
    config_key = hashlib.sha256(
        json.dumps(
            [params, seed, max_epochs, patience, trainer_cfg.seed], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:8]
    run_dir = layout.run(model, run_id or f"bench-{protocol}-{config_key}")
    result = train_model(model, split, params, trainer_cfg, run_dir)
    train_seconds = time.perf_counter() - start
    evaluation = evaluate_run(result, split, EvaluationConfig())
    wall = time.perf_counter() - start
    return {
        "model": model,
        "protocol": protocol,
        "params": params,
        "test": evaluation.metrics,
        "test_users": json.loads(Path(evaluation.metrics_path).read_text())["n_users"],
        "epochs": result.epochs,
        "epoch_seconds": result.epoch_seconds,
        "epoch_seconds_all": epoch_seconds_of(run_dir),
        "interactions_per_second": result.interactions_per_second,
        "best_valid_ndcg10": result.best_valid_ndcg10,
        "peak_rss_mb": result.peak_rss_mb,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "popularity_ndcg10": evaluation.baselines["popularity"]["ndcg@10"],
        "baselines": evaluation.baselines,
        "split_dir": str(split.dir),
    }


def epoch_seconds_of(run_dir: Path) -> list[float]:
    """Each training epoch's seconds, in order, from the run's epoch log (none for a fitted baseline)."""
    log = run_dir / "epochs.jsonl"
    return [round(epoch["seconds"], 3) for epoch in read_epoch_log(log)] if log.exists() else []


def run_one(model: str, protocol: str, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One (model, protocol) of this bench: the examples file's content hash is its data version."""
    examples = Path(args.examples).resolve()
    knowledge_graph = Path(args.knowledge_graph).resolve() if args.knowledge_graph else None
    feature_set = FeatureSet(
        file_version(examples),
        Path(args.home) / "feature_repo",
        examples,
        [],
        "recsys_training",
        "",
        knowledge_graph=knowledge_graph,
    )
    return train_and_evaluate(
        model,
        protocol,
        params,
        feature_set,
        Path(args.home),
        seed=args.seed,
        max_epochs=args.max_epochs,
        patience=args.patience,
        threads=args.threads,
    )


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (protocol, model) in a fresh process, so peak RSS and timings belong to that run alone."""
    args.home = args.home or tempfile.mkdtemp(prefix="recforge-bench-")
    overrides = parse_overrides(args.set)
    rows = []
    context = multiprocessing.get_context("spawn")
    for protocol in args.protocols.split(","):
        for model in args.models.split(","):
            params = model_params(model, overrides.get(model))
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                row = pool.submit(run_one, model, protocol, params, args).result()
            rows.append(row)
            print(
                f"{protocol:15s} {model:10s} ndcg@10={row['test']['ndcg@10']:.4f} epochs={row['epochs']} "
                f"s/epoch={row['epoch_seconds']:.2f} wall={row['wall_seconds']:.0f}s",
                flush=True,
            )
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Training bench",
        "",
        f"`{meta['command']}` at git `{meta['code_commit']}`.",
        "",
        f"Examples `{meta['examples']}` (data version `{meta['data_version']}`), {meta['machine']}, "
        f"torch {meta['torch']}, {meta['threads']} threads, max {meta['max_epochs']} epochs "
        f"(early stopping on valid NDCG@10, patience {meta['patience']}). Full ranking over all items; "
        "test metrics; s/epoch = training loop only (validation excluded), for baselines the closed-form fit; "
        "lift = NDCG@10 / Popularity's; each run in its own process (peak RSS is that run's).",
        "",
    ]
    for protocol in dict.fromkeys(row["protocol"] for row in rows):
        lines += [
            f"## {protocol}",
            "",
            "| model | "
            + " | ".join(TABLE_METRICS)
            + " | lift | epochs | s/epoch | interactions/s | peak RSS MB |",
            "|---|" + "---:|" * (len(TABLE_METRICS) + 5),
        ]
        for row in (r for r in rows if r["protocol"] == protocol):
            lift = row["test"]["ndcg@10"] / max(row["popularity_ndcg10"], 1e-12)
            lines.append(
                f"| {row['model']} | "
                + " | ".join(f"{row['test'][m]:.4f}" for m in TABLE_METRICS)
                + f" | {lift:.2f}x | {row['epochs']} | {row['epoch_seconds']:.2f} | "
                f"{row['interactions_per_second']:.0f} | {row['peak_rss_mb']:.0f} |"
            )
        users = sorted({r["test_users"] for r in rows if r["protocol"] == protocol})
        lines += ["", f"Test users evaluated: {', '.join(map(str, users))}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", required=True, help="examples Parquet (FeatureSet.examples)")
    parser.add_argument("--models", default="bpr,sasrec,popularity,itemknn")
    parser.add_argument("--protocols", default="random_holdout,leave_last_out")
    defaults = load_config().trainer  # the pipeline's own defaults, so bench and demo agree
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--home", default="", help="RECFORGE_HOME for splits/runs (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], help="model.param=value override")
    parser.add_argument(
        "--knowledge-graph",
        default="",
        help="item knowledge graph Parquet (Snapshot/FeatureSet.knowledge_graph) for knowledge-aware models "
        "(cke); use a fresh --home, splits are keyed by the examples file only",
    )
    parser.add_argument("--out", default=str(RESULTS), help="directory for training.json / training.md")
    args = parser.parse_args(argv)
    rows = run_bench(args)
    meta = {
        "code_commit": code_commit(),
        "command": "python bench/bench_training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "examples": str(args.examples),
        "data_version": file_version(Path(args.examples)),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": args.threads,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "overrides": args.set,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    (out / "training.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'training.json'} and {out / 'training.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
