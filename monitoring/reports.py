"""The Evidently 0.7 reports of the drift monitor, and where they are kept.

Three reports: data drift (``DataDriftPreset`` on the monitored columns of the two windows),
prediction drift (``DataDriftPreset`` on the recommendations made at each window's end) and ranking
quality (``RecsysPreset`` on the current window). Each is saved as HTML + JSON next to ``drift.json``
and added to the local Evidently workspace (``evidently ui``), one project per model.

Drift methods are fixed by us, not chosen by Evidently from the row count: Evidently's defaults
switch from p-value tests (K-S, chi-square) to distances at 1000 rows, so the same shift would be
judged differently in a small test window and a production one, and p-values flag negligible shifts
at large n (and assume independent rows, which a user's burst of ratings is not). Distances measure
effect size: normed Wasserstein (in reference standard deviations) for numbers, Jensen-Shannon for
categories; a column drifts when its distance reaches its threshold (the data-drift thresholds come
from ``MonitoringConfig``, chosen on stationary data; prediction drift keeps the fixed default).

The verdict is known only after all reports ran, so ``label_snapshot`` adds it to each snapshot's
metadata and tags before it is saved: the workspace's report list then shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Recsys, Report
from evidently.presets import DataDriftPreset, RecsysPreset
from evidently.ui.workspace import Workspace

from pipeline.artifacts import atomic_write_text, file_lock

K = 10
NUM_METHOD, CAT_METHOD, DRIFT_DISTANCE_THRESHOLD = "wasserstein", "jensenshannon", 0.1


@dataclass(frozen=True)
class DriftReport:
    """A column-drift report: the snapshot, the share of drifted columns and their names."""

    snapshot: Any
    columns: list[str]
    share: float
    drifted: list[str]
    distances: dict[str, float]  # column -> drift distance (what the per-column test compared)


def column_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    drift_share: float,
    metadata: dict[str, str],
    tags: list[str],
    num_threshold: float = DRIFT_DISTANCE_THRESHOLD,
    cat_threshold: float = DRIFT_DISTANCE_THRESHOLD,
    column_thresholds: dict[str, float] | None = None,
) -> DriftReport:
    """DataDriftPreset of ``current`` against ``reference`` on the given columns (methods: module doc).

    ``column_thresholds`` override the per-type thresholds for the columns they name.
    """
    columns = numerical + categorical
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=columns,
        drift_share=drift_share,
        num_method=NUM_METHOD,
        cat_method=CAT_METHOD,
        num_threshold=num_threshold,
        cat_threshold=cat_threshold,
        per_column_threshold={c: t for c, t in (column_thresholds or {}).items() if c in columns} or None,
    )
    snapshot = Report([preset], metadata=metadata, tags=tags, include_tests=True).run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    share, drifted, distances = drift_summary(snapshot)
    return DriftReport(snapshot=snapshot, columns=columns, share=share, drifted=drifted, distances=distances)


def ranking_report(
    ranked: pd.DataFrame, train_interactions: pd.DataFrame, metadata: dict[str, str], tags: list[str]
) -> tuple[Any, dict[str, float]]:
    """RecsysPreset at k=10 on rows (user_id, item_id, score, target); (snapshot, metrics at k=10).

    ``train_interactions`` (user_id, item_id) feed the novelty and popularity-bias metrics.
    """
    definition = DataDefinition(
        numerical_columns=["score", "target"],
        categorical_columns=["user_id", "item_id"],
        ranking=[Recsys(user_id="user_id", item_id="item_id", target="target", prediction="score")],
    )
    snapshot = Report([RecsysPreset(k=K)], metadata=metadata, tags=tags, include_tests=True).run(
        Dataset.from_pandas(ranked, data_definition=definition),
        None,
        additional_data={
            "current_train_data": Dataset.from_pandas(
                train_interactions.astype(str),
                data_definition=DataDefinition(categorical_columns=["user_id", "item_id"]),
            )
        },
    )
    return snapshot, ranking_summary(snapshot)


def drift_summary(snapshot: Any) -> tuple[float, list[str], dict[str, float]]:
    """(share of drifted columns, names of drifted columns, {column: distance}) from a DataDriftPreset
    snapshot's dict.

    The drifted names come from the per-column ValueDrift tests (``include_tests=True``), so they agree
    with the report's own verdict per column.
    """
    payload = snapshot.dict()
    share = next(
        float(m["value"]["share"])
        for m in payload["metrics"]
        if m["config"]["type"] == "evidently:metric_v2:DriftedColumnsCount"
    )
    drifted = [
        t["metric_config"]["params"]["column"]
        for t in payload.get("tests", [])
        if t["metric_config"]["params"].get("type") == "evidently:metric_v2:ValueDrift"
        and t["status"] == "FAIL"
    ]
    distances = {
        m["config"]["column"]: float(m["value"])
        for m in payload["metrics"]
        if m["config"]["type"] == "evidently:metric_v2:ValueDrift"
    }
    return share, sorted(drifted), distances


def label_snapshot(snapshot: Any, metadata: dict[str, str], tags: list[str]) -> None:
    """Add metadata and tags to a snapshot that already ran (the verdict: see module doc).

    Evidently 0.7 takes them only when a report runs and has no public setter on the snapshot, whose
    ``_metadata`` / ``_tags`` are what ``save_html``, ``json`` and ``Workspace.add_run`` serialise.
    """
    snapshot._metadata.update(metadata)
    snapshot._tags.extend(tag for tag in tags if tag not in snapshot._tags)


def ranking_summary(snapshot: Any) -> dict[str, float]:
    """Metric values at k=10 (and the single-value ones) from a RecsysPreset snapshot's dict."""
    out: dict[str, float] = {}
    names = {
        "PrecisionTopK": "precision@10",
        "RecallTopK": "recall@10",
        "FBetaTopK": "f1@10",
        "MAP": "map@10",
        "NDCG": "ndcg@10",
        "MRR": "mrr@10",
        "HitRate": "hitrate@10",
        "Personalization": "personalization@10",
        "Novelty": "novelty@10",
        "PopularityBiasMetric": "popularity_bias_arp@10",
        "ScoreDistribution": "score_entropy@10",
    }
    for metric in snapshot.dict()["metrics"]:
        kind = metric["config"]["type"].rsplit(":", 1)[-1]
        if kind not in names:
            continue
        value = metric["value"]
        if isinstance(value, dict | list):
            # DataframeValue {"rank": ..., "value": ...}, one row per cut-off k = 1, 2, ... in order.
            # Take the k-th row by position, not the row labelled rank == k: Evidently 0.7.23 adds 1
            # to an index that is already 1-based for NDCG and MRR (metrics/recsys.py,
            # LegacyTopKCalculation.calculate_value), so their labels run 2..k+1 while Precision,
            # Recall, MAP and HitRate run 1..k. Positions agree for all of them (checked against
            # training.metrics in tests/unit/test_drift.py).
            frame = pd.DataFrame(value)
            if "value" not in frame or len(frame) < K:
                continue
            value = frame["value"].iloc[K - 1]
        try:
            out[names[kind]] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def save_report(snapshot: Any, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.html`` and ``<stem>.json`` of a snapshot in ``out_dir``."""
    html, js = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    snapshot.save_html(str(html))
    atomic_write_text(js, snapshot.json())
    return html, js


def add_to_workspace(
    workspace: Path, project: str, snapshots: dict[str, Any], description: str = ""
) -> tuple[str, dict[str, str]]:
    """Add the snapshots to the local workspace project named ``project`` (found by name, else created).

    Returns (project id, {report name: run id}).
    """
    workspace = Path(workspace)
    with file_lock(workspace / ".recforge.lock"):  # two DAG runs must not both create the project
        ws = Workspace.create(str(workspace))
        found = ws.search_project(project)
        proj = found[0] if found else ws.create_project(project, description=description or None)
        run_ids = {name: str(ws.add_run(proj.id, snap, name=name).id) for name, snap in snapshots.items()}
    return str(proj.id), run_ids
