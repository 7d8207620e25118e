"""The pipeline's stages as functions of manifest paths: what DAG tasks and the CLI call.

Each function loads its inputs' manifests, calls the stage's plain-Python implementation, saves the
result's manifest under the run directory and returns that path (a string, so it fits in XCom).
Heavy libraries are imported inside the functions: the DAG processor imports this module's callers
on every parse and must stay fast.
"""

from __future__ import annotations

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

from pipeline.artifacts import (
    Evaluation,
    FeatureSet,
    GateDecision,
    Snapshot,
    Split,
    TrainResult,
    atomic_write_json,
)
from pipeline.config import PipelineConfig, load_config, load_model_params
from pipeline.layout import Layout

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
    "drift",
    "finish",
)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep directory names portable."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or new_run_id()


def context(overrides: dict[str, Any] | None = None) -> tuple[PipelineConfig, Layout]:
    cfg = load_config(overrides=overrides)
    return cfg, Layout(cfg.home_dir)


def _run_dir(layout: Layout, model: str, run_id: str) -> Path:
    path = layout.run(model, safe_run_id(run_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


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
def ingest(model: str, run_id: str, overrides: dict[str, Any] | None = None) -> str:
    from ingestion.ingest import ingest as ingest_source

    cfg, layout = context(overrides)
    return str(ingest_source(cfg.source, layout, f"{model}-{safe_run_id(run_id)}"))


@timed
def validate(model: str, run_id: str, staging: str, overrides: dict[str, Any] | None = None) -> str:
    from ingestion.validate import validate as validate_staging

    cfg, layout = context(overrides)
    snapshot = validate_staging(Path(staging), cfg.validation, layout, cfg.source.name)
    return str(snapshot.save(_run_dir(layout, model, run_id) / "snapshot.json"))


@timed
def features(model: str, run_id: str, snapshot: str, overrides: dict[str, Any] | None = None) -> str:
    from features.store import build_features

    cfg, layout = context(overrides)
    feature_set = build_features(Snapshot.load(snapshot), cfg.features, layout)
    return str(feature_set.save(_run_dir(layout, model, run_id) / "features.json"))


@timed
def split(model: str, run_id: str, feature_set: str, overrides: dict[str, Any] | None = None) -> str:
    from training.split import make_split

    cfg, layout = context(overrides)
    result = make_split(FeatureSet.load(feature_set), cfg.split, layout)
    return str(result.save(_run_dir(layout, model, run_id) / "split.json"))


@timed
def train(
    model: str,
    run_id: str,
    split_manifest: str,
    overrides: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> str:
    from training.train import train_model

    cfg, layout = context(overrides)
    run_dir = _run_dir(layout, model, run_id)
    params = load_model_params(model, hparams)
    result = train_model(model, Split.load(split_manifest), params, cfg.trainer, run_dir)
    return str(result.save(run_dir / "train.json"))


@timed
def evaluate(
    model: str, run_id: str, train_manifest: str, split_manifest: str, overrides: dict[str, Any] | None = None
) -> str:
    from training.evaluate import evaluate_run

    cfg, layout = context(overrides)
    evaluation = evaluate_run(TrainResult.load(train_manifest), Split.load(split_manifest), cfg.evaluation)
    return str(evaluation.save(_run_dir(layout, model, run_id) / "evaluation.json"))


@timed
def gate(model: str, run_id: str, evaluation: str, overrides: dict[str, Any] | None = None) -> str:
    from training.gate import decide

    cfg, layout = context(overrides)
    decision = decide(Evaluation.load(evaluation), cfg.gate, layout.champion)
    log.info("gate for %s: %s", model, decision.reason)
    return str(decision.save(_run_dir(layout, model, run_id) / "gate.json"))


@timed
def package(
    model: str,
    run_id: str,
    train_manifest: str,
    evaluation: str,
    decision: str,
    overrides: dict[str, Any] | None = None,
) -> str:
    from serving.package import package_model

    cfg, layout = context(overrides)
    packaged = package_model(
        TrainResult.load(train_manifest),
        Evaluation.load(evaluation),
        GateDecision.load(decision),
        layout,
        cfg.gate.build_bento,
    )
    return str(packaged.save(_run_dir(layout, model, run_id) / "package.json"))


@timed
def drift(
    model: str, run_id: str, split_manifest: str, train_manifest: str, overrides: dict[str, Any] | None = None
) -> str:
    from monitoring.drift import run_drift

    cfg, layout = context(overrides)
    run_dir = _run_dir(layout, model, run_id)
    result = run_drift(
        Split.load(split_manifest),
        TrainResult.load(train_manifest).run_dir / "model",
        cfg.monitoring,
        run_dir / "drift",
        layout.evidently_workspace,
        f"recforge-{model}",
    )
    return str(result.save(run_dir / "drift.json"))


def run_all(
    model: str,
    run_id: str | None = None,
    overrides: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> Path:
    """Run every stage in-process (the CLI path; Airflow runs the same functions as tasks).

    Returns the path of the refreshed summary.json.
    """
    run_id = run_id or new_run_id()
    staging = ingest(model, run_id, overrides)
    snapshot = validate(model, run_id, staging, overrides)
    feature_set = features(model, run_id, snapshot, overrides)
    split_manifest = split(model, run_id, feature_set, overrides)
    train_manifest = train(model, run_id, split_manifest, overrides, hparams)
    evaluation = evaluate(model, run_id, train_manifest, split_manifest, overrides)
    decision = gate(model, run_id, evaluation, overrides)
    package(model, run_id, train_manifest, evaluation, decision, overrides)
    drift(model, run_id, split_manifest, train_manifest, overrides)
    return Path(finish(model, run_id, overrides))


def finish(model: str, run_id: str, overrides: dict[str, Any] | None = None) -> str:
    """Mark the run complete and refresh summary.json + leaderboard.md; returns the summary path."""
    from pipeline.summary import write_summary

    _, layout = context(overrides)
    run_dir = _run_dir(layout, model, run_id)
    atomic_write_json(run_dir / "completed.json", {"model": model, "run_id": run_id, "at": datetime.now(UTC)})
    return str(write_summary(layout))
