"""The pipeline's stages as functions of manifest paths: what DAG tasks and the CLI call.

Each function loads its inputs' manifests, calls the stage's plain-Python implementation, saves the
result's manifest under the run directory and returns that path (a string, so it fits in XCom).
Every stage of a run takes its settings from the run's ``run_config.json`` (written by the first
stage that runs, see ``orchestration.runs``), so a retried task uses the settings the run started with.
Heavy libraries are imported inside the functions: the DAG processor imports this module's callers
on every parse and must stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestration.runs import ensure_run_config, pipeline_config
from pipeline.artifacts import (
    Evaluation,
    FeatureSet,
    GateDecision,
    RunConfig,
    RunRecord,
    Snapshot,
    Split,
    TrainResult,
    atomic_write_json,
)
from pipeline.config import PipelineConfig, load_config
from pipeline.layout import Layout
from pipeline.run_index import RunIndex, now_iso

log = logging.getLogger(__name__)

STAGES = (
    "ingest",
    "validate",
    "features",
    "split",
    "train",
    "evaluate",
    "gate",
    "package",
    "promote",
    "drift",
    "finish",
)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep directory names portable."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or new_run_id()


def context(overrides: dict[str, Any] | None = None) -> tuple[PipelineConfig, Layout]:
    """The current configuration (YAML + overrides) and its layout: for work outside a run."""
    cfg = load_config(overrides=overrides)
    return cfg, Layout(cfg.home_dir)


def _run_dir(layout: Layout, model: str, run_id: str) -> Path:
    path = layout.run(model, safe_run_id(run_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a stage of one run works with: the run's own settings, where they live, its index."""

    cfg: PipelineConfig
    layout: Layout
    run_config: RunConfig
    run_dir: Path

    @property
    def run_uid(self) -> str:
        return f"{self.run_config.model}/{self.run_dir.name}"

    def index(self) -> RunIndex:
        return RunIndex.for_layout(self.layout, self.cfg.run_index.url)


def run_context(
    model: str, run_id: str, overrides: dict[str, Any] | None = None, hparams: dict[str, Any] | None = None
) -> RunContext:
    """The run's context; the first stage of a run resolves and writes its ``run_config.json``."""
    fresh, layout = context(overrides)
    run_dir = _run_dir(layout, model, run_id)
    run_config = ensure_run_config(run_dir, model, safe_run_id(run_id), fresh, hparams)
    return RunContext(pipeline_config(run_config), layout, run_config, run_dir)


def timed(stage: Callable[..., str]) -> Callable[..., str]:
    """Record the stage's wall time in ``<run dir>/timings.json`` (the demo benchmark reads it)."""

    @functools.wraps(stage)
    def wrapper(model: str, run_id: str, *args: Any, **kwargs: Any) -> str:
        started = time.perf_counter()
        result = stage(model, run_id, *args, **kwargs)
        overrides = inspect.signature(stage).bind(model, run_id, *args, **kwargs).arguments.get("overrides")
        _, layout = context(overrides)
        path = _run_dir(layout, model, run_id) / "timings.json"
        timings = json.loads(path.read_text()) if path.is_file() else {}
        timings[stage.__name__] = round(time.perf_counter() - started, 2)
        atomic_write_json(path, timings)
        return result

    return wrapper


@timed
def ingest(
    model: str, run_id: str, overrides: dict[str, Any] | None = None, hparams: dict[str, Any] | None = None
) -> str:
    from ingestion.ingest import ingest as ingest_source

    run = run_context(model, run_id, overrides, hparams)
    return str(ingest_source(run.cfg.source, run.layout, f"{model}-{run.run_dir.name}"))


@timed
def validate(model: str, run_id: str, staging: str, overrides: dict[str, Any] | None = None) -> str:
    from ingestion.validate import validate as validate_staging

    run = run_context(model, run_id, overrides)
    snapshot = validate_staging(
        Path(staging), run.cfg.validation, run.layout, run.cfg.source.name, schema=run.cfg.source.data_schema
    )
    return str(snapshot.save(run.run_dir / "snapshot.json"))


@timed
def features(model: str, run_id: str, snapshot: str, overrides: dict[str, Any] | None = None) -> str:
    from features.store import build_features

    run = run_context(model, run_id, overrides)
    feature_set = build_features(Snapshot.load(snapshot), run.cfg.features, run.layout)
    return str(feature_set.save(run.run_dir / "features.json"))


@timed
def split(model: str, run_id: str, feature_set: str, overrides: dict[str, Any] | None = None) -> str:
    from training.split import make_split

    run = run_context(model, run_id, overrides)
    result = make_split(FeatureSet.load(feature_set), run.cfg.split, run.layout)
    return str(result.save(run.run_dir / "split.json"))


@timed
def train(
    model: str,
    run_id: str,
    split_manifest: str,
    overrides: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> str:
    """Train the model; from here on the run is a record of the run index."""
    from training.train import train_model

    run = run_context(model, run_id, overrides, hparams)
    split_result = Split.load(split_manifest)
    _register(run, split_result)
    result = train_model(model, split_result, run.run_config.hparams, run.cfg.trainer, run.run_dir)
    run.index().update_run(run.run_uid, artifact_dir=str(result.run_dir / "model"))
    return str(result.save(run.run_dir / "train.json"))


def _register(run: RunContext, split_result: Split) -> None:
    rc = run.run_config
    run.index().save_run(
        RunRecord(
            run_uid=run.run_uid,
            model=rc.model,
            run_id=rc.run_id,
            deployment=rc.deployment,
            status="running",
            started_at=rc.created_at,
            run_dir=str(run.run_dir),
            config_hash=rc.config_hash,
            code_commit=rc.code_commit,
            protocol=split_result.protocol,
            seed=split_result.seed,
            eligible=rc.eligible,
            eligibility=rc.eligibility,
            data_version=split_result.data_version,
            split_dir=str(split_result.dir),
            feature_namespace=split_result.feature_namespace,
        )
    )


@timed
def evaluate(
    model: str, run_id: str, train_manifest: str, split_manifest: str, overrides: dict[str, Any] | None = None
) -> str:
    import torch

    from training.evaluate import evaluate_run

    run = run_context(model, run_id, overrides)
    torch.set_num_threads(run.cfg.trainer.num_threads)  # ranking the catalogue: the training's CPU budget
    evaluation = evaluate_run(
        TrainResult.load(train_manifest), Split.load(split_manifest), run.cfg.evaluation
    )
    run.index().update_run(run.run_uid, metrics=evaluation.metrics, baselines=evaluation.baselines)
    return str(evaluation.save(run.run_dir / "evaluation.json"))


@timed
def gate(
    model: str, run_id: str, evaluation: str, split_manifest: str, overrides: dict[str, Any] | None = None
) -> str:
    """Decide: eligible for the deployment, beats Popularity, beats the champion on this run's split."""
    from training.gate import decide

    run = run_context(model, run_id, overrides)
    index = run.index()
    decision = decide(
        Evaluation.load(evaluation),
        Split.load(split_manifest),
        run.run_config,
        run.cfg,
        index.champion(run.run_config.deployment),
        run.run_dir / "model",
    )
    log.info("gate for %s: %s", model, decision.headline())
    index.update_run(run.run_uid, gate=decision.to_dict())
    return str(decision.save(run.run_dir / "gate.json"))


@timed
def package(
    model: str,
    run_id: str,
    train_manifest: str,
    evaluation: str,
    decision: str,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Store the candidate as a BentoML model (every run); build the service Bento when it passed the gate."""
    from serving.package import package_model

    run = run_context(model, run_id, overrides)
    packaged = package_model(
        TrainResult.load(train_manifest),
        Evaluation.load(evaluation),
        GateDecision.load(decision),
        run.layout,
        run.cfg.gate.build_bento,
        ann_min_items=run.cfg.serving.ann_min_items,
    )
    run.index().update_run(run.run_uid, bento_tag=packaged.bento_tag, gate=packaged.to_dict())
    return str(packaged.save(run.run_dir / "package.json"))


@timed
def promote(model: str, run_id: str, decision: str, overrides: dict[str, Any] | None = None) -> str:
    """Make a candidate that passed the gate its deployment's champion (compare-and-swap in the run index).

    Returns the path of ``promotion.json``: the final decision, which says ``promoted=False`` (and why)
    when the champion changed after the gate judged, or when the gate rejected the run.
    """
    from serving.package import promote_candidate

    run = run_context(model, run_id, overrides)
    packaged = GateDecision.load(decision)
    index = run.index()
    record = index.run(run.run_uid)
    if record is None:
        raise RuntimeError(f"run {run.run_uid} is not in the run index {index.describe()}; was it trained?")
    final = promote_candidate(packaged, record, run.layout, index) if packaged.promoted else packaged
    index.update_run(run.run_uid, gate=final.to_dict(), promoted=final.promoted)
    log.info("%s", final.headline())
    return str(final.save(run.run_dir / "promotion.json"))


@timed
def drift(
    model: str, run_id: str, split_manifest: str, train_manifest: str, overrides: dict[str, Any] | None = None
) -> str:
    from monitoring.drift import run_drift

    run = run_context(model, run_id, overrides)
    result = run_drift(
        Split.load(split_manifest),
        TrainResult.load(train_manifest).run_dir / "model",
        run.cfg.monitoring,
        run.run_dir / "drift",
        run.layout.evidently_workspace,
        f"recforge-{model}",
    )
    return str(result.save(run.run_dir / "drift.json"))


def run_all(
    model: str,
    run_id: str | None = None,
    overrides: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> tuple[Path, GateDecision]:
    """Run every stage of ``orchestration.flow.MODEL_PIPELINE`` in-process (the CLI path; Airflow runs the
    same declaration as tasks).

    Returns the path of the refreshed summary.json and the run's final gate decision. A failure marks
    the run ``failed`` in the run index and is raised; the deployment's champion is untouched.
    """
    from orchestration.flow import run_stages

    run_id = run_id or new_run_id()
    try:
        outputs = run_stages(model, run_id, overrides, hparams)
    except BaseException as exc:
        mark_failed(model, run_id, f"{type(exc).__name__}: {exc}", overrides)
        raise
    return Path(outputs["finish"]), GateDecision.load(outputs["promote"])


def mark_failed(model: str, run_id: str, error: str, overrides: dict[str, Any] | None = None) -> None:
    """Record a failed run in the run index (when it got far enough to be there); never raises."""
    try:
        run = run_context(model, run_id, overrides)
        index = run.index()
        if index.run(run.run_uid) is not None:
            index.update_run(run.run_uid, status="failed", finished_at=now_iso(), error=error[:2000])
    except Exception:  # noqa: BLE001 - reporting a failure must not hide the failure itself
        log.exception("could not record the failure of %s/%s in the run index", model, run_id)


def finish(model: str, run_id: str, overrides: dict[str, Any] | None = None) -> str:
    """Mark the run complete; refresh its report.html (now with the drift links) and summary.json +
    leaderboard.md; returns the summary path."""
    from orchestration.summary import write_summary
    from training.report import write_report

    run = run_context(model, run_id, overrides)
    if (run.run_dir / "metrics.json").exists():
        write_report(run.run_dir)
    atomic_write_json(
        run.run_dir / "completed.json", {"model": model, "run_id": run_id, "at": datetime.now(UTC)}
    )
    index = run.index()
    if index.run(run.run_uid) is not None:
        index.update_run(run.run_uid, status="completed", finished_at=now_iso())
    return str(write_summary(run.layout, run.cfg))
