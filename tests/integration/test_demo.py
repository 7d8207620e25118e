"""`recforge demo` as a person runs it: one line per task, the leaderboard, the verdicts, the summary
path last; the detail (Airflow, Feast, Lightning, warnings) in the log file it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.flow import MODEL_PIPELINE
from pipeline.config import REPO_ROOT
from tests.integration.pipeline_home import make_home

pytestmark = pytest.mark.integration

RECFORGE = [sys.executable, "-m", "orchestration.cli"]  # this checkout's CLI
TASKS = [stage.name for stage in MODEL_PIPELINE]  # the tasks of every recsys_<model> DAG


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RECFORGE, "demo", "--models", "bpr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )


def _log_path(console: str) -> Path:
    match = re.search(r"full logs in (\S+)", console)
    assert match, console
    return Path(match.group(1))


def test_the_demo_prints_one_line_per_task_and_ends_with_the_summary_path(tmp_path: Path) -> None:
    env = make_home(tmp_path, sample_users=60, max_epochs=1)
    result = _demo(env, "--conf", "max_epochs=1")
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    lines = result.stdout.splitlines()
    assert len(lines) < 40, console
    assert not re.search(r"error|traceback|warning|leaked", console, flags=re.IGNORECASE), console
    assert result.stderr == ""
    assert lines[-1] == str(tmp_path / "summary.json")
    for task_id in TASKS:
        assert any(
            re.match(rf"recsys_bpr\s+{task_id}\s+(success|skipped)\s+[\d.]+ s$", ln) for ln in lines
        ), (
            task_id,
            console,
        )
    assert any(line.startswith("bpr: ") and "promoted" in line for line in lines), console
    log = _log_path(result.stdout)
    assert log.parent == tmp_path / "logs" and log.name.startswith("demo-")
    detail = log.read_text()
    assert "[DAG TEST] starting task_id=train" in detail and "Database migration done" in detail
    assert len(detail.splitlines()) > 10 * len(lines)


def test_a_failed_demo_names_the_task_its_error_and_the_log(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    env = make_home(tmp_path, source={"kind": "events", "path": str(missing), "name": "missing"})
    result = _demo(env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"^recsys_bpr\s+ingest\s+failed", result.stdout, flags=re.MULTILINE), result.stdout
    assert re.search(r"^  ingest failed: \w+: .*no-such-dir", result.stdout, flags=re.MULTILINE), (
        result.stdout
    )
    log = _log_path(result.stdout)
    assert result.stderr.strip().splitlines()[-1].endswith(f"log: {log}")
    assert "Traceback" in log.read_text()
