"""Talking to a running ``airflow standalone`` over the REST API v2: a token, a triggered run, its state.

Used by the standalone integration test and by ``bench/screenshots.py --airflow``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests

T = TypeVar("T")


def generated_password(env: dict[str, str]) -> str | None:
    """The admin password Airflow generated under ``env``'s AIRFLOW_HOME, once it has written it."""
    path = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text())["admin"] if path.is_file() and path.stat().st_size else None


def token(base: str, password: str) -> str | None:
    """A JWT from ``/auth/token`` for admin; None while the API server does not answer yet."""
    try:
        response = requests.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=5
        )
    except requests.ConnectionError:
        return None
    return response.json()["access_token"] if response.status_code in (200, 201) else None


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call ``probe`` every 2 s until it returns something truthy; its request errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (requests.RequestException, ValueError, KeyError, OSError):
            value = None
        if value:
            return value
        time.sleep(2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def trigger(base: str, headers: dict[str, str], dag_id: str, conf: dict) -> str:
    """Wait until the DAG processor has registered ``dag_id``, unpause it, trigger a run; its run id."""
    wait_for(
        lambda: requests.get(f"{base}/api/v2/dags/{dag_id}", headers=headers, timeout=5).ok,
        240,
        f"the DAG processor to register {dag_id}",
    )
    unpause = requests.patch(
        f"{base}/api/v2/dags/{dag_id}", json={"is_paused": False}, headers=headers, timeout=10
    )
    unpause.raise_for_status()
    response = requests.post(
        f"{base}/api/v2/dags/{dag_id}/dagRuns",
        json={"logical_date": None, "conf": conf},
        headers=headers,
        timeout=10,
    )
    if response.status_code != 200:
        raise RuntimeError(f"triggering {dag_id} answered {response.status_code}: {response.text}")
    return response.json()["dag_run_id"]


def finished_state(base: str, headers: dict[str, str], dag_id: str, run_id: str) -> str | None:
    """``success`` or ``failed`` once the run has ended, else None."""
    state = requests.get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=headers, timeout=10).json()[
        "state"
    ]
    return state if state in ("success", "failed") else None


def task_states(base: str, headers: dict[str, str], dag_id: str, run_id: str) -> list[tuple[str, str]]:
    tasks = requests.get(
        f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", headers=headers, timeout=10
    ).json()
    return [(t["task_id"], t["state"]) for t in tasks["task_instances"]]
