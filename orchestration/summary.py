"""The run summary: one machine-readable file (summary.json) and one leaderboard for people.

Built from the newest completed run of each model under ``RECFORGE_HOME/runs`` and from the run
index's deployments (which model each one serves, and since when); rewritten atomically whenever a
run finishes, so readers never see a half-written file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.config import PipelineConfig
from pipeline.layout import Layout
from pipeline.run_index import RunIndex

LEADERBOARD_METRICS = ("recall@10", "ndcg@10", "hr@10", "mrr@10")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def latest_completed_runs(layout: Layout) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    root = layout.home / "runs"
    if not root.is_dir():
        return runs
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        completed = sorted(model_dir.glob("*/completed.json"), key=lambda p: _read(p).get("at", ""))
        if completed:
            runs[model_dir.name] = completed[-1].parent
    return runs


def model_record(run_dir: Path) -> dict[str, Any]:
    evaluation = _read(run_dir / "evaluation.json")
    decision = (
        _read(run_dir / "promotion.json") or _read(run_dir / "package.json") or _read(run_dir / "gate.json")
    )
    train = _read(run_dir / "train.json")
    drift = _read(run_dir / "drift.json")
    return {
        "run_dir": str(run_dir),
        "run_id": run_dir.name,
        "metrics": evaluation.get("metrics", {}),
        "promoted": bool(decision.get("promoted", False)),
        "reason": decision.get("reason", ""),
        "deployment": decision.get("deployment"),
        "eligible": decision.get("eligible"),
        "bento_tag": decision.get("bento_tag"),
        "data_version": evaluation.get("data_version"),
        "protocol": evaluation.get("protocol"),
        "epochs": train.get("epochs"),
        "epoch_seconds": train.get("epoch_seconds"),
        "evaluation_report": evaluation.get("report_path") or evaluation.get("leaderboard_path"),
        "metrics_path": evaluation.get("metrics_path"),
        "drift_detected": drift.get("drift_detected"),
        "drift_reasons": drift.get("reasons", []),
        "drift_reports": {k: v for k, v in drift.items() if k.endswith(("_html", "_json", "reports"))},
        "stage_seconds": _read(run_dir / "timings.json"),
    }


def deployment_champions(index: RunIndex, names: list[str]) -> dict[str, Any]:
    """``{deployment: champion record or None}`` for the declared deployments (and any in the index)."""
    out: dict[str, Any] = {}
    for name in sorted(set(names) | set(index.deployments())):
        champion = index.champion(name)
        out[name] = champion.to_dict() if champion else None
    return out


def write_summary(layout: Layout, cfg: PipelineConfig) -> Path:
    runs = latest_completed_runs(layout)
    index = RunIndex.for_layout(layout, cfg.run_index.url)
    models = {name: model_record(run_dir) for name, run_dir in runs.items()}
    baselines: dict[str, Any] = {}
    for run_dir in runs.values():
        baselines.update(_read(run_dir / "evaluation.json").get("baselines", {}))
    versions = sorted({m["data_version"] for m in models.values() if m["data_version"]})
    summary = {
        "generated_at": datetime.now(UTC).isoformat(),
        "data_version": versions[-1] if len(versions) == 1 else versions,
        "deployments": deployment_champions(index, list(cfg.deployments)),
        "models": models,
        "baselines": {name: {"metrics": metrics} for name, metrics in baselines.items()},
        "leaderboard": str(layout.home / "leaderboard.md"),
    }
    atomic_write_text(layout.home / "leaderboard.md", leaderboard_markdown(summary))
    return atomic_write_json(layout.summary, summary)


def leaderboard_markdown(summary: dict[str, Any]) -> str:
    serving = {champion["model_tag"]: name for name, champion in summary["deployments"].items() if champion}

    def status(rec: dict[str, Any]) -> str:
        live = serving.get(rec.get("bento_tag"))
        if live:
            return f"serving in {live!r}"
        return "promoted, since replaced" if rec["promoted"] else "no"

    rows = [(name, rec["metrics"], status(rec)) for name, rec in summary["models"].items()]
    rows += [(name, rec["metrics"], "baseline") for name, rec in summary["baselines"].items()]
    rows.sort(key=lambda row: -row[1].get("ndcg@10", 0.0))
    header = "| model | " + " | ".join(LEADERBOARD_METRICS) + " | promoted (newest run) |"
    lines = [header, "|" + "---|" * (len(LEADERBOARD_METRICS) + 2)]
    for name, metrics, promoted in rows:
        values = " | ".join(f"{metrics.get(m, float('nan')):.4f}" for m in LEADERBOARD_METRICS)
        lines.append(f"| {name} | {values} | {promoted} |")
    protocols = sorted({rec["protocol"] for rec in summary["models"].values() if rec["protocol"]})
    live = [
        f"- deployment `{name}`: {c['model']} ({c['model_tag']}), {c['metric']} {c['value']:.4f} on data "
        f"{c['data_version']} ({c['protocol']}), {c['action']} at {c['at']}"
        if c
        else f"- deployment `{name}`: no champion yet"
        for name, c in summary["deployments"].items()
    ]
    return (
        f"Data version {summary['data_version']}, protocol {', '.join(protocols)}\n\n"
        + "\n".join(lines)
        + "\n\nServing now:\n"
        + "\n".join(live)
        + "\n"
    )
