"""The run's evaluation report: one self-contained HTML page (``report.html`` in the run directory).

Built from what evaluation wrote (``metrics.json`` and ``per_user.npz``) and, when the run has one,
the drift monitor's ``drift.json``; rewritten when the run finishes so the drift links appear. The
page holds inline CSS only: no script, no external asset, so it opens from a file anywhere.

Intervals: a per-user bootstrap. Test users are resampled with replacement ``N_RESAMPLES`` times
(seeded), each resample's mean is taken, and the 2.5 and 97.5 percentiles of those means bound a 95%
interval. A lift over a baseline is the paired per-user difference (model minus baseline, same users,
same resamples); its interval says whether the difference is distinguishable from 0. Catalogue-level
metrics (coverage, Gini) and pointwise ones (RMSE, AUC) have no per-user value and no interval.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import atomic_write_text

PER_USER_FILE = "per_user.npz"
REPORT_FILE = "report.html"
N_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
SMALL_SAMPLE_USERS = 200  # fewer test users than this: intervals are wide, the page says so
HEADLINE = ("recall@10", "ndcg@10", "hr@10", "mrr@10", "precision@10")


def bootstrap_means(columns: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(n_resamples, m) means of the (n_users, m) ``columns`` over users resampled with replacement.

    One resample draws how often each user is taken (multinomial counts), shared by every column, so
    paired differences stay paired. NaN entries (a user without a value) are left out of that
    column's mean.
    """
    values = np.asarray(columns, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    if n == 0:
        return np.full((n_resamples, values.shape[1]), math.nan)
    known = ~np.isnan(values)
    filled = np.where(known, values, 0.0)
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, values.shape[1]))
    chunk = max(1, min(n_resamples, 2_000_000 // n))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + size] = (counts @ filled) / (counts @ known)
    return out


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values`` (module docstring)."""
    means = bootstrap_means(values, n_resamples, seed)[:, 0]
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    return float(low), float(high)


def write_report(run_dir: Path | str) -> Path:
    """Render ``run_dir/report.html`` from the run's evaluation (and drift, when present) files."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    per_user_path = run_dir / PER_USER_FILE
    per_user: dict[str, np.ndarray] = {}
    if per_user_path.exists():
        with np.load(per_user_path) as data:
            per_user = {key: data[key] for key in data.files}
    drift_path = run_dir / "drift.json"
    drift = json.loads(drift_path.read_text()) if drift_path.exists() else None
    return atomic_write_text(run_dir / REPORT_FILE, render_report(record, per_user, drift, run_dir))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _ci(low: float, high: float) -> str:
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metric_order(metrics: dict[str, float]) -> list[str]:
    from training.evaluate import LEADERBOARD_COLUMNS

    ordered = [name for name in LEADERBOARD_COLUMNS if name in metrics]
    return ordered + sorted(name for name in metrics if name not in ordered)


def _intervals(columns: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """95% intervals of every column, from one shared set of resamples."""
    if not columns:
        return {}
    names = list(columns)
    means = bootstrap_means(np.stack([columns[n] for n in names], axis=1))
    tail = (1.0 - LEVEL) / 2 * 100
    with np.errstate(all="ignore"):
        bounds = np.nanpercentile(means, [tail, 100 - tail], axis=0)
    return {name: (float(bounds[0, i]), float(bounds[1, i])) for i, name in enumerate(names)}


def render_report(
    record: dict[str, Any], per_user: dict[str, np.ndarray], drift: dict[str, Any] | None, run_dir: Path
) -> str:
    """The page's HTML for ``metrics.json``'s ``record``, the per-user arrays and ``drift.json``."""
    model, metrics, baselines = record["model"], record["metrics"], record.get("baselines", {})
    n_users = int(record["n_users"])
    users = per_user.get("users")
    own = {name: per_user[name] for name in metrics if name in per_user}

    # Paired differences where the baseline's per-user values cover the same users in the same order.
    paired: dict[str, np.ndarray] = {}
    for base, values in baselines.items():
        base_users = per_user.get(f"{base}::users")
        if users is None or base_users is None or not np.array_equal(users, base_users):
            continue
        for name in HEADLINE:
            key = f"{base}::{name}"
            if name in own and key in per_user and name in values:
                paired[f"lift::{key}"] = own[name] - per_user[key]
    ci = _intervals({**own, **paired})

    small = n_users < SMALL_SAMPLE_USERS
    warning = (
        f'<p class="warn">Small sample: only {n_users} test users. The intervals below are wide and a '
        "difference between models can be chance; evaluate on more users before trusting a ranking.</p>"
        if small
        else ""
    )
    rows = []
    for name in _metric_order(metrics):
        if name in ci:
            low, high = ci[name]
            counted = int(np.sum(~np.isnan(own[name])))
            interval, basis = _ci(low, high), f"{counted} users"
        else:
            interval, basis = "no interval", "catalogue-level or pointwise: no per-user value"
        rows.append([html.escape(name), _fmt(metrics[name]), interval, basis])
    metric_table = _table(["metric", "value", "95% CI (bootstrap over users)", "rests on"], rows)

    lift_sections = []
    for base, values in baselines.items():
        lift_rows = []
        for name in HEADLINE:
            if name not in metrics or name not in values:
                continue
            diff = metrics[name] - values[name]
            relative = f"{diff / values[name] * 100:+.1f}%" if values[name] else "n/a"
            key = f"lift::{base}::{name}"
            if key in ci:
                low, high = ci[key]
                excludes = "yes" if low > 0 or high < 0 else "no"
                interval = _ci(low, high)
            else:
                excludes, interval = "no interval (no per-user baseline values)", "n/a"
            lift_rows.append(
                [html.escape(name), _fmt(values[name]), f"{diff:+.4f}", relative, interval, excludes]
            )
        header = ["metric", f"{base}", f"{model} - {base}", "relative lift", "95% CI of the difference"]
        header.append("CI excludes 0")
        lift_sections.append(f"<h3>Over {html.escape(base)}</h3>" + _table(header, lift_rows))

    return PAGE.format(
        title=html.escape(f"Evaluation: {model}"),
        model=html.escape(model),
        data_version=html.escape(str(record.get("data_version", "?"))),
        protocol=html.escape(str(record.get("protocol", "?"))),
        n_users=n_users,
        resamples=N_RESAMPLES,
        seed=SEED,
        warning=warning,
        metrics=metric_table,
        lifts="".join(lift_sections) or "<p>No baseline was evaluated on this split.</p>",
        drift=_drift_section(drift, metrics, n_users, run_dir),
    )


def _drift_section(
    drift: dict[str, Any] | None, metrics: dict[str, float], n_users: int, run_dir: Path
) -> str:
    explanation = (
        "<p>The drift monitor's ranking report (Evidently) scores a different population: the users of the "
        "newest window of events, each ranked from their state at the window's start and judged on what "
        "they did within that window. This page scores the split's test part (its own users and held-out "
        "events, with everything before them as history). Different users and different targets: the two "
        "NDCG@10 values answer different questions and are not expected to agree.</p>"
    )
    if drift is None:
        return explanation + "<p>This run has no drift report.</p>"
    links = []
    for key, label in (
        ("data_drift_html", "data drift"),
        ("prediction_drift_html", "prediction drift"),
        ("ranking_html", "ranking quality (Evidently)"),
    ):
        path = drift.get(key)
        if path:
            href = os.path.relpath(Path(path), run_dir)
            links.append(f'<li><a href="{html.escape(href)}">{label}</a></li>')
    window = " to ".join(drift.get("current_window") or []) or "?"
    ranking_ndcg = drift.get("ranking_metrics", {}).get("ndcg@10", drift.get("current_ndcg10"))
    numbers = _table(
        ["", "NDCG@10", "users", "targets"],
        [
            [
                "this evaluation (test part)",
                _fmt(metrics.get("ndcg@10")),
                str(n_users),
                "held-out test events",
            ],
            [
                "drift monitor (Evidently ranking report)",
                _fmt(ranking_ndcg),
                str(drift.get("ranking_users", "?")),
                html.escape(f"events of the newest window ({window})"),
            ],
        ],
    )
    verdict = html.escape(drift.get("verdict") or "")
    return (
        f"<p>Drift detected: {'yes' if drift.get('drift_detected') else 'no'}. {verdict}</p>"
        + ("<ul>" + "".join(links) + "</ul>" if links else "")
        + numbers
        + explanation
    )


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child, td:last-child {{ text-align: left; }}
.warn {{ background: #fff3cd; border: 1px solid #e0c36a; padding: 0.5em 0.8em; }}
.meta td {{ text-align: left; }}
</style></head><body>
<h1>{title}</h1>
<table class="meta">
<tr><td>model</td><td>{model}</td></tr>
<tr><td>data version</td><td>{data_version}</td></tr>
<tr><td>protocol</td><td>{protocol}</td></tr>
<tr><td>test users</td><td>{n_users}</td></tr>
</table>
<p>Full ranking over the whole catalogue. Each number is a mean over the {n_users} test users; its 95%
interval comes from resampling those users with replacement ({resamples} resamples, seed {seed}).</p>
<h2>Metrics</h2>
{warning}
{metrics}
<h2>Lifts over the baselines</h2>
<p>Same split, same users. The difference is model minus baseline; its interval is the bootstrap of the
paired per-user difference. When the interval excludes 0 the lift is unlikely to be chance.</p>
{warning}
{lifts}
<h2>Drift monitor and its ranking report</h2>
{drift}
</body></html>
"""
