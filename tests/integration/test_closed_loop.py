"""The online loop, closed with no manual step, on a real slice of MovieLens-100K.

A champion (BPR) is served by a real ``bentoml serve``. Events with an injected shift (every pushed
rating is 1, on the slice's least popular items) go in through ``POST /events``. Under a real
``airflow standalone``, the drift monitor (triggered over the REST API, as its daily schedule would)
detects the shift on the newest window and emits the champion's retrain asset event. The scheduler
then runs ``recsys_bpr`` by itself; it retrains on data that includes the pushed events, the gate
judges candidate and champion on the same test data, and the live service follows the outcome: it
hot-swaps to the new champion, or keeps the old one and the run says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import requests

from orchestration.airflow_env import airflow_env, free_port
from orchestration.cli import stop_process_group
from pipeline.layout import Layout
from pipeline.run_index import RunIndex
from tests.integration import airflow_rest as rest
from tests.integration.pipeline_home import make_home
from tests.integration.test_drift_monitor import PROMOTE_BPR
from tests.serving_fixtures import serve

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USERS = 60
PUSHED = 1000  # more than the monitor's current window (10 % of the slice's events): it is all shift
# On a 60-user slice most columns differ between any two windows (the thresholds in configs/pipeline.yaml
# are calibrated for 10,000-event windows); here only the rating may drift, so the test shows the loop
# reacting to the injected shift and to nothing else.
COLUMNS = ["age", "day_of_week", "gender", "hour_of_day", "log_item_window_events", "log_user_window_events",
           "new_item", "new_user", "occupation", "primary_genres", "release_year"]  # fmt: skip
MONITORING = {
    "column_drift_thresholds": {**dict.fromkeys(COLUMNS, 100.0), "rating": 0.37},
    "drift_share_threshold": 1.0,  # prediction drift: off
}
CHECK_DRIFT = """
import json
from orchestration.monitor import check_champion_drift
print(json.dumps(check_champion_drift()))
"""


def _push_shift(url: str, layout: Layout, champion_run: str) -> list[dict]:
    """Ratings of 1 on the least popular items, from the slice's own users, just now."""
    run_dir = layout.home / "runs" / champion_run
    items = json.loads((run_dir / "model" / "item_ids.json").read_text())
    users = json.loads((run_dir / "model" / "user_ids.json").read_text())
    snapshot = json.loads((run_dir / "snapshot.json").read_text())
    counts = pd.read_parquet(snapshot["interactions"])["item_id"].value_counts()
    rare = [i for i in items if counts.get(i, 0) <= 1][:50]
    now = int(time.time())
    events = [
        {
            "user_id": users[n % len(users)],
            "item_id": rare[n % len(rare)],
            "timestamp": now - PUSHED + n,
            "rating": 1,
        }
        for n in range(PUSHED)
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, PUSHED, 500):
            body = client.post("/events", json={"events": events[start : start + 500]}).json()
            assert body["appended"] == 500 and body["history_updated"], body
    return events


def test_pushed_shift_to_drift_to_retrain_to_the_served_champion(tmp_path: Path) -> None:
    env = airflow_env(
        Layout(tmp_path),
        api_port=(port := free_port()),
        base=make_home(tmp_path, sample_users=USERS, max_epochs=2, monitoring=MONITORING),
    )
    env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] = "5"
    layout = Layout(tmp_path)
    first = subprocess.run(
        [sys.executable, "-c", PROMOTE_BPR], env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-4000:]
    index = RunIndex(f"sqlite:///{tmp_path / 'run_index.db'}")
    champion = index.champion("default")

    airflow_log = open(tmp_path / "standalone.log", "w")
    standalone = subprocess.Popen(
        [AIRFLOW, "standalone"], env=env, stdout=airflow_log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with serve(layout, tmp_path / "bentoml.log") as server:
            server.wait_ready()
            # Before the push: the monitor finds nothing to act on.
            calm = subprocess.run(
                [sys.executable, "-c", CHECK_DRIFT], env=env, capture_output=True, text=True, timeout=600
            )
            assert calm.returncode == 0, calm.stderr[-4000:]
            before = json.loads(calm.stdout.strip().splitlines()[-1])
            assert before["drift_detected"] is False and before["verdict"] == "no drift", before
            pushed = _push_shift(server.url, layout, champion.run_uid)

            base = f"http://127.0.0.1:{port}"
            password = rest.wait_for(lambda: rest.generated_password(env), 240, "the admin password file")
            token = rest.wait_for(lambda: rest.token(base, password), 240, "the API server to issue a token")
            headers = {"Authorization": f"Bearer {token}"}
            for dag_id in ("recsys_drift_monitor", "recsys_bpr"):
                rest.wait_for(
                    lambda dag_id=dag_id: (
                        requests.get(f"{base}/api/v2/dags/{dag_id}", headers=headers, timeout=5).ok
                    ),
                    240,
                    f"the DAG processor to register {dag_id}",
                )
                assert requests.patch(
                    f"{base}/api/v2/dags/{dag_id}", json={"is_paused": False}, headers=headers, timeout=10
                ).ok

            # The monitor's daily run, started now instead of waiting for midnight.
            trigger = requests.post(
                f"{base}/api/v2/dags/recsys_drift_monitor/dagRuns",
                json={"logical_date": None, "conf": {}},
                headers=headers,
                timeout=10,
            )
            assert trigger.status_code == 200, trigger.text
            monitor_run = trigger.json()["dag_run_id"]
            state = rest.wait_for(
                lambda: _finished(base, headers, "recsys_drift_monitor", monitor_run), 900, "the monitor"
            )
            assert state == "success", (tmp_path / "standalone.log").read_text()[-4000:]
            drift_json = max(
                (tmp_path / "runs" / "bpr-monitor").glob("*/drift.json"), key=lambda p: p.stat().st_mtime
            )
            drift = json.loads(drift_json.read_text())
            assert drift["drift_detected"] is True and drift["verdict"].startswith("data drift in rating"), (
                drift
            )

            # Nobody triggers recsys_bpr: the scheduler does, on the retrain asset event.
            def retrain_run() -> str | None:
                runs = requests.get(
                    f"{base}/api/v2/dags/recsys_bpr/dagRuns", headers=headers, timeout=10
                ).json()["dag_runs"]
                done = [
                    r
                    for r in runs
                    if r["run_type"] == "asset_triggered" and r["state"] in ("success", "failed")
                ]
                return done[0]["dag_run_id"] if done else None

            run_id = rest.wait_for(retrain_run, 900, "the asset-triggered recsys_bpr run to finish")
            info = requests.get(
                f"{base}/api/v2/dags/recsys_bpr/dagRuns/{run_id}", headers=headers, timeout=10
            ).json()
            assert info["state"] == "success", (tmp_path / "standalone.log").read_text()[-4000:]

            # It retrained on data that holds the pushed events, once each.
            newest = max(index.runs(model="bpr"), key=lambda r: r.started_at)
            assert newest.run_uid != champion.run_uid and newest.data_version != champion.data_version
            snapshot = json.loads((Path(newest.run_dir) / "snapshot.json").read_text())
            events = pd.read_parquet(snapshot["interactions"])
            shifted = events[
                (events["rating"] == 1)
                & (events["timestamp"] >= pd.Timestamp(pushed[0]["timestamp"], unit="s", tz="UTC"))
            ]
            assert len(shifted) == PUSHED, len(shifted)

            # The service follows whatever the gate decided, and the run says why.
            live = index.champion("default")
            verdict = "PROMOTED" if newest.promoted else "NOT PROMOTED"
            assert info["note"].startswith(f"{verdict} bpr into deployment 'default'"), info["note"]
            assert (live.model_tag != champion.model_tag) == newest.promoted
            served = rest.wait_for(
                lambda: (
                    (m := httpx.get(f"{server.url}/metadata", timeout=10).json())["model_tag"]
                    == live.model_tag
                    and m
                ),
                60,
                "the service to serve the deployment's champion",
            )
            assert served["model_tag"] == live.model_tag
    finally:
        stop_process_group(standalone)
        airflow_log.close()


def _finished(base: str, headers: dict, dag_id: str, run_id: str) -> str | None:
    state = requests.get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=headers, timeout=10).json()[
        "state"
    ]
    return state if state in ("success", "failed") else None
