"""Training speed against a peer: BPR and SASRec in recforge and in RecBole 1.2.1, same data and threads.

recforge never imports RecBole. It runs in a virtual environment of its own (``--recbole-python``;
``--make-venv DIR`` creates one with ``pip install torch==2.13.0 recbole==1.2.1 'numpy<2'``), in a
child process, on the MovieLens-100K atomic files inside its own package (the copy recforge's fetch
stage takes its events from). Both sides run with one torch thread and the same model settings
(recforge's ``configs/models/<model>.yaml``: embedding / hidden size, layers, batch size, learning
rate, history length), and both time the training loop of each epoch alone, without validation:
recforge's ``EpochTimer`` (``training/train.py``), RecBole's ``Trainer._train_epoch``.

Splits as each library runs them: BPR on a random 8:1:1 split (recforge ``random_holdout``, RecBole
``RS``), SASRec on leave-last-out (``leave_last_out`` / ``LS: valid_and_test``). The work per epoch
is each library's own: recforge's SASRec makes one forward pass per user sequence with a loss at every
position; RecBole's makes one training example per prefix of each sequence.

Usage:
    .venv/bin/python bench/bench_peer_recbole.py --make-venv /tmp/recbole-venv \\
        --examples .recforge/features/<namespace>/examples.parquet [--epochs bpr=10 sasrec=3]
Writes ``bench/results/peer_recbole.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from pipeline.provenance import bench_provenance, provenance_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOL = {"bpr": "random_holdout", "sasrec": "leave_last_out"}
RECBOLE_NAME = {"bpr": "BPR", "sasrec": "SASRec"}

# Run by the RecBole venv's Python: argv = model, epochs, RecBole config (JSON), work directory.
RECBOLE_CHILD = r"""
import json, os, statistics, sys, time
import torch
torch.set_num_threads(1)
import recbole
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

model_name, epochs, settings, work = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
config = Config(model=model_name, dataset="ml-100k", config_dict={
    "data_path": os.path.join(os.path.dirname(recbole.__file__), "dataset_example"),
    "use_gpu": False, "seed": 2026, "reproducibility": True, "show_progress": False, "worker": 0,
    "epochs": epochs, "state": "WARNING", "checkpoint_dir": work, **settings,
})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, _, _ = data_preparation(config, dataset)
model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
seconds = []
for epoch in range(epochs):
    started = time.perf_counter()
    trainer._train_epoch(train_data, epoch, show_progress=False)
    seconds.append(time.perf_counter() - started)
print(json.dumps({"epoch_seconds": seconds, "train_examples": len(train_data._dataset),
                  "recbole": recbole.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""


def recbole_settings(model: str, ours: dict[str, Any]) -> dict[str, Any]:
    """RecBole's names for recforge's settings of ``model`` (its YAML)."""
    if model == "bpr":
        return {
            "embedding_size": ours["embedding_size"],
            "train_batch_size": ours["batch_size"],
            "learning_rate": ours["lr"],
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
            "eval_args": {
                "split": {"RS": [0.8, 0.1, 0.1]},
                "order": "RO",
                "group_by": "user",
                "mode": "full",
            },
        }
    if model == "sasrec":
        return {
            "hidden_size": ours["hidden_size"],
            "inner_size": ours["inner_size"],
            "n_layers": ours["n_layers"],
            "n_heads": ours["n_heads"],
            "hidden_dropout_prob": ours["dropout"],
            "attn_dropout_prob": ours["dropout"],
            "loss_type": ours["loss_type"].upper(),
            "train_batch_size": ours["batch_size"],
            "learning_rate": ours["lr"],
            "MAX_ITEM_LIST_LENGTH": ours["history_length"],
            "train_neg_sample_args": None,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        }
    raise ValueError(f"no RecBole mapping for {model!r}")


def model_settings(model: str) -> dict[str, Any]:
    settings = yaml.safe_load((REPO / "configs" / "models" / f"{model}.yaml").read_text())
    return {k: v for k, v in settings.items() if k not in ("tuning_grid", "search_space")}


def run_recbole(python: str, model: str, epochs: int, settings: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="recbole-peer-") as work:
        done = subprocess.run(
            [python, "-c", RECBOLE_CHILD, RECBOLE_NAME[model], str(epochs),
             json.dumps(settings), work],
            capture_output=True, text=True, cwd=work, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"RecBole {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ours(model: str, epochs: int, examples: Path, home: Path) -> dict[str, Any]:
    """recforge's training of ``model`` for ``epochs`` epochs (no early stop), in a child process."""
    namespace = {
        "examples": str(examples),
        "knowledge_graph": "",
        "home": str(home),
        "seed": 2026,
        "max_epochs": epochs,
        "patience": epochs + 1,  # no early stop: every epoch is timed
        "threads": 1,
    }
    code = (
        "import argparse, json, sys\n"
        f"sys.path[:0] = [{str(REPO)!r}]\n"
        "from bench.bench_training import run_one\n"
        f"row = run_one({model!r}, {PROTOCOL[model]!r}, {{}}, argparse.Namespace(**{namespace!r}))\n"
        "print(json.dumps(row, default=str))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),
    )
    if done.returncode != 0:
        raise RuntimeError(f"recforge {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=Path, required=True, help="recforge's ML-100K examples Parquet")
    parser.add_argument("--recbole-python", default="/tmp/recbole-venv/bin/python")
    parser.add_argument(
        "--make-venv", type=Path, help="create a RecBole venv here first (needs the registry)"
    )
    parser.add_argument("--epochs", nargs="+", default=["bpr=10", "sasrec=3"], help="MODEL=EPOCHS")
    parser.add_argument("--home", type=Path, help="recforge's work directory (default: a new temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.home = args.home or Path(tempfile.mkdtemp(prefix="recforge-peer-"))
    if args.make_venv:
        subprocess.run([sys.executable, "-m", "venv", str(args.make_venv)], check=True)
        pip = [str(args.make_venv / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "recbole==1.2.1", "numpy<2"], check=True)
        args.recbole_python = str(args.make_venv / "bin" / "python")
    rows = []
    for item in args.epochs:
        model, epochs = item.split("=")
        settings = model_settings(model)
        ours = run_ours(model, int(epochs), args.examples, args.home)
        peer = run_recbole(args.recbole_python, model, int(epochs), recbole_settings(model, settings))
        row = {
            "model": model,
            "epochs": int(epochs),
            "settings": settings,
            # The same statistic on both sides, the median of the epochs: a first epoch carries one-off
            # start-up costs (lazy initialisation, allocator warm-up) that a mean of a few would weigh in.
            "recforge_epoch_s": statistics.median(ours["epoch_seconds_all"]),
            "recforge_epoch_s_all": ours["epoch_seconds_all"],
            "recforge_test_ndcg10": ours["test"]["ndcg@10"],
            "recbole_epoch_s": statistics.median(peer["epoch_seconds"]),
            "recbole_epoch_s_all": [round(s, 3) for s in peer["epoch_seconds"]],
            "recbole_train_examples": peer["train_examples"],
            "recbole": peer["recbole"],
            "recbole_torch": peer["torch"],
        }
        row["recbole_over_recforge"] = round(row["recbole_epoch_s"] / row["recforge_epoch_s"], 2)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    report = {
        **bench_provenance("bench/bench_peer_recbole.py", sys.argv[1:] if argv is None else argv),
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer_recbole.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "peer_recbole.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Training speed against RecBole 1.2.1 (same data, same threads)",
        "",
        f"{provenance_line(r)} MovieLens-100K, 1 torch thread on both sides, each library's training "
        "loop per epoch without validation (bench/bench_peer_recbole.py docstring: what each side runs).",
        "",
        "| model | epochs | recforge s/epoch (median) | RecBole s/epoch (median) | RecBole / recforge "
        "| recforge epochs (s) | RecBole epochs (s) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in r["runs"]:
        lines.append(
            f"| {row['model']} | {row['epochs']} | {row['recforge_epoch_s']:.3f} | {row['recbole_epoch_s']:.3f} | "
            f"{row['recbole_over_recforge']:.2f}x | {', '.join(f'{s:.2f}' for s in row['recforge_epoch_s_all'])} | "
            f"{', '.join(f'{s:.2f}' for s in row['recbole_epoch_s_all'])} |"
        )
    lines += ["", "A ratio above 1: recforge's epoch is faster.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
