"""`recforge run` as a person types it: mistakes end in one line naming the bad value and the nearest
good one, before any stage runs; `--help` shows the models and examples that work."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestration.cli import run_cli
from pipeline.config import CONFIG_DIR, REPO_ROOT
from tests.unit.test_cli_lifecycle import RECFORGE
from training.models import MODELS

pytestmark = pytest.mark.slow  # the recforge CLI in a subprocess

FAST_S = 5.0  # a refusal must not wait for any stage (ingest alone takes longer)


def _recforge(home: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, RECFORGE_HOME=str(home), RECFORGE_CONFIG=str(CONFIG_DIR / "pipeline.yaml"))
    env.pop("RECFORGE_RUN_INDEX_URL", None)
    started = time.perf_counter()
    result = subprocess.run(
        [*RECFORGE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    return result, time.perf_counter() - started


MISTAKES = {
    "model": (["run", "bprr"], ["'bprr'", "did you mean 'bpr'"]),
    "config key": (
        ["run", "bpr", "--set", "split.protocl=random_holdout"],
        ["'split.protocl'", "did you mean 'split.protocol'"],
    ),
    "config value": (
        ["run", "bpr", "--set", "split.protocol=random_holdou"],
        ["'random_holdou'", "did you mean 'random_holdout'"],
    ),
    "missing path": (
        ["run", "bpr", "--set", "source.kind=events"],
        ["source.path must name the events file"],
    ),
    "wrong path": (
        ["run", "bpr", "--set", "source.kind=events", "--set", "source.path={tmp}/event.csv"],
        ["{tmp}/event.csv: no such file", "did you mean {tmp}/events.csv"],
    ),
    "hyperparameter": (
        ["run", "bpr", "--hparam", "embeding_size=8"],
        ["'embeding_size'", "did you mean 'embedding_size'", "takes batch_size, embedding_size"],
    ),
    "setting given as a hyperparameter": (
        ["run", "bpr", "--hparam", "epochs=5"],
        ["'epochs'", "--set trainer.max_epochs=", "takes batch_size, embedding_size"],
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_is_one_line_before_any_stage(case: str, tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    args, expected = MISTAKES[case]
    result, seconds = _recforge(tmp_path / "home", *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result.stderr
    assert seconds < FAST_S, f"{case}: refused after {seconds:.1f} s"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recforge run: "), result.stderr
    for fragment in expected:
        assert fragment.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "home" / "runs").exists()  # nothing was started


def test_a_failure_during_a_run_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    events.write_bytes(b"PAR1 this is not parquet")
    args = ["run", "bpr", "--set", "source.kind=events", "--set", f"source.path={events}"]
    result, _ = _recforge(tmp_path / "home", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"recforge run: {events}: not a readable Parquet")
    )

    debug, _ = _recforge(tmp_path / "home", "run", "bprr", "--debug")
    assert "Traceback" in debug.stderr and "unknown model 'bprr'" in debug.stderr


def test_help_lists_every_registered_model(tmp_path: Path) -> None:
    result, _ = _recforge(tmp_path, "run", "--help")
    assert result.returncode == 0
    for name in MODELS:
        assert re.search(rf"\b{name}\b", result.stdout), name


def test_every_example_of_the_help_passes_the_check(tmp_path: Path, monkeypatch, capsys) -> None:
    """The examples as shown by `--help`, each with --check (a full run takes minutes)."""
    result, _ = _recforge(tmp_path, "run", "--help")
    examples = [
        line.strip() for line in result.stdout.splitlines() if line.strip().startswith("recforge run ")
    ]
    assert len(examples) >= 4
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECFORGE_CONFIG", str(CONFIG_DIR / "pipeline.yaml"))
    for example in examples:
        argv = example.split()[1:]
        code = run_cli(argv if "--check" in argv else [*argv, "--check"])
        out = capsys.readouterr()
        assert code == 0, f"{example}: {out.err}"
        assert "check passed" in out.out
    assert not (tmp_path / "home" / "runs").exists()


def test_check_shows_the_hyperparameters_applied(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECFORGE_CONFIG", str(CONFIG_DIR / "pipeline.yaml"))
    assert run_cli(["run", "bpr", "--hparam", "embedding_size=8", "--check"]) == 0
    assert '"embedding_size": 8' in capsys.readouterr().out
    assert run_cli(["run", "bpr", "--hparam", "embedding_size=eight", "--check"]) == 2
    assert "embedding_size='eight' is not a valid int" in capsys.readouterr().err
