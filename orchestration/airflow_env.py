"""The environment Airflow runs with under recforge: one place, used by the CLI, make targets and tests.

Embedded default: SQLite metadata DB under ``RECFORGE_HOME/airflow`` and LocalExecutor, no server
needed. Production overrides come from the caller's environment (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``
etc.), which always wins over these defaults.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from pipeline.config import REPO_ROOT
from pipeline.layout import Layout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_env(
    layout: Layout, api_port: int | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    defaults = {
        "AIRFLOW_HOME": str(layout.airflow_home),
        "RECFORGE_HOME": str(layout.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        # recforge's plugin: writes each model run's gate outcome as the run's note (grid view).
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor forks this many workers up front (default 32): 4 suit a small machine.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # Spin-waiting OpenMP threads make training 10-30x slower next to another busy process.
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    # `airflow standalone` starts its components as `airflow ...` from PATH: put this venv's first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Task processes import the stage packages from the repo (also without an editable install).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    # Bind the API server (UI) to this machine only; a container sets AIRFLOW__API__HOST=0.0.0.0.
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    # The scheduler's health-check server is off, but if enabled it should not listen on every interface.
    env.setdefault("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST", "127.0.0.1")
    if api_port is not None:
        env["AIRFLOW__API__PORT"] = str(api_port)
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{api_port}"
        # Without this every task fails with "Connection refused" when the API is not on :8080.
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{api_port}/execution/"
    layout.airflow_home.mkdir(parents=True, exist_ok=True)
    return env
