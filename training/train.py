"""Train one model on a split: Lightning for learned models, closed-form ``fit`` for baselines.

Writes under ``run_dir``: Lightning checkpoints (``checkpoints/``), the CSV log (``lightning_logs/``),
one JSON line per epoch (``epochs.jsonl``), the model artifact (``model/``, see training/artifact.py)
built from the BEST checkpoint by ``valid/ndcg@10``, and the ``train.json`` TrainResult manifest.
The same code trains on one process or, with ``trainer.devices`` > 1 and a DDP strategy, on several
(docs/scaling.md). Cost figures are measured, not
estimated: wall seconds per training epoch (validation excluded), train interactions per second,
peak resident memory of the process.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from pipeline.artifacts import Split, TrainResult
from pipeline.config import TrainerConfig
from training.artifact import save_model_artifact
from training.attributes import attributes_for
from training.data import build_datamodule, build_eval_inputs
from training.knowledge_graph import knowledge_graph_for
from training.metrics import BeyondAccuracy, RankingAccumulator, never_ranked, ranking_exclusions
from training.models import build_model, get_spec, uses_attributes, uses_knowledge_graph
from training.models.base import VALID_MONITOR
from training.models.capabilities import NeedsTrainMatrix, RanksTopK, ScoresByDotProduct, can
from training.split import SplitIndex, train_matrix
from training.topk import RankableVectors, top_k_of_dot_product

log = logging.getLogger(__name__)


class EpochTimer(Callback):
    """Wall time of each training epoch (the fit loop only, validation not included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class EpochLog(EpochTimer):
    """One INFO line per epoch (train loss, validation metric, seconds) through ``logging``: what a log
    file or an Airflow task log can hold, where a progress bar breaks into one line per refresh.

    With ``path``, the first process also appends each epoch as a JSON line there (``epochs.jsonl``):
    the record ``train_model`` reads back, because a callback's state stays in the worker processes of
    a spawned DDP run and never reaches the process that started it.
    """

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        metrics = trainer.callback_metrics
        loss, valid = metrics.get("train/loss"), metrics.get(VALID_MONITOR)
        if not trainer.is_global_zero:
            return  # DDP: the processes agree on these numbers (synced); one line each is enough
        if self.path is not None:
            record = {
                "epoch": trainer.current_epoch + 1,
                "seconds": round(self.seconds[-1], 4),
                "train_loss": None if loss is None else float(loss),
                "processes": trainer.world_size,
            }
            with self.path.open("a") as out:
                out.write(json.dumps(record) + "\n")
        log.info(
            "%s epoch %d/%d: train loss %s, %s %s, %.1f s",
            type(pl_module).__name__,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            "-" if loss is None else f"{float(loss):.4f}",
            VALID_MONITOR,
            "-" if valid is None else f"{float(valid):.4f}",
            self.seconds[-1],
        )


class ProcessSetup(Callback):
    """What ``train_model`` sets in its own process, set again in every training process: the worker
    processes a DDP launcher spawns start with torch's default threads (every core each, which
    oversubscribes the machine) and with Lightning's logging and warnings as they come."""

    def __init__(self, num_threads: int) -> None:
        self.num_threads = num_threads

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_num_threads(self.num_threads)
        route_lightning_logs()


def read_epoch_log(path: Path) -> list[dict[str, Any]]:
    """The epochs ``EpochLog`` recorded at ``path`` (none when the run stopped before one ended)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_checkpoint_score(checkpoint: ModelCheckpoint, saved: dict[str, Any]) -> float | None:
    """The monitored score of the best checkpoint, from the checkpoint file's own callback state.

    ``checkpoint.best_model_score`` is only set in the process that trained; a spawned DDP run hands
    back the best path but not the score, while the file holds both in any launch mode.
    """
    state = saved.get("callbacks", {}).get(checkpoint.state_key, {})
    score = state.get("best_model_score", checkpoint.best_model_score)
    return None if score is None else float(score)


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# Lightning's info messages that advertise its cloud services ("💡 Tip: ... litlogger / litmodels").
LIGHTNING_ADVERT = "💡 Tip"


class _DropLightningAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_ADVERT)


LIGHTNING_NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # The validation metrics are reduced across DDP processes before they are logged (models/base.py).
    r"It is recommended to use `self.log\('valid/",
)


def route_lightning_logs() -> None:
    """Lightning's log records through the process's logging tree, at their own levels; idempotent.

    Lightning gives its top logger a stderr handler of its own (and, when imported before logging is
    configured, its ``pytorch``/``fabric`` loggers one more, without propagation): Airflow's task runner
    files each line on stderr under ERROR, and a record that also propagates is shown twice. This
    removes those handlers (and adds none), lets the records propagate, and drops Lightning's adverts.
    """
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        rank_zero = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningAdverts) for f in rank_zero.filters):
            rank_zero.addFilter(_DropLightningAdverts())
    # Warnings no user can act on: Lightning's own use of a torch API torch deprecated, and the logging
    # interval on small data (the CSV log keeps per-epoch metrics, which is what is read).
    for message in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=message)


def show_progress_bar() -> bool:
    """Lightning's progress bar only on a terminal; elsewhere ``EpochLog`` lines say the same."""
    return sys.stderr.isatty()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def artifact_meta(split: Split) -> dict[str, Any]:
    return {
        "protocol": split.protocol,
        "data_version": split.data_version,
        "split_dir": str(split.dir),
        "split_seed": split.seed,
    }


def build_for_split(model: str, split: Split, params: dict[str, Any], matrix: Any) -> torch.nn.Module:
    """``model`` as trained on ``split``: built from the split's sizes and the data it declares it is
    built from (attributes, knowledge graph), then given the training matrix if it needs one
    (``NeedsTrainMatrix``: LightGCN's graph, which items have training events)."""
    index = SplitIndex.load(split)
    module = build_model(
        model,
        index.n_users,
        index.n_items,
        attributes_for(split) if uses_attributes(model) else None,
        knowledge_graph_for(split) if uses_knowledge_graph(model) else None,
        **params,
    )
    if can(module, NeedsTrainMatrix):
        module.set_train_matrix(matrix)
    return module


def evaluate_module(
    module: torch.nn.Module,
    inputs: Any,
    ks: list[int],
    batch_users: int,
    beyond: BeyondAccuracy | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of ``module`` on prepared ``EvalInputs`` (with ``beyond``: novelty and
    intra-list diversity too, ``training.metrics``)."""
    return evaluation_accumulator(module, inputs, ks, batch_users, beyond).compute()


# From this catalogue size on, a model that gives its own top-k lists (RanksTopK) is evaluated by them,
# and a dot-product model by lists ranked block by block of the catalogue (training.topk). The lists
# equal dense ranking except among exactly tied scores (they order ties by a fixed rule, where
# torch.topk's order among ties is unspecified), so catalogues below it keep the dense ranking their
# recorded numbers came from; above it, dense (users x catalogue) scores and masks cost more than the
# ranking.
LISTS_MIN_ITEMS = 50_000


def evaluation_accumulator(
    module: torch.nn.Module,
    inputs: Any,
    ks: list[int],
    batch_users: int,
    beyond: BeyondAccuracy | None = None,
    keep_per_user: bool = False,
    lists_min_items: int = LISTS_MIN_ITEMS,
) -> RankingAccumulator:
    """The filled accumulator behind ``evaluate_module`` (``keep_per_user``: with every user's values).

    From a catalogue of ``lists_min_items`` items on, a ``RanksTopK`` model is ranked by its own lists
    and a ``ScoresByDotProduct`` model by ``training.topk.top_k_of_dot_product``, both with the truth
    and exclusions as sparse rows.
    """
    acc = RankingAccumulator(inputs.n_items, ks, beyond, keep_per_user=keep_per_user)
    module.eval()
    if can(module, RanksTopK) and inputs.n_items >= lists_min_items:
        # Its lists come without a score per catalogue item (training.topk): users x catalogue is the
        # cost of dense ranking, not of this model's answer.
        for batch in inputs.batches(batch_users, dense=False):
            top = module.top_k(batch["users"], batch["history"], batch["exclude_rows"], max(ks))
            acc.update_lists(top, batch["truth_rows"])
        return acc
    if can(module, ScoresByDotProduct) and inputs.n_items >= lists_min_items:
        # Every item is still scored, but block by block of the catalogue, each block's scores ranked
        # while in the cache, with the truth and exclusions kept sparse (no (users x catalogue) masks).
        with torch.no_grad():
            rankable = RankableVectors(module.dot_product_items(), never_ranked(module, inputs.untrained))
            for batch in inputs.batches(batch_users, dense=False):
                queries = module.dot_product_queries(batch["users"], batch["history"])
                top = top_k_of_dot_product(queries, rankable, batch["exclude_rows"], max(ks))
                acc.update_lists(top, batch["truth_rows"])
        return acc
    with torch.no_grad():
        # A dot-product model's scores go straight into the accumulator's buffer, masked there: no
        # fresh (users x catalogue) tensor per batch, whose page faults cost more than the product.
        items = module.dot_product_items().float() if can(module, ScoresByDotProduct) else None
        for batch in inputs.batches(batch_users):
            exclude = ranking_exclusions(module, batch)
            if items is None:
                scores = module.full_sort_predict(batch["users"], batch["history"]).float()
                acc.update(scores, batch["truth"], exclude)
                continue
            queries = module.dot_product_queries(batch["users"], batch["history"]).float()
            scores = acc.score_buffer(queries.shape[0], items.shape[0], device=queries.device)
            torch.matmul(queries, items.T, out=scores)
            acc.update(scores, batch["truth"], exclude, scratch=True)
    acc.release_buffer()  # the caller keeps the sums, not a batch of scores (the baselines rank next)
    return acc


def train_model(
    model: str,
    split: Split,
    params: dict[str, Any],
    trainer_cfg: TrainerConfig,
    run_dir: Path,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Train ``model`` with ``params`` on ``split``; save the artifact and ``run_dir/train.json``.

    ``callbacks`` join the trainer's own (checkpoint, early stopping, epoch log), e.g. the tuning
    search's pruning callback; a callback that stops training early leaves the best checkpoint so far.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    route_lightning_logs()
    torch.set_num_threads(trainer_cfg.num_threads)
    L.seed_everything(trainer_cfg.seed, workers=True)
    spec = get_spec(model)
    index = SplitIndex.load(split)
    hparams = dict(params)

    if not spec.trainable:
        return _fit_baseline(model, split, hparams, trainer_cfg, run_dir, index)

    datamodule = build_datamodule(spec.kind, split, hparams, seed=trainer_cfg.seed)
    datamodule.valid_users = trainer_cfg.valid_users
    if datamodule.valid_inputs.n_users == 0:
        raise ValueError(
            f"split {split.dir} has no validation user with a training event: early stopping on "
            f"{VALID_MONITOR} is impossible; use a protocol/shares that leave validation events"
        )
    attributes = attributes_for(split) if uses_attributes(model) else None
    module = build_for_split(model, split, hparams, datamodule.train_matrix)
    # Early stopping ranks the validation users as the evaluation ranks the test users: a dot-product
    # model of a large catalogue block by block (on the CPU; a GPU ranks dense scores fast enough).
    datamodule.sparse_valid = (
        can(module, ScoresByDotProduct)
        and index.n_items >= LISTS_MIN_ITEMS
        and trainer_cfg.accelerator == "cpu"
    )
    epoch_log = run_dir / "epochs.jsonl"
    epoch_log.unlink(missing_ok=True)
    timer = EpochLog(epoch_log)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-{epoch}",
        monitor=VALID_MONITOR,
        mode="max",
        save_last=True,
    )
    stopping = EarlyStopping(monitor=VALID_MONITOR, mode="max", patience=trainer_cfg.patience)
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        max_epochs=trainer_cfg.max_epochs,
        deterministic=trainer_cfg.deterministic,
        callbacks=[checkpoint, stopping, timer, ProcessSetup(trainer_cfg.num_threads), *callbacks],
        logger=CSVLogger(run_dir, name="lightning_logs"),
        enable_progress_bar=show_progress_bar(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)

    best_path = Path(checkpoint.best_model_path)
    saved = torch.load(best_path, map_location="cpu", weights_only=False)
    best = build_for_split(model, split, hparams, datamodule.train_matrix)
    best.load_state_dict(saved["state_dict"])
    best.eval()
    save_model_artifact(
        run_dir / "model",
        model,
        best,
        hparams,
        index.item_ids,
        index.user_ids,
        datamodule.train_matrix,
        meta=artifact_meta(split),
        attributes=attributes,
    )
    epochs = read_epoch_log(epoch_log)
    epoch_seconds = sum(epoch["seconds"] for epoch in epochs) / max(len(epochs), 1)
    best_score = best_checkpoint_score(checkpoint, saved)
    result = TrainResult(
        model=model,
        run_dir=run_dir,
        checkpoint=best_path,
        hparams=hparams,
        epochs=len(epochs),
        epoch_seconds=round(epoch_seconds, 3),
        interactions_per_second=round(datamodule.n_train_interactions / max(epoch_seconds, 1e-9), 1),
        best_valid_ndcg10=best_score if best_score is not None else 0.0,
        peak_rss_mb=round(peak_rss_mb(), 1),
        processes=int(epochs[-1]["processes"]) if epochs else 1,
        valid_users=datamodule.valid_inputs.n_users,
    )
    result.save(run_dir / "train.json")
    log.info(
        "trained %s: %d epoch%s, %.2f s/epoch, best %s %.4f",
        model,
        result.epochs,
        "" if result.epochs == 1 else "s",
        epoch_seconds,
        VALID_MONITOR,
        result.best_valid_ndcg10,
    )
    return result


def _fit_baseline(
    model: str,
    split: Split,
    hparams: dict[str, Any],
    trainer_cfg: TrainerConfig,
    run_dir: Path,
    index: SplitIndex,
) -> TrainResult:
    matrix = train_matrix(split)
    start = time.perf_counter()
    attributes = attributes_for(split) if uses_attributes(model) else None
    module = build_for_split(model, split, hparams, matrix).fit(matrix)
    seconds = time.perf_counter() - start
    valid = build_eval_inputs(
        split,
        "valid",
        int(hparams.get("history_length", 50)),
        max_users=trainer_cfg.valid_users,
        seed=trainer_cfg.seed,
    )
    valid_ndcg = evaluate_module(module, valid, [10], 512)["ndcg@10"] if valid.n_users else 0.0
    artifact_dir = save_model_artifact(
        run_dir / "model",
        model,
        module,
        hparams,
        index.item_ids,
        index.user_ids,
        matrix,
        meta=artifact_meta(split),
        attributes=attributes,
    )
    result = TrainResult(
        model=model,
        run_dir=run_dir,
        checkpoint=artifact_dir / "weights.pt",
        hparams=hparams,
        epochs=0,
        epoch_seconds=round(seconds, 3),
        interactions_per_second=round(matrix.nnz / max(seconds, 1e-9), 1),
        best_valid_ndcg10=float(valid_ndcg),
        peak_rss_mb=round(peak_rss_mb(), 1),
        valid_users=valid.n_users,
    )
    result.save(run_dir / "train.json")
    return result
