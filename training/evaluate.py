"""Test-set evaluation of a trained model next to the baselines, on the same split and users.

Full ranking over the whole catalogue (see training/metrics.py), users in batches. Baselines
(Popularity, ItemKNN, UserKNN) are fitted on the same split's train part and their metrics cached in
``split.dir/baselines/<name>.json``, so every model of a run (and every run on that split) compares
against identical numbers without refitting. Writes ``metrics.json``, ``leaderboard.md`` and the
``evaluation.json`` manifest into the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.artifacts import Evaluation, Split, TrainResult, atomic_write_json, atomic_write_text
from pipeline.config import EvaluationConfig
from training.artifact import DEFAULT_HISTORY_LENGTH, load_model_artifact
from training.data import EvalInputs, build_eval_inputs, build_example_set
from training.models import build_model
from training.split import SplitIndex, train_matrix
from training.train import evaluate_module

BASELINES = ("popularity", "itemknn", "userknn")
LEADERBOARD_COLUMNS = (
    "recall@10",
    "ndcg@10",
    "hr@10",
    "mrr@10",
    "precision@10",
    "recall@20",
    "ndcg@20",
    "hr@20",
    "mrr@20",
    "precision@20",
    "coverage@10",
)


def evaluate_run(train_result: TrainResult, split: Split, cfg: EvaluationConfig) -> Evaluation:
    """Evaluate the run's model artifact on ``split``'s test part; write metrics and the leaderboard."""
    run_dir = Path(train_result.run_dir)
    artifact = load_model_artifact(run_dir / "model")
    history_length = artifact.history_length or DEFAULT_HISTORY_LENGTH
    inputs = build_eval_inputs(split, "test", history_length)
    metrics = evaluate_module(artifact.module, inputs, list(cfg.ks), cfg.batch_users)
    if hasattr(artifact.module, "pointwise_metrics"):
        # Rating error (MF), AUC/LogLoss (CTR rankers), off-policy reward (REINFORCE): each model
        # computes its own from the test examples, with the user's history as of each event.
        examples = build_example_set(split, "test", history_length, num_negatives=1, seed=split.seed)
        metrics.update(artifact.module.pointwise_metrics(examples))
    baselines = {name: baseline_metrics(name, split, cfg, inputs) for name in BASELINES}

    metrics_path = run_dir / "metrics.json"
    atomic_write_json(
        metrics_path,
        {
            "model": train_result.model,
            "protocol": split.protocol,
            "data_version": split.data_version,
            "n_users": inputs.n_users,
            "metrics": metrics,
            "baselines": baselines,
        },
    )
    leaderboard_path = atomic_write_text(
        run_dir / "leaderboard.md",
        leaderboard_markdown(train_result.model, metrics, baselines, split, inputs.n_users),
    )
    evaluation = Evaluation(
        model=train_result.model,
        metrics_path=metrics_path,
        leaderboard_path=leaderboard_path,
        metrics=metrics,
        baselines=baselines,
        protocol=split.protocol,
        data_version=split.data_version,
    )
    evaluation.save(run_dir / "evaluation.json")
    return evaluation


def baseline_metrics(
    name: str,
    split: Split,
    cfg: EvaluationConfig,
    inputs: EvalInputs | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Test metrics of baseline ``name`` on ``split``, cached in ``split.dir/baselines/<name>.json``."""
    cache = Path(split.dir) / "baselines" / f"{name}.json"
    key = {"ks": sorted(cfg.ks), "params": params or {}}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    index = SplitIndex.load(split)
    module = build_model(name, index.n_users, index.n_items, **(params or {})).fit(train_matrix(split))
    inputs = inputs if inputs is not None else build_eval_inputs(split, "test", DEFAULT_HISTORY_LENGTH)
    metrics = evaluate_module(module, inputs, list(cfg.ks), cfg.batch_users)
    atomic_write_json(cache, {"key": key, "model": name, "n_users": inputs.n_users, "metrics": metrics})
    return metrics


def leaderboard_markdown(
    model: str, metrics: dict[str, float], baselines: dict[str, dict[str, float]], split: Split, n_users: int
) -> str:
    columns = [c for c in LEADERBOARD_COLUMNS if c in metrics]
    columns += sorted(c for c in metrics if c not in LEADERBOARD_COLUMNS)  # model-specific (rmse, auc)
    lines = [
        f"# Leaderboard: {model}",
        "",
        f"Split `{split.protocol}` (seed {split.seed}), data version `{split.data_version}`, "
        f"{n_users} test users, full ranking over {split.counts.get('items', '?')} items.",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    rows = [(model, metrics)] + [(name, values) for name, values in baselines.items() if name != model]
    for name, values in rows:
        lines.append(
            f"| {name} | " + " | ".join(f"{values.get(c, float('nan')):.4f}" for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"
