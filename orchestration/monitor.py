"""The scheduled drift check of the promoted model (the ``recsys_drift_monitor`` DAG's logic)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from orchestration import stages
from orchestration.flow import DATA_STAGES, run_stages
from pipeline.run_index import RunIndex

log = logging.getLogger(__name__)


def check_champion_drift(
    overrides: dict[str, Any] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Re-read the newest data and run the drift checks for the deployment's champion.

    Ingest, validation, features and split are content-addressed, so unchanged data costs little.
    Returns ``{"model", "drift_detected", "drift_manifest", "reasons", "verdict", "action"}``; no
    champion -> no drift.
    """
    cfg, layout = stages.context(overrides)
    champion = RunIndex.for_layout(layout, cfg.run_index.url).champion(cfg.deployment)
    if champion is None:
        log.info("deployment %r has no champion yet: nothing to monitor", cfg.deployment)
        return {"model": None, "drift_detected": False, "drift_manifest": "", "reasons": []}
    model = champion.model
    train_manifest = layout.home / "runs" / champion.run_uid / "train.json"
    if not train_manifest.is_file():
        return {
            "model": model,
            "drift_detected": False,
            "drift_manifest": "",
            "reasons": [f"the champion's run directory is gone ({train_manifest.parent})"],
        }
    run_id = f"monitor-{run_id or stages.new_run_id()}"
    monitor_model = f"{model}-monitor"
    # The newest data through the declared data stages, then drift of the champion's trained model.
    outputs = run_stages(
        monitor_model,
        run_id,
        overrides,
        names=(*DATA_STAGES, "drift"),
        outputs={"train": str(train_manifest)},
    )
    manifest = outputs["drift"]
    result = json.loads(open(manifest).read())
    # The online logs, read once: what was served, and what users did after.
    from ingestion.event_log import open_event_log
    from serving.served_log import read_served, served_store

    served_log = read_served(served_store(layout))
    events = open_event_log(layout).read()
    online = publish_served_quality(layout.evidently_workspace, served_log, events, cfg.monitoring)
    answers = served_prediction_check(layout, served_log, cfg.monitoring, champion, Path(manifest).parent)
    result["served_prediction_drift"] = answers
    if answers.get("drifted"):
        _retrain_for(
            result,
            answers["reason"],
            f"served prediction drift in {', '.join(answers['columns'])}",
            "retrain on recent data (requested); what the service serves changed",
        )
    served = served_quality_check(served_log, events, cfg.monitoring, champion.model_tag)
    if served:  # the lists users were shown got worse: retrain, whatever the data windows say
        _retrain_for(
            result,
            served,
            "served quality dropped",
            "retrain on recent data (requested); the served lists are followed less often",
        )
    return {
        "model": model,
        "drift_detected": bool(result.get("drift_detected")),
        "drift_manifest": manifest,
        "reasons": result.get("reasons", []),
        "verdict": result.get("verdict", ""),
        "action": result.get("action", ""),
        "online_quality": online,
    }


def _retrain_for(result: dict[str, Any], reason: str, verdict: str, action: str) -> None:
    """Add a reason to retrain to the drift ``result``: its verdict extended, its action replaced."""
    result["reasons"] = [*result.get("reasons", []), reason]
    result["verdict"] = f"{result['verdict']}; {verdict}" if result.get("drift_detected") else verdict
    result["drift_detected"] = True
    result["action"] = action


def served_prediction_check(
    layout: Any, served_log: Any, cfg: Any, champion: Any, out_dir: Path
) -> dict[str, Any]:
    """Prediction drift of the champion's logged answers (``monitoring.served_drift``), its report saved
    beside the monitor's drift report; ``{"measured": False, "why": ...}`` with too few answers."""
    import numpy as np

    from monitoring.reports import save_report
    from monitoring.served_drift import served_prediction_drift

    model_dir = layout.home / "runs" / champion.run_uid / "model"
    item_ids = json.loads((model_dir / "item_ids.json").read_text())
    counts = np.load(model_dir / "popularity.npy")[1:]  # row 0 is the padding item
    report = served_prediction_drift(
        served_log,
        champion.model_tag,
        dict(zip(item_ids, counts.tolist(), strict=True)),
        cfg.served_window,
        cfg.drift_share_threshold,
        {"model_tag": champion.model_tag, "report": "served_prediction_drift"},
        ["recforge", "served-prediction-drift", champion.model],
    )
    if report is None:
        return {
            "measured": False,
            "why": f"fewer than 2 x {cfg.served_window} logged answers of {champion.model_tag}",
        }
    html, report_json = save_report(report.snapshot, out_dir, "served_prediction_drift")
    return {
        "measured": True,
        "drifted": report.share > cfg.drift_share_threshold,
        "share": report.share,
        "columns": report.drifted,
        "html": str(html),
        "json": str(report_json),
        "reason": f"served prediction drift: {report.share:.2f} of {len(report.columns)} columns of the served "
        f"answers drifted (> {cfg.drift_share_threshold:.2f}): {', '.join(report.drifted)}",
    }


def served_quality_check(served_log: Any, events: Any, cfg: Any, model_tag: str) -> str | None:
    """A reason to retrain when the champion's served lists got worse (``served_quality_drop``)."""
    from datetime import timedelta

    from monitoring.online_quality import online_quality, served_quality_drop

    horizon = timedelta(hours=cfg.served_quality_horizon_hours)
    quality = online_quality(served_log, events, cfg.served_quality_k, horizon)
    if quality.empty:
        return None
    return served_quality_drop(quality, model_tag, cfg.max_served_quality_drop, cfg.min_served_lists)


def publish_served_quality(workspace: Path, served_log: Any, events: Any, cfg: Any) -> dict[str, Any]:
    """Refresh the online-quality runs and dashboard in the Evidently workspace (served lists judged by
    the events that followed). A failure is logged and returned, not raised: the drift verdict stands."""
    from datetime import timedelta

    from monitoring.online_quality import publish_online_quality

    try:
        return publish_online_quality(
            served_log,
            events,
            workspace,
            cfg.served_quality_k,
            timedelta(hours=cfg.served_quality_horizon_hours),
        )
    except Exception as exc:  # noqa: BLE001 - the dashboard is a view; the drift decision must not wait on it
        log.warning("online quality not published to %s: %s", workspace, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
