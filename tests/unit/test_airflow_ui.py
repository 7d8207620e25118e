"""`recforge airflow-ui` without starting Airflow: the secrets it writes or finds are owner-only, and
the DAG list it prints is every DAG the DAG files define."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from orchestration.cli import PASSWORDS_FILE, airflow_password, dag_list_lines, seed_password, write_login
from orchestration.dag_catalog import dag_ids


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_login_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "ui_login.json"
    path.write_text("old")
    path.chmod(0o644)  # an older, world-readable copy is tightened too
    write_login(path, "http://localhost:8080", "admin", "s3cret")
    assert _mode(path) == 0o600
    assert json.loads(path.read_text()) == {
        "url": "http://localhost:8080",
        "username": "admin",
        "password": "s3cret",
    }


def test_a_seeded_password_file_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECFORGE_AIRFLOW_PASSWORD", "chosen")
    seed_password({"AIRFLOW_HOME": str(tmp_path)})
    path = tmp_path / PASSWORDS_FILE
    assert _mode(path) == 0o600 and json.loads(path.read_text()) == {"admin": "chosen"}


def test_the_password_file_airflow_generated_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / PASSWORDS_FILE
    path.write_text(json.dumps({"admin": "generated"}))
    path.chmod(0o644)  # as Airflow leaves it
    assert airflow_password({"AIRFLOW_HOME": str(tmp_path)}, timeout=1) == "generated"
    assert _mode(path) == 0o600


@pytest.mark.slow  # reads the DAG files: croniter's import (Airflow's schedules) runs `file` in a subprocess
def test_the_dag_list_shown_is_every_dag_with_its_count() -> None:
    ids = dag_ids()
    lines = dag_list_lines(ids, width=100)
    text = " ".join(line.strip() for line in lines)
    assert text.startswith(f"DAGs ({len(ids)}): ")
    assert [name.strip() for name in text.split(": ", 1)[1].split(",")] == ids
    assert all(len(line) <= 100 for line in lines)
    assert {"recsys_bpr", "recsys_sasrec", "recsys_drift_monitor", "recsys_tune_bpr"} <= set(ids)
