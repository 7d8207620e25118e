"""The model pipeline, declared once: its stages, what each takes, how Airflow runs it.

``MODEL_PIPELINE`` is the ordered declaration. Everything that runs stages is built from it:
``run_stages`` runs it (or a part) in-process, for the CLI (``orchestration.stages.run_all``), the drift
monitor and the leaderboard; ``orchestration.dag_tasks.stage_tasks`` turns it into Airflow tasks for the
``recsys_<model>`` DAGs, and the tuning DAGs take its ``DATA_STAGES``. The model is always passed in
(by closure in the DAGs), never parsed back out of a DAG id.

Each stage is a function of ``orchestration.stages`` with the signature
``stage(model, run_id, *input_paths, overrides=None[, hparams=None]) -> output path``, imported on
first use so that parsing the DAGs stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


def skip_unless_promoted(output: str) -> str | None:
    """The reason to mark ``promote`` skipped (the run did not become champion), or None."""
    from pipeline.artifacts import GateDecision

    decision = GateDecision.load(output)
    return None if decision.promoted else decision.headline()


@dataclass(frozen=True)
class Stage:
    name: str
    doc: str
    inputs: tuple[str, ...] = ()  # earlier stages whose output paths it takes, in this order
    after: tuple[str, ...] = ()  # earlier stages it must follow without taking their output
    retries: int = 0  # Airflow retries (stages that read or write stores)
    takes_hparams: bool = False  # gets the model hyperparameter overrides of the run
    skip_reason: Callable[[str], str | None] | None = None  # Airflow: mark the task skipped when set
    runs_after_skips: bool = False  # Airflow: run even when an upstream task was skipped

    @property
    def function(self) -> Callable[..., str]:
        return getattr(importlib.import_module("orchestration.stages"), self.name)

    def run(
        self,
        model: str,
        run_id: str,
        outputs: dict[str, str],
        overrides: dict[str, Any] | None = None,
        hparams: dict[str, Any] | None = None,
    ) -> str:
        """Run the stage on the outputs of the stages before it."""
        extra = {"hparams": hparams} if self.takes_hparams else {}
        return self.function(model, run_id, *(outputs[i] for i in self.inputs), overrides=overrides, **extra)


MODEL_PIPELINE: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "Write the run's resolved config (run_config.json, read by every later task); read the configured "
        "source into staging Parquet (strings + provenance).",
        retries=2,
        takes_hparams=True,
    ),
    Stage(
        "validate",
        "Parse types (attributes by the schema), ranges, duplicates, unknown entities; quarantine bad "
        "rows and values; content-addressed snapshot.",
        inputs=("ingest",),
    ),
    Stage(
        "features",
        "Feast apply + materialise in the data version's namespace; training examples via "
        "get_historical_features (point-in-time).",
        inputs=("validate",),
        retries=2,
    ),
    Stage(
        "split",
        "Split by the run's protocol (temporal / leave_last_out / random_holdout), shared by every model.",
        inputs=("features",),
    ),
    Stage(
        "train",
        "Train with Lightning (or fit in closed form); early stopping on validation NDCG@10.",
        inputs=("split",),
        takes_hparams=True,
    ),  # fmt: skip
    Stage(
        "evaluate",
        "Full-ranking evaluation against the baselines on the same split.",
        inputs=("train", "split"),
    ),
    Stage(
        "gate",
        "Decide: the run matches its deployment's key, beats Popularity by the margin and beats the "
        "champion (re-scored on this split when it was judged on other data).",
        inputs=("evaluate", "split"),
    ),
    Stage(
        "package",
        "Save the BentoML model (every run); build the service Bento when the gate passed it.",
        inputs=("train", "evaluate", "gate"),
    ),
    Stage(
        "promote",
        "Make the candidate its deployment's champion (atomic swap in the run index; the running service "
        "follows). Skipped when it was not promoted: the run note says why.",
        inputs=("package",),
        skip_reason=skip_unless_promoted,
    ),
    Stage(
        "drift",
        "Evidently data, prediction and ranking-quality drift: HTML + JSON + workspace.",
        inputs=("split", "train"),
    ),
    Stage(
        "finish",
        "Mark the run complete; refresh summary.json and the leaderboard.",
        after=("promote", "drift"),
        runs_after_skips=True,
    ),
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in MODEL_PIPELINE}
DATA_STAGES: tuple[str, ...] = ("ingest", "validate", "features", "split")


def run_stages(
    model: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
    names: Iterable[str] | None = None,
    outputs: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run ``names`` (default: every stage) in declaration order; returns every stage's output path.

    ``outputs`` holds the outputs of stages already run (e.g. a monitor reusing a trained model).
    """
    wanted = set(names) if names is not None else set(STAGES)
    outputs = dict(outputs or {})
    for stage in MODEL_PIPELINE:
        if stage.name in wanted:
            outputs[stage.name] = stage.run(model, run_id, outputs, overrides, hparams)
    return outputs
