"""The run's HTML evaluation report: bootstrap intervals, the page's content, and per-user values that
reproduce the aggregate metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from training.metrics import METRIC_NAMES, RankingAccumulator
from training.report import PER_USER_FILE, REPORT_FILE, bootstrap_ci, write_report


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(1)
    few = (rng.random(50) < 0.3).astype(float)
    many = (rng.random(5000) < 0.3).astype(float)
    widths = []
    for values in (few, many):
        low, high = bootstrap_ci(values)
        assert low < values.mean() < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 4  # ~ 1 / sqrt(n): 100x the users, a tenth of the width
    assert bootstrap_ci(few) == bootstrap_ci(few)  # seeded


def test_accumulator_per_user_values_reproduce_the_means() -> None:
    torch.manual_seed(0)
    scores = torch.randn(7, 11)
    truth = torch.rand(7, 11) < 0.3
    truth[:, 0] = False
    acc = RankingAccumulator(10, [2, 5], keep_per_user=True)
    acc.update(scores[:4], truth[:4], None)
    acc.update(scores[4:], truth[4:], None)
    means = acc.compute()
    values = acc.per_user_values()
    assert set(values) == {f"{m}@{k}" for m in METRIC_NAMES for k in (2, 5)}
    for name, per_user in values.items():
        assert per_user.shape == (7,)
        assert per_user.mean() == pytest.approx(means[name], abs=1e-6)  # float32 sums


def _run_dir(tmp_path: Path, n_users: int) -> tuple[Path, dict[str, float]]:
    rng = np.random.default_rng(0)
    users = np.arange(n_users)
    model = {"ndcg@10": rng.random(n_users), "recall@10": rng.random(n_users)}
    base = {"ndcg@10": model["ndcg@10"] * 0.5, "recall@10": model["recall@10"] * 0.5}
    metrics = {name: float(v.mean()) for name, v in model.items()} | {"coverage@10": 0.25, "rmse": 0.9}
    record = {
        "model": "bpr",
        "protocol": "temporal",
        "data_version": "abc123",
        "n_users": n_users,
        "metrics": metrics,
        "baselines": {
            "popularity": {name: float(v.mean()) for name, v in base.items()},
            "itemknn": {"ndcg@10": 0.01, "recall@10": 0.02},  # no per-user values: no interval
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    arrays = {"users": users, **model, "popularity::users": users}
    arrays |= {f"popularity::{name}": values for name, values in base.items()}
    np.savez(tmp_path / PER_USER_FILE, **arrays)
    return tmp_path, metrics


def test_report_holds_every_metric_with_its_interval_and_no_external_asset(tmp_path: Path) -> None:
    run_dir, metrics = _run_dir(tmp_path, 500)
    page = write_report(run_dir).read_text()
    assert (run_dir / REPORT_FILE).exists()
    for name, value in metrics.items():
        row = re.search(rf"<td>{re.escape(name)}</td><td>([0-9.]+)</td><td>([^<]*)</td>", page)
        assert row, name
        assert float(row.group(1)) == pytest.approx(value, abs=5e-5)  # the aggregate of metrics.json
        if name in ("ndcg@10", "recall@10"):
            low, high = map(float, re.findall(r"[0-9.]+", row.group(2)))
            assert low < value < high
        else:
            assert row.group(2) == "no interval"
    assert "500" in page and "abc123" in page and "temporal" in page
    assert "<script" not in page.lower() and "http" not in page.lower()
    assert "Small sample" not in page
    # The paired lift over popularity is clearly positive; itemknn has no per-user values.
    assert re.search(r"<td>ndcg@10</td>(<td>[^<]*</td>){4}<td>yes</td>", page)
    assert "no interval (no per-user baseline values)" in page
    assert "different users" in page.lower() and "no drift report" in page


def test_report_warns_on_a_small_sample_and_links_the_drift_report(tmp_path: Path) -> None:
    run_dir, _ = _run_dir(tmp_path, 40)
    drift = {
        "drift_detected": False,
        "ranking_metrics": {"ndcg@10": 0.123456},
        "ranking_users": 77,
        "current_window": ["2020-01-01", "2020-02-01"],
        "ranking_html": str(run_dir / "drift" / "ranking.html"),
    }
    (run_dir / "drift.json").write_text(json.dumps(drift))
    page = write_report(run_dir).read_text()
    assert "Small sample: only 40 test users" in page
    assert 'href="drift/ranking.html"' in page
    assert "0.1235" in page and "<td>77</td>" in page
