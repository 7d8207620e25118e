"""Drift monitoring with Evidently 0.7: data drift, prediction drift and ranking quality on the newest window.

Why three reports: data drift says *the inputs changed*, prediction drift says *what we serve changed*
(popularity, scores and attributes of the recommended items), ranking quality says *whether it still
works* on labelled recent interactions. Any of the three over its threshold sets ``drift_detected``,
which the drift DAG turns into an Asset event that schedules retraining. A monitored column whose
missing values grew (a broken upstream feed) is reported too, but holds retraining back: a model
retrained on the broken column would learn the breakage, so the feed is fixed first.

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
    label_snapshot,
    ranking_report,
    save_report,
)
from monitoring.windows import (
    drift_columns,
    item_descriptions,
    max_history,
    missing_shares,
    prediction_columns,
    ranking_frame,
    recommendations_at_window_end,
    select_windows,
    usable_columns,
    window_bounds,
    window_frames,
)
from pipeline.artifacts import DriftResult, Split
from pipeline.config import MonitoringConfig
from pipeline.schema import DataSchema, load_schema
from training.artifact import load_model_artifact
from training.scoring import ArtifactScorer

__all__ = ["Checks", "Decision", "DriftResult", "decide", "run_drift", "select_windows"]

log = logging.getLogger(__name__)

# What a drifted behaviour column means, for the verdict; attributes are named as the schema names them.
COLUMN_MEANINGS = {
    "rating": "rating",
    "hour_of_day": "hour of day",
    "day_of_week": "day of week",
    "log_item_window_events": "item popularity",
    "new_item": "share of new items",
    "log_user_window_events": "user activity",
    "new_user": "share of new users",
}


@dataclass(frozen=True)
class Checks:
    """What the reports measured, as the decision reads it."""

    data: DriftReport
    prediction: DriftReport
    ranking_measured: bool  # False: no user of the current window is known to the model
    current_ndcg10: float
    # Monitored data columns: threshold of each drift test, and (reference, current) missing shares.
    data_thresholds: dict[str, float]
    missing: dict[str, tuple[float, float]]
    user_columns: frozenset[str] = frozenset()  # the columns that describe users, not items or events


@dataclass(frozen=True)
class Decision:
    """``decide``'s answer: whether to retrain, every reason, and the verdict and action in words."""

    retrain: bool
    reasons: list[str]
    verdict: str  # one sentence
    action: str  # what to do about it
    broken_columns: list[str]


def data_thresholds(columns: list[str], numerical: list[str], cfg: MonitoringConfig) -> dict[str, float]:
    """The drift threshold of each monitored data column: its override, else its type's threshold."""
    return {
        c: cfg.column_drift_thresholds.get(
            c, cfg.num_drift_threshold if c in numerical else cfg.cat_drift_threshold
        )
        for c in columns
    }


def data_drift_check(
    ref_data: pd.DataFrame,
    cur_data: pd.DataFrame,
    schema: DataSchema,
    cfg: MonitoringConfig,
    metadata: dict[str, str],
    tags: list[str],
) -> tuple[DriftReport, dict[str, float], dict[str, tuple[float, float]]]:
    """The data-drift report of two windows' ``data_drift_frame``s with the configured thresholds, the
    threshold of each tested column, and each monitored column's (reference, current) missing share."""
    numerical, categorical = drift_columns(schema)
    usable_num, usable_cat = usable_columns(ref_data, cur_data, numerical, categorical)
    data = column_drift_report(
        ref_data,
        cur_data,
        usable_num,
        usable_cat,
        drift_share=cfg.data_drift_share_threshold,
        metadata=metadata,
        tags=tags,
        num_threshold=cfg.num_drift_threshold,
        cat_threshold=cfg.cat_drift_threshold,
        column_thresholds=cfg.column_drift_thresholds,
    )
    thresholds = data_thresholds(usable_num + usable_cat, usable_num, cfg)
    return data, thresholds, missing_shares(ref_data, cur_data, numerical + categorical)


def decide(checks: Checks, cfg: MonitoringConfig) -> Decision:
    """Reasons to retrain, the verdict and what to do. Thresholds: ``MonitoringConfig``.

    Data drift: more than ``data_drift_share_threshold`` of the monitored columns drifted (each against
    its own threshold). Prediction drift: more than ``drift_share_threshold`` of the recommendation
    columns drifted. Ranking quality: NDCG@10 on the current window below ``min_current_ndcg10`` (NaN
    counts as below), or not measurable at all, which is itself a reason to retrain. A broken feed:
    a monitored column's missing share grew by more than ``missing_share_increase``; it is a reason,
    and it holds retraining back until the feed is fixed (see module doc).
    """
    reasons: list[str] = []
    fired: list[str] = []
    data = checks.data
    if data.drifted and data.share > cfg.data_drift_share_threshold:
        detail = ", ".join(
            f"{c} {data.distances.get(c, math.nan):.3f} >= {checks.data_thresholds.get(c, math.nan):.3f}"
            for c in data.drifted
        )
        reasons.append(f"data drift: {len(data.drifted)} of {len(data.columns)} columns drifted ({detail})")
        fired.append("data")
    if checks.prediction.share > cfg.drift_share_threshold:
        p = checks.prediction
        reasons.append(
            f"prediction drift: {p.share:.2f} of {len(p.columns)} recommendation columns drifted "
            f"(> {cfg.drift_share_threshold:.2f}): {', '.join(p.drifted)}"
        )
        fired.append("prediction")
    if not checks.ranking_measured:
        reasons.append("ranking quality: not measurable, no user of the current window is known to the model")
        fired.append("ranking")
    elif not checks.current_ndcg10 >= cfg.min_current_ndcg10:  # NaN counts as a failure
        reasons.append(
            f"ranking quality: ndcg@10 {checks.current_ndcg10:.4f} on the current window "
            f"< {cfg.min_current_ndcg10:.4f}"
        )
        fired.append("ranking")
    broken = sorted(c for c, (ref, cur) in checks.missing.items() if cur - ref > cfg.missing_share_increase)
    for column in broken:
        ref, cur = checks.missing[column]
        reasons.append(
            f"broken feed: {column} is missing in {cur:.0%} of the current window's events "
            f"({ref:.0%} in the reference; allowed increase {cfg.missing_share_increase:.0%})"
        )
    return Decision(
        retrain=bool(fired) and not broken,
        reasons=reasons,
        verdict=_verdict(checks, fired, broken),
        action=_action(checks, fired, broken),
        broken_columns=broken,
    )


def _meaning(column: str) -> str:
    return COLUMN_MEANINGS.get(column, column)


def _verdict(checks: Checks, fired: list[str], broken: list[str]) -> str:
    parts = []
    if broken:
        parts.append(f"broken upstream column{'s' if len(broken) > 1 else ''}: {', '.join(broken)}")
    if "data" in fired:
        parts.append(f"data drift in {', '.join(_meaning(c) for c in checks.data.drifted)}")
    if "prediction" in fired:
        parts.append(f"prediction drift in {', '.join(checks.prediction.drifted)}")
    if "ranking" in fired:
        parts.append(
            "ranking quality below the floor" if checks.ranking_measured else "ranking not measurable"
        )
    return "; ".join(parts) if parts else "no drift"


def _action(checks: Checks, fired: list[str], broken: list[str]) -> str:
    if broken:
        return (
            f"fix the upstream feed of {', '.join(broken)}; retraining is held back until it is fixed "
            "(a model retrained on it would learn the breakage)"
        )
    if not fired:
        return "nothing to do"
    why = []
    if "data" in fired:
        drifted = set(checks.data.drifted)
        audience = {"new_user", "log_user_window_events"} | set(checks.user_columns)
        if drifted & audience:
            why.append("the audience changed")
        if drifted - audience - {"rating", "hour_of_day", "day_of_week"}:
            why.append("the audience's taste moved")
        if "rating" in drifted:
            why.append("ratings moved (if their scale changed, check the upstream feed first)")
        if drifted & {"hour_of_day", "day_of_week"}:
            why.append("usage times moved")
    if "prediction" in fired:
        why.append("what the model serves changed")
    if "ranking" in fired:
        why.append("the model no longer ranks the newest interactions well")
    return f"{'; '.join(why)}: retrain on recent data (requested)"


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
    windows = select_windows(split, cfg.current_window_share)
    reference, current = windows.reference, windows.current
    log.info("drift windows: reference %d events, current %d events", len(reference), len(current))
    bounds = {"reference": window_bounds(reference), "current": window_bounds(current)}
    metadata = {
        "model": artifact.name,
        "data_version": split.data_version,
        "protocol": split.protocol,
        **{
            f"{name}_window": f"{b[0]} .. {b[1]} ({len(w)} events)"
            for (name, b), w in zip(bounds.items(), (reference, current), strict=True)
        },
    }
    tags = ["recforge", artifact.name, split.data_version]
    # The length the model was trained on (sequential models truncate to it), else the data's longest.
    scorer = ArtifactScorer(artifact, artifact.history_length or max_history(reference, current))
    lap("load")

    ref_data, cur_data = window_frames(windows, schema)
    data, thresholds, missing = data_drift_check(
        ref_data, cur_data, schema, cfg, {**metadata, "report": "data_drift"}, tags
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
        train_interactions = pd.read_parquet(split.train, columns=["user_id", "item_id"])
        ranking_snapshot, ranking = ranking_report(
            ranked, train_interactions, {**metadata, "report": "ranking"}, tags
        )
    ndcg10 = ranking.get("ndcg@10", math.nan)
    lap("ranking")

    checks = Checks(
        data,
        prediction,
        ranking_snapshot is not None,
        ndcg10,
        data_thresholds=thresholds,
        missing=missing,
        user_columns=_user_columns(schema),
    )
    decision = decide(checks, cfg)
    reasons = decision.reasons

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    snapshots = {"data_drift": data.snapshot, "prediction_drift": prediction.snapshot}
    if ranking_snapshot is not None:
        snapshots["ranking"] = ranking_snapshot
    for snap in snapshots.values():
        label_snapshot(
            snap,
            {"verdict": decision.verdict, "action": decision.action, "retrain": str(decision.retrain)},
            [_verdict_tag(decision)],
        )
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
        drift_detected=decision.retrain,
        reasons=reasons,
        model=artifact.name,
        data_version=split.data_version,
        created_at=datetime.now(UTC).isoformat(),
        reference_rows=len(reference),
        current_rows=len(current),
        reference_window=bounds["reference"],
        current_window=bounds["current"],
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
            "num_drift_threshold": cfg.num_drift_threshold,
            "cat_drift_threshold": cfg.cat_drift_threshold,
            "data_drift_share_threshold": cfg.data_drift_share_threshold,
            "missing_share_increase": cfg.missing_share_increase,
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
        verdict=decision.verdict,
        action=decision.action,
        data_drift_distances=data.distances,
        data_drift_thresholds=thresholds,
        missing_shares={c: [ref, cur] for c, (ref, cur) in missing.items()},
        broken_columns=decision.broken_columns,
    )
    result.save(out_dir / "drift.json")
    log.info("drift: %s; %s (retrain=%s)", decision.verdict, decision.action, decision.retrain)
    return result


def _user_columns(schema: DataSchema) -> frozenset[str]:
    return frozenset(schema.user_features)


def _verdict_tag(decision: Decision) -> str:
    """One short tag for the workspace's report list."""
    if decision.broken_columns:
        return "broken-feed"
    return "drift" if decision.retrain else "no-drift"
