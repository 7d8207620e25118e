"""Optuna's TPE sampler as the tuning stage's sequential search: the space, the persisted study, pruning.

The grid of ``orchestration.tuning`` trains a fixed list of candidates. The TPE search instead asks a
persisted Optuna study for trials in *rounds* (``tuning.rounds`` of the pipeline config): each round asks
for a share of the trial budget, trains those trials in parallel (one mapped Airflow task each), and
reports their validation NDCG@10 back before the next round asks, so later rounds sample where earlier
ones scored well (``constant_liar`` keeps the trials of one round apart from each other). Only
validation data reaches the study: the objective is the best validation NDCG@10 of a trial's training
(its early-stopping score), and the test part is read once, by the winner, in ``evaluate_winner``.

Pruning: a training reports its validation NDCG@10 to the study after every epoch
(``PruneOnValidation``); once the study has finished trials to compare with, a trial whose curve is
below the median of theirs at the same epoch stops early and is recorded as pruned (Optuna's
``MedianPruner``). A pruned trial is never the winner.

The study lives in SQLite next to the tuning run (``study.db``), or in the database that
``RECFORGE_TUNING_STORAGE`` names (an SQLAlchemy URL, e.g. the production profile's PostgreSQL), so a
search survives its workers, can be inspected with Optuna's own tools (``optuna-dashboard``), and each
task process reopens it by name.

The space is the model YAML's ``search_space:`` when present: hyperparameter -> a list of values
(categorical) or ``{low, high}`` with optional ``log: true`` / ``step`` (a float range, or an integer
range when both bounds are integers); else its ``tuning_grid:`` lists as categorical choices.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

STORAGE_ENV = "RECFORGE_TUNING_STORAGE"
MONITOR = "valid/ndcg@10"  # training.models.base.VALID_MONITOR, not imported: torch-free at DAG parse time

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise; ours log the result


def search_space(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """Hyperparameter -> Optuna distribution, from a ``search_space`` / ``tuning_grid`` mapping."""
    distributions: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"search space {name!r}: an empty list of values")
            distributions[name] = CategoricalDistribution(spec)
        elif isinstance(spec, dict) and {"low", "high"} <= set(spec):
            unknown = set(spec) - {"low", "high", "log", "step"}
            if unknown:
                raise ValueError(
                    f"search space {name!r}: unknown keys {sorted(unknown)} (low, high, log, step)"
                )
            low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
            if not low < high:
                raise ValueError(f"search space {name!r}: low {low} must be below high {high}")
            if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
                distributions[name] = IntDistribution(low, high, log=log, step=int(step or 1))
            else:
                distributions[name] = FloatDistribution(float(low), float(high), log=log, step=step)
        else:
            raise ValueError(
                f"search space {name!r}: expected a list of values or {{low, high[, log, step]}}, got {spec!r}"
            )
    return distributions


def storage_url(tuning_dir: Path) -> str:
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{Path(tuning_dir).resolve() / 'study.db'}"


def open_storage(tuning_dir: Path) -> optuna.storages.RDBStorage:
    Path(tuning_dir).mkdir(parents=True, exist_ok=True)
    url = storage_url(tuning_dir)
    # Mapped tasks report epochs concurrently; SQLite then waits for its lock instead of failing.
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    )


def open_study(
    name: str, storage: optuna.storages.BaseStorage, seed: int, startup_trials: int
) -> optuna.Study:
    """The run's study (created on first use), with the sampler and pruner every task must agree on.

    The sampler's seed moves with the number of trials already asked, so a round re-opened in a fresh
    process does not repeat the previous round's random draws.
    """
    probe = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    asked = len(probe.trials)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(
            seed=seed + asked, n_startup_trials=startup_trials, constant_liar=True
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=2),
    )


def ask(study: optuna.Study, space: dict[str, BaseDistribution], n: int) -> list[dict[str, Any]]:
    """``n`` new trials as candidates ``{"id": "t03", "trial": 3, "hparams": {...}}``."""
    candidates = []
    for _ in range(n):
        trial = study.ask(space)
        candidates.append(
            {"id": f"t{trial.number:02d}", "trial": trial.number, "hparams": dict(trial.params)}
        )
    return candidates


def tell(study: optuna.Study, trial_number: int, value: float | None, pruned: bool) -> None:
    """Record a finished trial once (a retried task may tell again: the second time is a no-op)."""
    if study.trials[trial_number].state != TrialState.RUNNING:
        return
    if pruned:
        study.tell(trial_number, state=TrialState.PRUNED)
    elif value is None or not math.isfinite(value):
        study.tell(trial_number, state=TrialState.FAIL)
    else:
        study.tell(trial_number, value)


class PruneOnValidation(L.Callback):
    """Reports each epoch's validation NDCG@10 to the trial; stops the training when the pruner says so."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, trial_number: int) -> None:
        study_id = storage.get_study_id_from_name(study.study_name)
        self.trial = optuna.trial.Trial(
            study, storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        )
        self.pruned_at_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(MONITOR)
        if value is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at_epoch = epoch
            trainer.should_stop = True
