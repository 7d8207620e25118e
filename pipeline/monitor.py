"""The scheduled drift check of the promoted model (the ``recsys_drift_monitor`` DAG's logic)."""

from __future__ import annotations

import json
import logging
from typing import Any

from pipeline import stages
from pipeline.summary import latest_completed_runs

log = logging.getLogger(__name__)


def check_champion_drift(
    overrides: dict[str, Any] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Re-read the newest data and run the drift checks for the champion's latest completed run.

    Ingest, validation, features and split are content-addressed, so unchanged data costs little.
    Returns ``{"model", "drift_detected", "drift_manifest", "reasons"}``; no champion -> no drift.
    """
    _, layout = stages.context(overrides)
    if not layout.champion.is_file():
        log.info("no champion promoted yet: nothing to monitor")
        return {"model": None, "drift_detected": False, "drift_manifest": "", "reasons": []}
    model = json.loads(layout.champion.read_text())["model"]
    runs = latest_completed_runs(layout)
    if model not in runs:
        return {
            "model": model,
            "drift_detected": False,
            "drift_manifest": "",
            "reasons": ["no completed run"],
        }
    run_id = f"monitor-{run_id or stages.new_run_id()}"
    monitor_model = f"{model}-monitor"
    staging = stages.ingest(monitor_model, run_id, overrides)
    snapshot = stages.validate(monitor_model, run_id, staging, overrides)
    feature_set = stages.features(monitor_model, run_id, snapshot, overrides)
    split_manifest = stages.split(monitor_model, run_id, feature_set, overrides)
    manifest = stages.drift(monitor_model, run_id, split_manifest, str(runs[model] / "train.json"), overrides)
    result = json.loads(open(manifest).read())
    return {
        "model": model,
        "drift_detected": bool(result.get("drift_detected")),
        "drift_manifest": manifest,
        "reasons": result.get("reasons", []),
    }
