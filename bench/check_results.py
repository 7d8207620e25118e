"""Which committed benchmark results predate the code they measure?

    python bench/check_results.py            # a table of every result under bench/results/
    python bench/check_results.py --strict   # the same; exits 1 when any result is listed as out of date
    python bench/check_results.py --list     # the benchmarks: what each measures, its command, its results

A result is a file under ``bench/results/`` (JSON or Markdown; ``x.json``, ``x.md`` and ``x.meta.json``
are one result ``x``) that records the commit it ran at: a ``code_commit`` / ``git_commit`` key in its
JSON, or "at git `<sha>`" / "at commit `<sha>`" in its Markdown (what the bench scripts write). It is
*stale* when a later commit changed the code it measures (``MEASURES``: the bench script plus the
paths whose behaviour it reports; by default the script plus every project package), and listed as
such with the commits since and the paths they touched. Results that record no commit, or a commit
this clone does not have, are listed too.

Two declarations in ``bench/results_declarations.toml`` refine the path rule, each with its reason
printed next to the result: a later commit may be declared not to change what a result measures
(``[[unaffected]]``: it touched a measured path without touching the measured computation, e.g. a
refactor of the provenance fields), and a result may be archived (``[[archived]]``: a record of a past
comparison or decision, such as a before/after study of two commits, which no rerun could refresh and
which is not quoted as a measure of today's code). Nothing is rerun: rerunning a stale result is a decision
(minutes to an hour of machine time), this only says which ones it concerns. Uses git and the
standard library only.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DECLARATIONS = Path("bench") / "results_declarations.toml"

COMMIT_KEYS = ("code_commit", "git_commit")
COMMIT_IN_TEXT = re.compile(r"\bat (?:git|commit) `([0-9a-f]{7,40})(\+dirty)?`")
SHA = re.compile(r"^([0-9a-f]{7,40})(\+dirty)?$")


def project_packages(repo: Path = REPO) -> list[str]:
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    return [p.rstrip("*") + "/" for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]


@dataclass(frozen=True)
class Measures:
    """What a result measures: the script that writes it and the code whose changes can move it."""

    script: str | None
    paths: tuple[str, ...] | None = None  # None: the project packages

    def all_paths(self, repo: Path = REPO) -> list[str]:
        paths = list(self.paths) if self.paths is not None else project_packages(repo)
        return ([self.script] if self.script else []) + paths


# Sets torch's allocator options for every process (huge pages): timings can move with it.
TORCH_OPTIONS = "pipeline/__init__.py"
LEADERBOARD = Measures("bench/leaderboard.py", ("bench/bench_training.py", "training/", "configs/models/"))
SERVING = Measures("bench/bench_serving.py", ("serving/", TORCH_OPTIONS))
SCALE = Measures(
    "bench/bench_scale.py",
    ("ingestion/", "features/", "feature_repo/", "training/", "orchestration/stages.py", TORCH_OPTIONS),
)

# Result name (its path under bench/results/ without suffixes; for a folder, its first part) -> what it
# measures. A result not named here measures its bench script (bench/bench_<name>.py or
# bench/<name>.py, if there is one) and every project package.
MEASURES: dict[str, Measures] = {
    "leaderboard": LEADERBOARD,
    "schema_change": LEADERBOARD,  # leaderboards before and after a change of the attribute encoders
    "sequential_leaderboard": LEADERBOARD,  # the transformers (SASRec, BERT4Rec, gSASRec) side by side
    "training": Measures("bench/bench_training.py", ("training/", "configs/models/", TORCH_OPTIONS)),
    "scaling": Measures("bench/bench_scaling.py", ("training/", TORCH_OPTIONS)),
    "scale": SCALE,
    # Arithmetic on the scale run's results: stale when the script or the results it reads change.
    "scale_projection": Measures("bench/project_scale.py", ("bench/results/scale.json",)),
    "scale_twotower": SCALE,  # TwoTower trained and evaluated on the splits the scale run left (--on-kept-split)
    "drift_calibration": Measures("bench/bench_drift.py", ("monitoring/",)),
    "serving": SERVING,
    "serving_two_stage": SERVING,
    "serving_1m": SERVING,  # /recommend at a million items (ANN retrieval)
    "peer_recbole": Measures("bench/bench_peer_recbole.py", ("training/", "configs/models/", TORCH_OPTIONS)),
    "feast_online": Measures(
        "bench/bench_feast_online.py",
        ("ingestion/", "features/", "feature_repo/", "serving/online.py", "orchestration/stages.py"),
    ),
    "lifecycle": Measures("bench/bench_lifecycle.py", ("serving/", "pipeline/run_index.py")),
    "diversity": Measures(
        "bench/bench_diversity.py",
        (
            "training/rerank.py",
            "training/metrics.py",
            "training/models/bpr.py",
            "training/train.py",
            "training/split.py",
            "training/data.py",
            "serving/recommender.py",
            "configs/models/bpr.yaml",
        ),
    ),
    "ann": Measures("bench/bench_ann.py", ("serving/ann.py",)),
    "eval_ranking": Measures("bench/bench_eval_ranking.py", ("training/", TORCH_OPTIONS)),
    "session": Measures(
        "bench/bench_session.py", ("training/", "configs/models/", "configs/pipeline.yaml", TORCH_OPTIONS)
    ),
    # The served retrieve-then-rank unit under full ranking (training/two_stage.py and both models).
    "two_stage_eval": Measures(
        "bench/bench_two_stage.py", ("bench/leaderboard.py", "training/", "configs/models/")
    ),
}


def measures_of(name: str, repo: Path = REPO) -> Measures:
    head = name.split("/", 1)[0]
    if head in MEASURES:
        return MEASURES[head]
    for script in (f"bench/bench_{head}.py", f"bench/{head}.py"):
        if (repo / script).is_file():
            return Measures(script)
    return Measures(None)


def result_name(path: Path, results_dir: Path = RESULTS) -> str:
    """``bench/results/leaderboard.meta.json`` -> ``leaderboard``."""
    relative = path.relative_to(results_dir)
    return str(relative.parent / relative.name.split(".", 1)[0]).removeprefix("./")


def commits_in_json(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in COMMIT_KEYS and isinstance(item, str) and SHA.match(item):
                found.append(item)
            else:
                found += commits_in_json(item)
    elif isinstance(value, list):
        for item in value:
            found += commits_in_json(item)
    return found


def commits_in_text(text: str) -> list[str]:
    return [sha + dirty for sha, dirty in COMMIT_IN_TEXT.findall(text)]


def recorded_commits(files: list[Path]) -> list[str]:
    """Every commit the files of one result record, in file order, without repeats."""
    found: list[str] = []
    for file in files:
        text = file.read_text()
        if file.suffix == ".json":
            try:
                found += commits_in_json(json.loads(text))
            except json.JSONDecodeError:
                continue
        else:
            found += commits_in_text(text)
    return list(dict.fromkeys(found))


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def changes_since(repo: Path, sha: str, paths: list[str]) -> dict[str, list[str]]:
    """Each commit after ``sha`` that touched ``paths`` -> the files of ``paths`` it touched."""
    # Merges are left out: what a merge brings in is the commits it merges, each listed on its own.
    log = git(
        repo, "log", "--no-merges", "--format=%x00%H", "--name-only", f"{sha}..HEAD", "--", *paths
    ).stdout
    changes: dict[str, list[str]] = {}
    for block in log.split("\0")[1:]:
        commit, *files = block.split()
        changes[commit] = files
    return changes


@dataclass
class Row:
    result: str
    commit: str
    measures: str
    status: str
    listed: bool  # out of date, or cannot be told


@dataclass(frozen=True)
class Declarations:
    """``bench/results_declarations.toml``: commits declared not to affect a result; archived results."""

    unaffected: dict[str, dict[str, str]]  # result head -> {full commit sha: reason}
    archived: dict[str, str]  # result head -> reason

    @classmethod
    def load(cls, repo: Path = REPO) -> Declarations:
        path = repo / DECLARATIONS
        data = tomllib.loads(path.read_text()) if path.is_file() else {}
        unaffected: dict[str, dict[str, str]] = {}
        for entry in data.get("unaffected", []):
            full = git(
                repo, "rev-parse", "--verify", "--quiet", f"{entry['commit']}^{{commit}}"
            ).stdout.strip()
            if not full:
                raise ValueError(f"{DECLARATIONS}: commit {entry['commit']} is not in this clone's history")
            for result in entry["results"]:
                unaffected.setdefault(result, {})[full] = entry["reason"]
        archived = {entry["result"]: entry["reason"] for entry in data.get("archived", [])}
        return cls(unaffected, archived)


def check(name: str, files: list[Path], repo: Path = REPO, declared: Declarations | None = None) -> Row:
    declared = declared if declared is not None else Declarations.load(repo)
    head = name.split("/", 1)[0]
    measures = measures_of(name, repo)
    paths = measures.all_paths(repo)
    packages = "the project packages" if measures.script is None else f"{measures.script} + the packages"
    shown = ", ".join(paths) if measures.paths is not None else packages
    commits = recorded_commits(files)
    if head in declared.archived:
        recorded = " ".join(dict.fromkeys(c[:9] for c in commits)) or "-"
        return Row(name, recorded, shown, f"archived: {declared.archived[head]}", False)
    if not commits:
        return Row(name, "-", shown, "no commit recorded", True)
    if len({c.removesuffix("+dirty")[:7] for c in commits}) > 1:
        return Row(name, " ".join(c[:9] for c in commits), shown, "its files record different commits", True)
    recorded = commits[0]
    sha = recorded.removesuffix("+dirty")
    label = sha[:9] + (" (dirty)" if recorded.endswith("+dirty") else "")
    if git(repo, "cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
        return Row(name, label, shown, "commit not in this clone's history", True)
    later = changes_since(repo, sha, paths)  # commit -> measured files it touched, newest first
    excused = declared.unaffected.get(head, {})
    since = [c for c in later if c not in excused]
    if not since:
        if not later:
            return Row(name, label, shown, "current", False)
        why = "; ".join(f"{c[:9]}: {excused[c]}" for c in later)
        plural = "s" if len(later) > 1 else ""
        return Row(
            name,
            label,
            shown,
            f"current ({len(later)} later commit{plural} declared unaffecting: {why})",
            False,
        )
    touched = {path for c in since for path in later[c]}
    where = sorted({t if t.startswith("bench/") else t.split("/", 1)[0] + "/" for t in touched})
    changed = ", ".join(where[:4]) + (f" (+{len(where) - 4} more)" if len(where) > 4 else "")
    plural = "s" if len(since) > 1 else ""
    return Row(name, label, shown, f"STALE: {len(since)} commit{plural} since changed {changed}", True)


def results(repo: Path = REPO) -> dict[str, list[Path]]:
    results_dir = repo / RESULTS.relative_to(REPO)
    grouped: dict[str, list[Path]] = {}
    for path in sorted(results_dir.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".md"):
            grouped.setdefault(result_name(path, results_dir), []).append(path)
    # The JSON first: its commit is the one the script recorded, the Markdown's is rendered from it.
    return {name: sorted(files, key=lambda f: f.suffix != ".json") for name, files in grouped.items()}


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def catalogue() -> str:
    """Every bench script: its summary, its results and the commands its docstring gives."""
    written: dict[str, list[str]] = {}
    for name in results():
        script = measures_of(name).script
        shown = name.split("/", 1)[0] + "/" if "/" in name else name  # a folder of results, once
        if script and shown not in written.setdefault(script, []):
            written[script].append(shown)
    blocks = []
    for script in sorted(REPO.glob("bench/*.py")):
        relative = str(script.relative_to(REPO))
        if relative == "bench/check_results.py":
            continue
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        usage = [
            line.strip()
            for line in doc.splitlines()
            if re.match(r"\s*(make |python |\.venv/bin/python |[A-Z_]+=\S* )", line)
        ]
        outputs = ", ".join(f"bench/results/{n}" for n in written.get(relative, [])) or "-"
        blocks.append(
            "\n".join(
                [f"{relative}: {doc.splitlines()[0] if doc else '(no docstring)'}", f"  results: {outputs}"]
                + [f"  $ {line}" for line in usage]
            )
        )
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None, repo: Path = REPO) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when any result is listed")
    parser.add_argument("--list", action="store_true", help="list the benchmarks instead (runs none)")
    args = parser.parse_args(argv)
    if args.list:
        print(catalogue())  # the scripts of this checkout
        print(
            "\nNone was run. Each writes bench/results/ by default; give --out (or --out-json/--out-md) to keep"
        )
        print("the committed results, and see `make check-results` for which of them are out of date.")
        return 0
    declared = Declarations.load(repo)
    rows = [check(name, files, repo, declared) for name, files in results(repo).items()]
    header = ["result (bench/results/)", "recorded commit", "measures", "status"]
    print(table(header, [[r.result, r.commit, r.measures, r.status] for r in rows]))
    listed = [r for r in rows if r.listed]
    print(
        f"\n{len(listed)} of {len(rows)} results are out of date or record no commit; HEAD is "
        f"{git(repo, 'rev-parse', '--short=9', 'HEAD').stdout.strip()}. Rerun a result's command (its .md names "
        "it) to refresh it."
    )
    return 1 if args.strict and listed else 0


if __name__ == "__main__":
    sys.exit(main())
