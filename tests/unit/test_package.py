"""The package stage without ``bentoml build``: BentoML model contents, champion swap and its guards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.artifacts import Evaluation, GateDecision, TrainResult
from pipeline.layout import Layout
from serving.package import ARTIFACT_SUBDIR, find_artifact_dir, package_model
from training.artifact import save_model_artifact
from training.models import build_model


def _candidate(tmp: Path, run_id: str, ndcg: float) -> tuple[TrainResult, Evaluation]:
    train = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=np.float32))
    module = build_model("popularity", 2, 3).fit(train)
    run_dir = tmp / "runs" / "popularity" / run_id
    save_model_artifact(run_dir / "model", "popularity", module, {}, ["a", "b", "c"], ["x", "y"], train)
    result = TrainResult("popularity", run_dir, run_dir / "model" / "weights.pt", {}, 0, 0.0, 0.0, ndcg, 0.0)
    evaluation = Evaluation(
        "popularity",
        run_dir / "metrics.json",
        run_dir / "leaderboard.md",
        {"ndcg@10": ndcg},
        {"popularity": {"ndcg@10": 0.01}},
        "temporal",
        "dv1",
    )
    return result, evaluation


def _decision(promoted: bool, ndcg: float, champion: float | None) -> GateDecision:
    return GateDecision("popularity", promoted, "gate says so", ndcg, 0.01, champion)


def test_promoted_candidate_becomes_champion_with_metadata(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    result, evaluation = _candidate(tmp_path, "r1", 0.2)
    assert find_artifact_dir(result) == result.run_dir / "model"
    decision = package_model(result, evaluation, _decision(True, 0.2, None), layout, build_bento=False)
    name, version = decision.bento_tag.split(":")
    assert name == "recforge-popularity"
    model_dir = layout.bentoml_home / "models" / name / version
    assert (model_dir / ARTIFACT_SUBDIR / "model.json").is_file()
    info = (model_dir / "model.yaml").read_text()
    assert "dv1" in info and "temporal" in info and "user_activity" in info and "git_commit" in info
    champion = json.loads(layout.champion.read_text())
    assert champion["bento_tag"] == decision.bento_tag and champion["bento"] is None
    assert champion["metrics"] == {"ndcg@10": 0.2} and champion["data_version"] == "dv1"
    assert {"model", "protocol", "promoted_at", "reason"} <= set(champion)


def test_rejected_candidate_leaves_champion_alone(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    first = package_model(*_candidate(tmp_path, "r1", 0.2), _decision(True, 0.2, None), layout, False)
    before = layout.champion.read_text()
    second = package_model(*_candidate(tmp_path, "r2", 0.1), _decision(False, 0.1, 0.2), layout, False)
    assert second.bento_tag and second.bento_tag != first.bento_tag and not second.promoted
    assert layout.champion.read_text() == before


def test_stale_promotion_does_not_replace_a_better_champion(tmp_path: Path) -> None:
    """Two DAGs gated against the same (absent) champion: the worse one must not win by writing last."""
    layout = Layout(tmp_path / "home")
    best = package_model(*_candidate(tmp_path, "r1", 0.3), _decision(True, 0.3, None), layout, False)
    late = package_model(*_candidate(tmp_path, "r2", 0.2), _decision(True, 0.2, None), layout, False)
    assert not late.promoted and "promoted meanwhile" in late.reason
    assert json.loads(layout.champion.read_text())["bento_tag"] == best.bento_tag
    # A candidate that was gated against the current champion and beat it does replace it.
    newer = package_model(*_candidate(tmp_path, "r3", 0.35), _decision(True, 0.35, 0.3), layout, False)
    assert newer.promoted and json.loads(layout.champion.read_text())["bento_tag"] == newer.bento_tag


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    result, _ = _candidate(tmp_path, "r1", 0.2)
    broken = dataclasses.replace(
        result, run_dir=tmp_path / "nowhere", checkpoint=tmp_path / "nowhere" / "x.ckpt"
    )
    with pytest.raises(FileNotFoundError, match="model.json"):
        find_artifact_dir(broken)
