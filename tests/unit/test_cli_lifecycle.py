"""`recforge runs`, `recforge history` and `recforge rollback` as a person runs them (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.layout import Layout
from pipeline.run_index import RunIndex
from tests.unit.test_package import _promote, _record

pytestmark = pytest.mark.slow  # the recforge CLI in a subprocess

# The `recforge` entry point of this checkout (the venv's script may belong to another one).
RECFORGE = [sys.executable, "-m", "orchestration.cli"]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RECFORGE_HOME=str(home), RECFORGE_CONFIG=str(home / "none.yaml"))
    env.pop("RECFORGE_RUN_INDEX_URL", None)
    return subprocess.run(
        [*RECFORGE, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_history_and_rollback_from_the_command_line(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    assert "no champion yet" in _cli(layout.home, "history").stdout
    first = _promote(layout, "r1", 0.2, None).bento_tag
    layout.feast_namespace("recforge_dv1_h50").mkdir(parents=True)
    (layout.feast_namespace("recforge_dv1_h50") / "online.db").write_bytes(b"")
    second = _promote(layout, "r2", 0.3, first).bento_tag
    RunIndex.for_layout(layout).save_run(_record(layout, "r2", 0.3))

    history = _cli(layout.home, "history")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert "deployment 'default' (2 entries" in lines[0]
    assert first in lines[1] and "promote" in lines[1] and second in lines[3] and "0.3000" in lines[3]

    back = _cli(layout.home, "rollback")
    assert back.returncode == 0, back.stderr
    assert f"champion is now {first}" in back.stdout and f"was {second}" in back.stdout
    assert RunIndex.for_layout(layout).champion("default").model_tag == first

    refused = _cli(layout.home, "rollback", "--to", "recforge-popularity:nope")
    assert refused.returncode == 1 and refused.stderr.strip().startswith("recforge rollback: ")
    assert "never champion" in refused.stderr and "Traceback" not in refused.stderr

    runs = _cli(layout.home, "runs")
    assert runs.returncode == 0 and "popularity/r2" in runs.stdout and "0.3000" in runs.stdout


def test_a_deployment_override_is_one_clear_line(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", "bpr", "--set", "deployments.default.protocol=random_holdout")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fixed in the config file" in result.stderr.strip().splitlines()[-1]
