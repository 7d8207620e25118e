"""What one training epoch costs on a large log, and what sparse id tables change.

Reads the splits that ``bench/bench_scale.py`` leaves under ``--data`` (run it first: its last size's
home is kept) and trains each variant for one epoch on each size, every run in a fresh process with one
torch thread, under the same watchdog as that bench (``--rss-limit-mb``, ``--stage-timeout-s``):

- ``bpr dense``: BPR as configured (``configs/models/bpr.yaml``), Adam on dense gradients;
- ``bpr sparse``: the same with ``sparse_embeddings: true`` (``training.models.optim.LazyAdam``);
- ``twotower sparse``: TwoTower as configured, with ``sparse_embeddings: true``.

Every variant validates on the same fixed sample of ``--valid-users`` validation users
(``trainer.valid_users``), so the epochs differ by their training step alone. Reported per run: the wall
seconds of ``training.train.train_model`` (data module, epoch, validation, artifact), the epoch's
seconds (``epochs.jsonl``: training steps plus the validation pass), training rows per second, peak
RSS and the validation NDCG@10 on the sample after that one epoch.

Writes ``bench/results/train_scale.json`` and ``.md``.

Usage:
    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python bench/bench_train_scale.py
        [--data /tmp/scale-data] [--sizes 5000000,20000000] [--variants "bpr dense,bpr sparse,twotower sparse"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from bench_scale import process_peak_rss_mb, watched  # noqa: E402

from pipeline.provenance import bench_provenance, provenance_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("bpr dense", "bpr sparse", "twotower sparse")


def find_split(data: Path, events: int) -> Path:
    """The split manifest ``bench_scale.py`` wrote for the log of ``events`` events."""
    found = sorted(data.glob(f"events{events}-*/home/splits/*/*/split.json"))
    if not found:
        raise SystemExit(f"no split of {events:,} events under {data}: run bench/bench_scale.py first")
    return found[0]


def run_child(variant: str, split_manifest: Path, valid_users: int, run_dir: Path) -> dict[str, Any]:
    """Train ``variant`` for one epoch in this process; its costs."""
    import torch

    from pipeline.artifacts import Split
    from pipeline.config import TrainerConfig, load_model_params
    from training.train import train_model

    torch.set_num_threads(1)
    model, tables = variant.split()
    params = {**load_model_params(model), "sparse_embeddings": tables == "sparse"}
    cfg = TrainerConfig(max_epochs=1, num_threads=1, valid_users=valid_users)
    started = time.perf_counter()
    result = train_model(model, Split.load(split_manifest), params, cfg, run_dir)
    return {
        "wall_s": time.perf_counter() - started,
        "epoch_s": result.epoch_seconds,
        "rows_per_s": result.interactions_per_second,
        "valid_ndcg10": result.best_valid_ndcg10,
        "valid_users": result.valid_users,
        "peak_rss_mb": process_peak_rss_mb(),
    }


def _fmt(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# One training epoch on large synthetic logs: dense vs sparse id tables",
        "",
        "Splits of `bench/bench_scale.py` (temporal protocol). One epoch per run, each in a fresh process, "
        f"1 torch thread; every run validates on the same fixed sample of {record['valid_users']:,} "
        "validation users (`trainer.valid_users`). *wall* = `train_model` as a whole (data module, epoch, "
        "validation, artifact); *epoch* = the epoch's seconds (training steps and the validation pass); "
        "*rows/s* = training rows / epoch seconds; NDCG@10 on the validation sample after the one epoch.",
        "",
        "| events | variant | status | wall s | epoch s | rows/s | peak RSS MB | valid NDCG@10 |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in record["runs"]:
        ok = run["status"] == "ok"
        lines.append(
            f"| {run['events']:,} | {run['variant']} | {run['status']} | {_fmt(run.get('wall_s'))} | "
            f"{_fmt(run.get('epoch_s') if ok else None)} | {_fmt(run.get('rows_per_s') if ok else None, 0)} | "
            f"{_fmt(run.get('peak_rss_mb'), 0)} | {_fmt(run.get('valid_ndcg10') if ok else None, 4)} |"
        )
    lines += ["", provenance_line(record), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/scale-data"))
    parser.add_argument("--sizes", default="5000000,20000000")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--valid-users", type=int, default=20_000)
    parser.add_argument("--rss-limit-mb", type=float, default=15_500)
    parser.add_argument("--stage-timeout-s", type=float, default=900)
    parser.add_argument("--out", type=Path, default=RESULTS / "train_scale")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.split, args.valid_users, args.run_dir)))
        return

    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    runs = []
    for events in (int(s) for s in args.sizes.split(",")):
        split = find_split(args.data, events)
        for variant in variants:
            run_dir = split.parent / "train-scale" / variant.replace(" ", "-")
            cmd = [sys.executable, __file__, "--child", variant, "--split", str(split)]
            cmd += ["--run-dir", str(run_dir), "--valid-users", str(args.valid_users)]
            print(f"[{events:,} events] {variant} ...", file=sys.stderr, flush=True)
            result = watched(cmd, env, args.rss_limit_mb, args.stage_timeout_s)
            print(f"[{events:,} events] {variant}: {result}", file=sys.stderr, flush=True)
            runs.append({"events": events, "variant": variant, "split": str(split), **result})
    record = {
        **bench_provenance("bench/bench_train_scale.py", argv if argv is not None else sys.argv[1:]),
        "valid_users": args.valid_users,
        "rss_limit_mb": args.rss_limit_mb,
        "stage_timeout_s": args.stage_timeout_s,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
