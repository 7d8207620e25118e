"""The scale bench's plan: a model added on a kept split trains and is evaluated there, data untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench_modules import load_bench

SPEC = (1000, 100, 50)


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    return load_bench("bench_scale")


def _size_dir(data: Path) -> Path:
    directory = data / f"events{SPEC[0]}-items{SPEC[1]}-users{SPEC[2]}"
    directory.mkdir(parents=True)
    (directory / "pipeline.yaml").write_text("{}\n")  # generated already: generate() reuses it
    return directory


def _fake_stages(bench, monkeypatch) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Record each stage command instead of running it; each stage 'writes' <stage>-<model>.json."""
    commands: list[list[str]] = []

    def watched(cmd: list[str], env: dict[str, str], rss_limit_mb: float, timeout_s: float) -> dict[str, Any]:
        commands.append(cmd)
        stage, model = cmd[cmd.index("--child") + 1], cmd[cmd.index("--model") + 1]
        parts = {"inputs": 1.0, "model": 2.0} if stage == "evaluate" else None
        return {"status": "ok", "output": f"{stage}-{model}.json", "wall_s": 10.0, "peak_rss_mb": 100.0} | (
            {"parts_s": parts} if parts else {}
        )

    monkeypatch.setattr(bench, "watched", watched)
    return commands


def test_a_model_on_a_kept_split_runs_only_training_and_evaluation_there(
    bench, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    directory = _size_dir(tmp_path)
    split = directory / "home" / "runs" / "bpr" / "scale" / "split.json"
    split.parent.mkdir(parents=True)
    split.write_text("{}\n")
    commands = _fake_stages(bench, monkeypatch)

    run = bench.bench_size(SPEC, tmp_path, list(bench.STAGES), ["twotower"], 1e9, 1e9, on_kept_split=True)

    assert [cmd[cmd.index("--child") + 1] for cmd in commands] == ["train", "evaluate"]
    train, evaluate = commands
    assert train[train.index("--input") + 1] == str(split)
    # The split's own model fitted the baselines: twotower evaluates as a later model (cached Popularity).
    assert {cmd[cmd.index("--first-model") + 1] for cmd in commands} == {"bpr"}
    assert evaluate[-4:] == ["--input", "train-twotower.json", "--input", str(split)]
    assert split.is_file(), "the kept home must not be wiped"
    assert run["split_from"] == "bpr" and set(run["stages"]) == {"generate", "train", "evaluate"}

    text = bench.markdown({**_meta(), "command": "bench"}, [run])
    labels = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:]
    assert labels == [
        "train (twotower)",
        "evaluate (twotower)",
        "evaluate: test inputs",
        "evaluate: model ranking",
    ]
    assert "**whole pipeline" not in text and "on the split that an earlier run (bpr's" in text
    assert "on the home the earlier run left per size" in text


def test_a_full_run_wipes_the_home_and_runs_every_stage(bench, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    directory = _size_dir(tmp_path)
    stale = directory / "home" / "runs" / "bpr" / "scale" / "split.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    commands = _fake_stages(bench, monkeypatch)

    run = bench.bench_size(SPEC, tmp_path, list(bench.STAGES), ["bpr", "twotower"], 1e9, 1e9)

    assert not stale.exists()
    stages = [(cmd[cmd.index("--child") + 1], cmd[cmd.index("--model") + 1]) for cmd in commands]
    assert stages == [
        ("ingest", "bpr"),
        ("validate", "bpr"),
        ("features", "bpr"),
        ("split", "bpr"),
        ("train", "bpr"),
        ("evaluate", "bpr"),
        ("train", "twotower"),
        ("evaluate", "twotower"),
    ]
    assert "split_from" not in run and "**whole pipeline (twotower)**" in bench.markdown(
        {**_meta(), "command": "bench"}, [run]
    )


def test_no_kept_split_is_a_clear_error(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match="expected one split"):
        bench.kept_split(_size_dir(tmp_path))


def _meta() -> dict[str, Any]:
    return {
        "machine": "test",
        "cpus": 2,
        "memory_gb": 1.0,
        "python": "3.11",
        "generated": "now",
        "loadavg": "0",
        "code_commit": "0" * 40,
    }
