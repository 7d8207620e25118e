"""The drift monitor end to end: a champion exists, `recsys_drift_monitor` runs under Airflow
(`dag.test()`), re-checks drift on the newest data, and when drift is detected its retrain task
emits the model's asset event (which schedules `recsys_<model>`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.airflow_env import airflow_env
from pipeline.layout import Layout
from tests.integration.pipeline_home import make_home

pytestmark = pytest.mark.integration

PROMOTE_BPR = """
import dataclasses, json, sys
from orchestration import stages
from pipeline.artifacts import GateDecision
from pipeline.run_index import RunIndex
from serving.package import promote_candidate
summary, decision = stages.run_all("bpr", run_id="first")
cfg, layout = stages.context()
index = RunIndex.for_layout(layout)
if not decision.promoted:
    # Whatever the tiny slice's gate said, make this candidate the champion through the real promote step.
    forced = dataclasses.replace(decision, promoted=True, reason="promoted by the test to have a champion")
    decision = promote_candidate(forced, index.run("bpr/first"), layout, index)
print(json.dumps(index.champion("default").to_dict()))
"""

RUN_MONITOR = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag("recsys_drift_monitor")
run = dag.test(run_conf=json.loads(sys.argv[1]))
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
from sqlalchemy import select
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
with create_session() as session:
    events = session.scalars(select(AssetModel.uri).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)).all()
print(json.dumps({"state": str(run.state), "tasks": states, "asset_events": list(events)}))
"""


def test_monitor_rechecks_the_champion_and_requests_retraining(tmp_path):
    # A ranking-quality floor no model reaches makes the verdict deterministic: drift is detected.
    home = make_home(
        tmp_path, sample_users=80, max_epochs=1, monitoring={"min_current_ndcg10": 1.0, "served_window": 200}
    )
    env = airflow_env(Layout(tmp_path), base=home)
    promote = subprocess.run(
        [sys.executable, "-c", PROMOTE_BPR], env=env, capture_output=True, text=True, timeout=600
    )
    assert promote.returncode == 0, promote.stderr[-4000:]
    assert json.loads(promote.stdout.strip().splitlines()[-1])["model"] == "bpr"

    migrate = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    report = _run_monitor(env, {})
    assert report["state"] == "success", report

    # The monitor wrote a fresh drift manifest for the champion, below the quality floor.
    manifests = sorted((tmp_path / "runs" / "bpr-monitor").glob("*/drift.json"))
    assert len(manifests) == 1
    drift = json.loads(manifests[0].read_text())
    assert drift["drift_detected"] is True
    assert any(reason.startswith("ranking quality") for reason in drift["reasons"]), drift["reasons"]
    # Two tasks, whatever the number of models: no wall of skipped branches for non-champions.
    assert report["tasks"] == {"check_champion": "success", "request_retrain": "success"}
    assert report["asset_events"] == ["recforge://retrain/bpr"]  # what schedules recsys_bpr, and only it

    # The monitor's own form: thresholds no window reaches -> no drift, nothing emitted.
    calm = {"min_current_ndcg10": 0.0, "data_drift_share_threshold": 0.99, "drift_share_threshold": 1.0,
            "missing_share_increase": 1.0, "current_window_share": 0.2}  # fmt: skip
    report = _run_monitor(env, calm)
    assert report["tasks"] == {"check_champion": "success", "request_retrain": "success"}, report
    assert report["asset_events"] == ["recforge://retrain/bpr"]  # still only the first run's event
    newest = max((tmp_path / "runs" / "bpr-monitor").glob("*/drift.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(newest.read_text())["drift_detected"] is False

    # Same calm data, but the champion's served lists were followed far less on their latest day.
    champion_tag = json.loads(promote.stdout.strip().splitlines()[-1])["model_tag"]
    _served_lists(Layout(tmp_path), champion_tag, followed=[0.4, 0.4, 0.4, 0.05])
    report = _run_monitor(env, calm)
    assert report["tasks"] == {"check_champion": "success", "request_retrain": "success"}, report
    assert report["asset_events"] == ["recforge://retrain/bpr"] * 2  # the served-quality drop asked again
    assert (tmp_path / "evidently" / "online_quality_runs.json").is_file()  # and the dashboard has the days
    # The served answers' own prediction drift was measured (600 logged answers: two windows of 200).
    newest = max((tmp_path / "runs" / "bpr-monitor").glob("*/drift.json"), key=lambda p: p.stat().st_mtime)
    assert (newest.parent / "served_prediction_drift.html").is_file()


def _served_lists(layout: Layout, model_tag: str, followed: list[float], per_day: int = 150) -> None:
    """``per_day`` logged answers of ``model_tag`` on each of the last days, and events following the
    given share of them within an hour."""
    import random
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from serving.served_log import ServedLog

    rng = random.Random(0)
    log = ServedLog(layout.served_log, flush_s=3600)
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=len(followed) + 1
    )
    events = []
    for day, share in enumerate(followed):
        for n in range(per_day):
            served = start + timedelta(days=day, minutes=n)
            user, items = f"served-{n}", [str(i) for i in range(1, 11)]
            log.record(request_id=f"{day}-{n}", served_at=served.isoformat(), user_id=user, items=items,
                       scores=[1.0] * 10, k=10, strategy="known_user", fallback=False, history_used=0,
                       model_tag=model_tag, deployment="default")  # fmt: skip
            if rng.random() < share:
                when = (served + timedelta(minutes=30)).isoformat()
                events.append({"user_id": user, "item_id": items[0], "timestamp": when, "rating": ""})
    log.close()
    layout.event_log.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(events).to_parquet(layout.event_log / "events-served-test.parquet", index=False)


def _run_monitor(env: dict[str, str], conf: dict) -> dict:
    monitor = subprocess.run(
        [sys.executable, "-c", RUN_MONITOR, json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert monitor.returncode == 0, monitor.stderr[-4000:]
    return json.loads(monitor.stdout.strip().splitlines()[-1])
