"""Benchmark of the main job: `recforge demo` (both DAGs through Airflow on MovieLens-100K).

    .venv/bin/python bench/bench_demo.py                 # runs the demo, then writes the results
    .venv/bin/python bench/bench_demo.py --wall 412.3    # only collects a finished demo's summary

Writes bench/results/demo.json and bench/results/demo.md: wall time of the whole demo, seconds per
stage and model (from each run's timings.json), the leaderboard and the gate decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestration.stages import STAGES  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.provenance import code_commit  # noqa: E402

RESULTS = REPO / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wall", type=float, help="wall seconds of a demo already run (skip running it)")
    args = parser.parse_args()
    wall = args.wall
    if wall is None:
        started = time.perf_counter()
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        subprocess.run([str(Path(sys.executable).with_name("recforge")), "demo"], check=True, env=env)
        wall = time.perf_counter() - started
    layout = Layout(load_config().home_dir)
    summary = json.loads(layout.summary.read_text())
    result = {
        "code_commit": code_commit(),
        "command": "recforge demo (= make demo on a warm venv)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "wall_seconds": round(wall, 1),
        "data_version": summary["data_version"],
        "models": {
            name: {
                "stage_seconds": rec["stage_seconds"],
                "metrics": {k: rec["metrics"].get(k) for k in ("recall@10", "ndcg@10", "hr@10", "mrr@10")},
                "promoted": rec["promoted"],
                "reason": rec["reason"],
                "epochs": rec["epochs"],
                "epoch_seconds": rec["epoch_seconds"],
                "protocol": rec["protocol"],
            }
            for name, rec in summary["models"].items()
        },
        "baselines": summary["baselines"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# `make demo` benchmark",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}` at git `{result['code_commit']}`. Whole demo: **{wall:.0f} s** "
        "(Airflow `dags test` of recsys_bpr then recsys_sasrec, incl. Airflow start-up, Bento build, drift).",
        "",
        "| stage | " + " | ".join(result["models"]) + " |",
        "|---|" + "---:|" * len(result["models"]),
    ]
    for stage in STAGES:
        cells = [result["models"][m]["stage_seconds"].get(stage) for m in result["models"]]
        if any(c is not None for c in cells):
            lines.append(f"| {stage} | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |")
    lines += ["", (layout.home / "leaderboard.md").read_text(), ""]
    for name, rec in result["models"].items():
        verdict = "promoted" if rec["promoted"] else "not promoted"
        lines.append(
            f"- {name} ({rec['epochs']} epochs, {rec['epoch_seconds']:.2f} s/epoch): {verdict}: {rec['reason']}"
        )
    (RESULTS / "demo.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "demo.md").read_text())


if __name__ == "__main__":
    main()
