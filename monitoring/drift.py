"""Drift monitoring with Evidently 0.7: data drift, prediction drift and ranking quality on the newest window.

Why three reports: data drift says *the inputs changed*, prediction drift says *what we serve changed*
(popularity, scores and attributes of the recommended items), ranking quality says *whether it still
works* on labelled recent interactions. Any of the three over its threshold sets ``drift_detected``,
which the drift DAG turns into an Asset event that schedules retraining.

The monitor is three parts: ``monitoring.windows`` (what is compared: the reference and current
windows, the monitored columns, the model's recommendations and rankings, scored by the shared
``training.scoring.ArtifactScorer``), ``monitoring.reports`` (the Evidently reports, saved and added to
the workspace) and this module (the decision, ``decide``, and the entry point, ``run_drift``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.reports import (
    DriftReport,
    add_to_workspace,
    column_drift_report,
    ranking_report,
    save_report,
)
from monitoring.windows import (
    data_drift_frame,
    drift_columns,
    item_descriptions,
    max_history,
    prediction_columns,
    ranking_frame,
    recommendations_at_window_end,
    select_windows,
    usable_columns,
    window_bounds,
)
from pipeline.artifacts import DriftResult, Split
from pipeline.config import MonitoringConfig
from pipeline.schema import load_schema
from training.artifact import load_model_artifact
from training.scoring import ArtifactScorer

__all__ = ["DriftResult", "decide", "run_drift", "select_windows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checks:
    """What the three reports measured, as the decision reads it."""

    data: DriftReport
    prediction: DriftReport
    ranking_measured: bool  # False: no user of the current window is known to the model
    current_ndcg10: float


def decide(checks: Checks, cfg: MonitoringConfig) -> list[str]:
    """Reasons to retrain (empty: no check fired). Thresholds: ``MonitoringConfig``.

    Data or prediction drift: more than ``drift_share_threshold`` of the monitored columns drifted.
    Ranking quality: NDCG@10 on the current window below ``min_current_ndcg10`` (NaN counts as below),
    or not measurable at all, which is itself a reason to retrain.
    """
    reasons: list[str] = []
    for label, report in (("data drift", checks.data), ("prediction drift", checks.prediction)):
        if report.share > cfg.drift_share_threshold:
            what = "columns" if label == "data drift" else "recommendation columns"
            reasons.append(
                f"{label}: {report.share:.2f} of {len(report.columns)} {what} drifted "
                f"(> {cfg.drift_share_threshold:.2f}): {', '.join(report.drifted)}"
            )
    if not checks.ranking_measured:
        reasons.append("ranking quality: not measurable, no user of the current window is known to the model")
    elif not checks.current_ndcg10 >= cfg.min_current_ndcg10:  # NaN counts as a failure
        reasons.append(
            f"ranking quality: ndcg@10 {checks.current_ndcg10:.4f} on the current window "
            f"< {cfg.min_current_ndcg10:.4f}"
        )
    return reasons


def run_drift(
    split: Split, model_dir: Path, cfg: MonitoringConfig, out_dir: Path, workspace: Path, project: str
) -> DriftResult:
    """Run the three Evidently reports, save them (HTML + JSON) and to the workspace, write drift.json."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    mark = t0

    def lap(step: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[step] = round(now - mark, 3)
        mark = now

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = load_model_artifact(model_dir)
    schema = load_schema(split.schema)
    reference, current = select_windows(split, cfg.current_window_share)
    log.info("drift windows: reference %d rows, current %d rows", len(reference), len(current))
    metadata = {"model": artifact.name, "data_version": split.data_version, "protocol": split.protocol}
    tags = ["recforge", artifact.name, split.data_version]
    # The length the model was trained on (sequential models truncate to it), else the data's longest.
    scorer = ArtifactScorer(artifact, artifact.history_length or max_history(reference, current))
    lap("load")

    ref_data, cur_data = data_drift_frame(reference, schema), data_drift_frame(current, schema)
    data = column_drift_report(
        ref_data,
        cur_data,
        *usable_columns(ref_data, cur_data, *drift_columns(schema)),
        drift_share=cfg.drift_share_threshold,
        metadata={**metadata, "report": "data_drift"},
        tags=tags,
    )
    lap("data_drift")

    items = item_descriptions(pd.concat([reference, current], ignore_index=True), scorer, schema)
    ref_recs = recommendations_at_window_end(scorer, reference, cfg.max_users, items)
    cur_recs = recommendations_at_window_end(scorer, current, cfg.max_users, items)
    prediction = column_drift_report(
        ref_recs,
        cur_recs,
        *usable_columns(ref_recs, cur_recs, *prediction_columns(schema)),
        drift_share=cfg.drift_share_threshold,
        metadata={**metadata, "report": "prediction_drift"},
        tags=tags,
    )
    lap("prediction_drift")

    ranked = ranking_frame(scorer, current, cfg.max_users)
    ranking_snapshot: Any = None
    ranking: dict[str, float] = {}
    if not ranked.empty:
        ranking_snapshot, ranking = ranking_report(
            ranked, reference[["user_id", "item_id"]], {**metadata, "report": "ranking"}, tags
        )
    ndcg10 = ranking.get("ndcg@10", math.nan)
    lap("ranking")

    checks = Checks(data, prediction, ranking_snapshot is not None, ndcg10)
    reasons = decide(checks, cfg)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    snapshots = {"data_drift": data.snapshot, "prediction_drift": prediction.snapshot}
    if ranking_snapshot is not None:
        snapshots["ranking"] = ranking_snapshot
    paths: dict[str, tuple[Path | None, Path | None]] = {"ranking": (None, None)}
    paths.update({name: save_report(snap, out_dir, name) for name, snap in snapshots.items()})
    project_id, run_ids = add_to_workspace(
        Path(workspace),
        project,
        {f"{artifact.name} {name} {stamp}": snap for name, snap in snapshots.items()},
        description="recforge drift monitoring: data drift, prediction drift, ranking quality",
    )
    lap("save")
    result = DriftResult(
        drift_detected=bool(reasons),
        reasons=reasons,
        model=artifact.name,
        data_version=split.data_version,
        created_at=datetime.now(UTC).isoformat(),
        reference_rows=len(reference),
        current_rows=len(current),
        reference_window=window_bounds(reference),
        current_window=window_bounds(current),
        data_drift_share=float(data.share),
        data_drifted_columns=data.drifted,
        data_columns=data.columns,
        prediction_drift_share=float(prediction.share),
        prediction_drifted_columns=prediction.drifted,
        prediction_columns=prediction.columns,
        prediction_users={
            "reference": int(ref_recs["user_id"].nunique()),
            "current": int(cur_recs["user_id"].nunique()),
        },
        current_ndcg10=float(ndcg10),
        ranking_metrics=ranking,
        ranking_users=int(ranked["user_id"].nunique()),
        thresholds={
            "drift_share_threshold": cfg.drift_share_threshold,
            "min_current_ndcg10": cfg.min_current_ndcg10,
            "current_window_share": cfg.current_window_share,
            "max_users": float(cfg.max_users),
        },
        out_dir=out_dir,
        data_drift_html=paths["data_drift"][0],
        data_drift_json=paths["data_drift"][1],
        prediction_drift_html=paths["prediction_drift"][0],
        prediction_drift_json=paths["prediction_drift"][1],
        ranking_html=paths["ranking"][0],
        ranking_json=paths["ranking"][1],
        workspace=Path(workspace),
        project=project,
        project_id=project_id,
        run_ids={name.split(" ")[1]: run_id for name, run_id in run_ids.items()},
        seconds=round(time.perf_counter() - t0, 3),
        timings=timings,
    )
    result.save(out_dir / "drift.json")
    log.info("drift: detected=%s %s", result.drift_detected, "; ".join(reasons) or "no check fired")
    return result
