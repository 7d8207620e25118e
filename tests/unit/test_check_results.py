"""bench/check_results.py: which committed benchmark results predate the code they measure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _check_results() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_results", REPO / "bench" / "check_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


cr = _check_results()


def test_commits_are_read_from_the_json_keys_and_the_markdown_sentence() -> None:
    sha = "68f71f6b78695377094ce33fc3d3483479e6acae"
    assert cr.commits_in_json({"meta": {"code_commit": sha}, "runs": [{"git_commit": "abc1234+dirty"}]}) == [
        sha,
        "abc1234+dirty",
    ]
    assert cr.commits_in_json({"code_commit": "unknown", "commit": sha}) == []
    assert cr.commits_in_text(f"`python bench/bench_drift.py` at git `{sha}`, 2026-12-01") == [sha]
    assert cr.commits_in_text("by `x` at commit `26f6d7b`.") == ["26f6d7b"]
    assert cr.commits_in_text("The schema change (commit `a6db2ac`) replaced") == []


def test_files_of_one_result_are_grouped_and_each_result_knows_what_it_measures() -> None:
    results = cr.results()
    assert {"leaderboard", "drift_calibration", "serving"} <= set(results)
    assert [f.name for f in results["leaderboard"]] == ["leaderboard.json", "leaderboard.meta.json"]
    for name in results:
        measures = cr.measures_of(name)
        missing = [p for p in measures.all_paths() if not (REPO / p).exists()]
        assert missing == [], f"{name} measures paths that do not exist: {missing}"
    assert cr.measures_of("drift_calibration").all_paths() == ["bench/bench_drift.py", "monitoring/"]
    assert cr.measures_of("demo").all_paths()[:2] == ["bench/bench_demo.py", "pipeline/"]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(repo: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "change")
    return _git(repo, "rev-parse", "HEAD")


@pytest.mark.slow  # git in subprocesses
def test_a_result_is_stale_once_the_code_it_measures_changes(tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    pyproject = '[tool.setuptools.packages.find]\ninclude = ["training*", "serving*"]\n'
    first = _commit(repo, {"pyproject.toml": pyproject, "training/a.py": "", "serving/b.py": ""})
    second = _commit(
        repo,
        {
            "bench/results/training.json": json.dumps({"meta": {"code_commit": first}}),
            "bench/results/serving.md": f"# Serving\n\n`python bench/bench_serving.py` at commit `{first}`.\n",
            "bench/results/notes.md": "# Notes without a commit\n",
        },
    )
    _commit(repo, {"training/a.py": "x = 1\n"})

    rows = {name: cr.check(name, files, repo) for name, files in cr.results(repo).items()}
    assert rows["training"].listed and rows["training"].status == "STALE: 1 commit since changed training/"
    assert not rows["serving"].listed and rows["serving"].status == "current"
    assert rows["notes"].listed and rows["notes"].status == "no commit recorded"
    assert rows["serving"].commit == first[:9] and second != first

    assert cr.main([], repo) == 0
    assert cr.main(["--strict"], repo) == 1
    table = capsys.readouterr().out
    assert "2 of 3 results are out of date or record no commit" in table


@pytest.mark.slow  # git in subprocesses
def test_the_committed_results_can_be_checked() -> None:
    rows = [cr.check(name, files) for name, files in cr.results().items()]
    assert rows and all(row.status for row in rows)
    assert {row.result for row in rows if row.commit != "-"} >= {"drift_calibration", "serving"}


@pytest.mark.slow  # git in subprocesses
def test_declared_commits_and_archived_results_are_not_listed_but_say_why(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    pyproject = '[tool.setuptools.packages.find]\ninclude = ["training*"]\n'
    first = _commit(repo, {"pyproject.toml": pyproject, "training/a.py": ""})
    _commit(
        repo,
        {
            "bench/results/training.json": json.dumps({"code_commit": first}),
            "bench/results/study.md": f"# A before/after study at commit `{first}`\n",
        },
    )
    refactor = _commit(repo, {"training/a.py": "# a comment\n"})
    declarations = (
        f'[[unaffected]]\ncommit = "{refactor[:7]}"\nresults = ["training"]\nreason = "a comment only"\n\n'
        '[[archived]]\nresult = "study"\nreason = "compares two past commits"\n'
    )
    _commit(repo, {"bench/results_declarations.toml": declarations})

    rows = {name: cr.check(name, files, repo) for name, files in cr.results(repo).items()}
    assert not rows["training"].listed
    assert (
        rows["training"].status
        == f"current (1 later commit declared unaffecting: {refactor[:9]}: a comment only)"
    )
    assert not rows["study"].listed and rows["study"].status == "archived: compares two past commits"

    # A later change that nobody declared makes the result stale again; only it is reported.
    _commit(repo, {"training/b.py": "x = 1\n"})
    row = cr.check("training", cr.results(repo)["training"], repo)
    assert row.listed and row.status == "STALE: 1 commit since changed training/"

    _commit(repo, {"bench/results_declarations.toml": declarations.replace(refactor[:7], "0000000")})
    with pytest.raises(ValueError, match="not in this clone's history"):
        cr.Declarations.load(repo)
