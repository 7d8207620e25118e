"""Test-set evaluation of a trained model next to the baselines, on the same split and users.

Full ranking over the whole catalogue (see training/metrics.py), users in batches, with the
beyond-accuracy metrics (Gini, novelty, intra-list diversity by item attributes and, for models with
item embeddings, by those) next to the accuracy ones. Baselines
(Popularity, ItemKNN, UserKNN) are fitted on the same split's train part and their metrics cached in
``split.dir/baselines/<name>.json``, so every model of a run (and every run on that split) compares
against identical numbers without refitting (their per-user values next to them, in
``<name>.users.npz``). Writes ``metrics.json``, ``leaderboard.md``, ``per_user.npz`` (every test user's
value of each per-user metric, the model's and the baselines', for the bootstrap intervals),
``report.html`` (``training.report``) and the ``evaluation.json`` manifest into the run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.artifacts import (
    Evaluation,
    Split,
    TrainResult,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
)
from pipeline.config import EvaluationConfig
from training.artifact import DEFAULT_HISTORY_LENGTH, load_model_artifact
from training.attributes import attributes_for
from training.data import EvalInputs, build_eval_inputs, build_example_set
from training.metrics import BeyondAccuracy, ItemVectors, RankingAccumulator
from training.models import build_model, get_spec
from training.models.capabilities import EmbedsItems, PointwiseMetrics, can
from training.report import PER_USER_FILE, write_report
from training.scoring import ArtifactScorer
from training.split import SplitIndex, train_matrix
from training.train import evaluation_accumulator

log = logging.getLogger(__name__)

# Part of the baseline cache key: cached baseline metrics from before Gini, novelty and ILD are recomputed.
BEYOND_ACCURACY_VERSION = 1
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
    started = time.perf_counter()
    inputs = build_eval_inputs(split, "test", history_length)
    seconds = {"inputs": time.perf_counter() - started}
    beyond = beyond_accuracy(split, artifact.module)
    started = time.perf_counter()
    acc = evaluation_accumulator(artifact.module, inputs, list(cfg.ks), cfg.batch_users, beyond, True)
    metrics = acc.compute()
    seconds["model"] = time.perf_counter() - started
    log.info(
        "evaluate %s: ranked %d items for %d test users in %.1fs",
        train_result.model,
        inputs.n_items,
        inputs.n_users,
        seconds["model"],
    )
    if can(artifact.module, PointwiseMetrics):
        # Rating error (MF), AUC/LogLoss (CTR rankers), off-policy reward (REINFORCE): each model
        # computes its own from the test examples, with the user's history as of each event.
        examples = build_example_set(split, "test", history_length, num_negatives=1, seed=split.seed)
        metrics.update(artifact.module.pointwise_metrics(examples))
    baselines: dict[str, dict[str, float]] = {}
    for name in cfg.baselines:
        started = time.perf_counter()
        baselines[name] = baseline_metrics(name, split, cfg, inputs)
        seconds[name] = time.perf_counter() - started
        log.info("evaluate: baseline %s (fit, or its cache, and ranking) in %.1fs", name, seconds[name])
    per_user = {"users": inputs.users.numpy(), **acc.per_user_values()}
    for name in cfg.baselines:
        for key, values in (baseline_per_user(name, split) or {}).items():
            per_user[f"{name}::{key}"] = values
    save_arrays(run_dir / PER_USER_FILE, per_user)

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
        report_path=write_report(run_dir),
        metrics=metrics,
        baselines=baselines,
        protocol=split.protocol,
        data_version=split.data_version,
        seconds={name: round(value, 3) for name, value in seconds.items()},
    )
    evaluation.save(run_dir / "evaluation.json")
    return evaluation


def seen_included_metrics(run_dir: Path | str, split: Split, cfg: EvaluationConfig) -> dict[str, float]:
    """The run's test ranking metrics with the user's train/valid items left rankable.

    Published sequential benchmarks (e.g. RecBole's leave-one-out tables) rank the whole catalogue
    including items the user already interacted with; ``evaluate_run`` excludes them, as a service
    would. This gives the other convention for comparison; nothing is written.
    """
    artifact = load_model_artifact(Path(run_dir) / "model")
    inputs = build_eval_inputs(
        split, "test", artifact.history_length or DEFAULT_HISTORY_LENGTH, exclude_seen=False
    )
    return evaluation_accumulator(artifact.module, inputs, list(cfg.ks), cfg.batch_users).compute()


class ForeignScorer:
    """Scores a model artifact trained on ANY split in another split's index space.

    Ids are mapped through the two index spaces; the artifact side follows ``training.scoring`` (a
    user the artifact did not train on is scored as unknown, from history, as the service would;
    history items it does not know are dropped). Split items the artifact does not know get -inf: it
    can never recommend them.
    """

    def __init__(self, artifact_dir: Path | str, index: SplitIndex) -> None:
        self.artifact = load_model_artifact(Path(artifact_dir))
        self.scorer = ArtifactScorer(self.artifact)
        self.history_length = self.scorer.history_length
        self.n_items = index.n_items
        self.to_artifact = np.zeros(index.n_items + 1, dtype=np.int64)  # split item -> artifact item
        self.to_artifact[1:] = [self.artifact.item_index.get(str(item), 0) for item in index.item_ids]
        self.split_columns = np.flatnonzero(self.to_artifact)
        self.unknown_items = torch.from_numpy(self.to_artifact == 0)
        self.user_map = self.scorer.user_rows(index.user_ids)  # split user -> artifact user or -1

    def scores(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B, n_items + 1) scores for split user indices and right-aligned split item histories."""
        mapped = self.to_artifact[history[:, -self.history_length :].numpy()]
        own_history = [[i for i in row if i > 0] for row in mapped.tolist()]
        own = self.scorer.scores(self.user_map[users.numpy()], own_history)
        out = torch.full((own.shape[0], self.n_items + 1), -torch.inf)
        out[:, torch.from_numpy(self.split_columns)] = own[
            :, torch.from_numpy(self.to_artifact[self.split_columns])
        ]
        return out

    def trained_pairs(self, users: np.ndarray) -> sp.csr_matrix:
        """(len(users), n_items + 1): 1 where the artifact trained on (user, item), in split indices."""
        art = self.artifact
        rows = self.user_map[users]
        seen = art.seen[np.clip(rows, 0, None)].tocsr()
        seen = sp.diags((rows >= 0).astype(np.float32)) @ seen  # unknown users trained on nothing
        back = sp.csr_matrix(
            (
                np.ones(len(self.split_columns), np.float32),
                (self.to_artifact[self.split_columns], self.split_columns),
            ),
            shape=(art.seen.shape[1], self.n_items + 1),
        )  # artifact item -> split item
        return ((seen @ back) > 0).astype(np.float32).tocsr()


@dataclasses.dataclass(frozen=True)
class SplitJudgement:
    """Champion (and, when needed, candidate) metrics on one test set, and how that test set was made."""

    champion: dict[str, float]
    candidate: dict[str, float] | None  # None: the candidate's recorded metrics stand (same test set)
    withheld_pairs: int  # test (user, item) pairs the champion trained on, withheld from both
    users: int


def judge_on_split(
    champion_dir: Path | str, candidate_dir: Path | str, split: Split, cfg: EvaluationConfig
) -> SplitJudgement:
    """The champion's test metrics on ``split`` (the candidate's split), made comparable with the candidate's.

    Same test users, ground truth and exclusions (train + valid items of ``split``) as the candidate's
    own evaluation. One more rule keeps the comparison fair: test events the champion TRAINED on (it
    was fitted on other data, e.g. a random holdout of an older version) would reward memorisation, so
    those (user, item) pairs are withheld from the test set of both models (removed from the ground
    truth, excluded from the ranking) and the candidate is re-scored on that set too. Without such
    pairs (e.g. a temporal split of appended data) the candidate's recorded metrics stand. On the
    champion's own split this reproduces ``evaluate_run`` exactly.
    """
    index = SplitIndex.load(split)
    champion = ForeignScorer(champion_dir, index)
    candidate = ForeignScorer(candidate_dir, index)
    length = max(champion.history_length, candidate.history_length)
    inputs = build_eval_inputs(split, "test", length)
    # Pairs already excluded (also in this split's train/valid part) can be hit by neither model.
    overlap = inputs.truth.multiply(champion.trained_pairs(inputs.users.numpy())).tocsr()
    overlap = (overlap - overlap.multiply(inputs.exclude > 0)).tocsr()
    overlap.eliminate_zeros()
    withheld = int(overlap.nnz)
    if withheld:
        truth = (inputs.truth - overlap).tocsr()
        truth.eliminate_zeros()
        keep = np.flatnonzero(np.diff(truth.indptr) > 0)
        inputs = EvalInputs(
            users=inputs.users[keep],
            history=inputs.history[keep],
            truth=truth[keep],
            exclude=((inputs.exclude + overlap) > 0).astype(np.float32).tocsr()[keep],
            n_items=inputs.n_items,
        )
    scorers = [champion, candidate] if withheld else [champion]
    results = []
    for scorer in scorers:
        acc = RankingAccumulator(index.n_items, list(cfg.ks))
        for batch in inputs.batches(cfg.batch_users):
            scores = scorer.scores(batch["users"], batch["history"])
            acc.update(scores, batch["truth"], batch["exclude"] | scorer.unknown_items)
        results.append(acc.compute())
    return SplitJudgement(
        champion=results[0],
        candidate=results[1] if withheld else None,
        withheld_pairs=withheld,
        users=inputs.n_users,
    )


def baseline_metrics(
    name: str,
    split: Split,
    cfg: EvaluationConfig,
    inputs: EvalInputs | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Test metrics of baseline ``name`` on ``split``, cached in ``split.dir/baselines/<name>.json``.

    The cache key holds the fingerprint of the baseline's source (``baseline_code``), so numbers a
    since-changed baseline produced are recomputed rather than compared against.
    """
    cache = Path(split.dir) / "baselines" / f"{name}.json"
    key = {
        "ks": sorted(cfg.ks),
        "params": params or {},
        "code": baseline_code(name),
        "metrics": BEYOND_ACCURACY_VERSION,
    }
    if cache.exists() and per_user_cache(split, name).exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    index = SplitIndex.load(split)
    module = build_model(name, index.n_users, index.n_items, **(params or {})).fit(train_matrix(split))
    inputs = inputs if inputs is not None else build_eval_inputs(split, "test", DEFAULT_HISTORY_LENGTH)
    acc = evaluation_accumulator(
        module, inputs, list(cfg.ks), cfg.batch_users, beyond_accuracy(split, module), keep_per_user=True
    )
    metrics = acc.compute()
    save_arrays(per_user_cache(split, name), {"users": inputs.users.numpy(), **acc.per_user_values()})
    atomic_write_json(cache, {"key": key, "model": name, "n_users": inputs.n_users, "metrics": metrics})
    return metrics


def per_user_cache(split: Split, name: str) -> Path:
    return Path(split.dir) / "baselines" / f"{name}.users.npz"


def baseline_per_user(name: str, split: Split) -> dict[str, np.ndarray] | None:
    """Baseline ``name``'s cached per-user values on ``split`` (``users`` + one array per metric), if any."""
    path = per_user_cache(split, name)
    return load_arrays(path) if path.exists() else None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez_compressed`` through a temporary sibling and an atomic rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def beyond_accuracy(split: Split, module: object) -> BeyondAccuracy:
    """Novelty and intra-list diversity of ``module`` on ``split``: train item counts, the items'
    attribute multi-hot (when the data has categorical or list item fields), and the model's own item
    embeddings when it declares ``EmbedsItems``."""
    vectors: dict[str, ItemVectors] = {}
    # Rows built per ranked list: a big catalogue with a big vocabulary has no room for the whole matrix.
    genres = attributes_for(split).items.multi_hot_rows()
    if genres.shape[1] and genres.any():
        vectors["attributes"] = genres
    if can(module, EmbedsItems):
        with torch.no_grad():
            vectors["embeddings"] = module.item_embeddings().detach().float().cpu()  # type: ignore[attr-defined]
    return BeyondAccuracy.from_train_matrix(train_matrix(split), vectors)


def baseline_code(name: str) -> str:
    """A fingerprint of the source module that defines model ``name`` (part of the baseline cache key)."""
    module = importlib.import_module(get_spec(name).factory_path.partition(":")[0])
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]


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
