"""Package and promote without ``bentoml build``: stored model contents, the champion swap and its guards,
rollback."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.artifacts import Evaluation, GateDecision, RunRecord, TrainResult
from pipeline.layout import Layout
from pipeline.run_index import RunIndex
from serving.package import (
    ARTIFACT_SUBDIR,
    CorruptModel,
    RollbackError,
    find_artifact_dir,
    package_model,
    promote_candidate,
    rollback,
    stored_model_dir,
    verify_checksums,
)
from tests.records import make_record
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


def _decision(promoted: bool, ndcg: float, champion_tag: str | None) -> GateDecision:
    return GateDecision(
        model="popularity",
        deployment="default",
        eligible=True,
        promoted=promoted,
        reason="gate says so",
        metric="ndcg@10",
        candidate_value=ndcg,
        popularity_value=0.01,
        champion_tag=champion_tag,
    )


def _record(layout: Layout, run_id: str, ndcg: float) -> RunRecord:
    return make_record(
        f"popularity/{run_id}",
        run_dir=str(layout.run("popularity", run_id)),
        split_dir="/splits/s",
        feature_namespace="recforge_dv1_h50",
        metrics={"ndcg@10": ndcg},
    )


def _promote(layout: Layout, run_id: str, ndcg: float, champion_tag: str | None) -> GateDecision:
    packaged = package_model(*_candidate(layout.home.parent, run_id, ndcg), _decision(True, ndcg, champion_tag),
                             layout, False)  # fmt: skip
    return promote_candidate(packaged, _record(layout, run_id, ndcg), layout, RunIndex.for_layout(layout))


def test_packaging_stores_a_checksummed_model_and_changes_no_deployment(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    result, evaluation = _candidate(tmp_path, "r1", 0.2)
    assert find_artifact_dir(result) == result.run_dir / "model"
    decision = package_model(result, evaluation, _decision(True, 0.2, None), layout, build_bento=False)
    name, version = decision.bento_tag.split(":")
    assert name == "recforge-popularity"
    model_dir = stored_model_dir(layout, decision.bento_tag)
    assert model_dir == layout.bentoml_home / "models" / name / version
    assert (model_dir / ARTIFACT_SUBDIR / "model.json").is_file()
    info = (model_dir / "model.yaml").read_text()
    assert "dv1" in info and "temporal" in info and "user_activity" in info and "git_commit" in info
    verify_checksums(model_dir)
    assert RunIndex.for_layout(layout).champion("default") is None  # packaging is not promotion


def test_truncated_weights_are_named_by_the_checksum_check(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    result, evaluation = _candidate(tmp_path, "r1", 0.2)
    tag = package_model(result, evaluation, _decision(True, 0.2, None), layout, False).bento_tag
    model_dir = stored_model_dir(layout, tag)
    victim = next(p for p in (model_dir / ARTIFACT_SUBDIR).iterdir() if p.suffix in (".npy", ".npz", ".pt"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CorruptModel, match=victim.name):
        verify_checksums(model_dir)


def test_promotion_appends_to_the_deployment_history(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    first = _promote(layout, "r1", 0.2, None)
    index = RunIndex.for_layout(layout)
    champion = index.champion("default")
    assert first.promoted and champion.model_tag == first.bento_tag and champion.action == "promote"
    assert champion.metrics == {"ndcg@10": 0.2} and champion.data_version == "dv1"
    assert champion.feature_namespace == "recforge_dv1_h50" and champion.split_dir == "/splits/s"
    assert Path(champion.artifact_dir, "model.json").is_file()
    second = _promote(layout, "r2", 0.3, first.bento_tag)
    assert second.promoted and [e.model_tag for e in index.history("default")] == [
        first.bento_tag,
        second.bento_tag,
    ]
    assert index.history("default")[-1].previous_tag == first.bento_tag


def test_stale_promotion_does_not_replace_a_newer_champion(tmp_path: Path) -> None:
    """Two runs judged against the same (absent) champion: the second must not win by writing last."""
    layout = Layout(tmp_path / "home")
    best = _promote(layout, "r1", 0.3, None)
    late = _promote(layout, "r2", 0.2, None)
    assert not late.promoted and "another run was promoted meanwhile" in late.reason
    assert RunIndex.for_layout(layout).champion("default").model_tag == best.bento_tag
    # A candidate that was judged against the current champion and beat it does replace it.
    newer = _promote(layout, "r3", 0.35, best.bento_tag)
    assert newer.promoted and RunIndex.for_layout(layout).champion("default").model_tag == newer.bento_tag


def test_rollback_restores_the_previous_or_a_named_champion(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    index = RunIndex.for_layout(layout)
    with pytest.raises(RollbackError, match="no champion yet"):
        rollback(index, layout, "default")
    a = _promote(layout, "r1", 0.2, None).bento_tag
    with pytest.raises(RollbackError, match="one champion only"):
        rollback(index, layout, "default")
    (layout.feast_namespace("recforge_dv1_h50") / "online.db").parent.mkdir(parents=True)
    (layout.feast_namespace("recforge_dv1_h50") / "online.db").write_bytes(b"")
    b = _promote(layout, "r2", 0.3, a).bento_tag
    c = _promote(layout, "r3", 0.4, b).bento_tag
    event = rollback(index, layout, "default")
    assert event.action == "rollback" and event.model_tag == b and event.previous_tag == c
    assert index.champion("default").model_tag == b and event.value == 0.3  # b's own record, not c's
    assert rollback(index, layout, "default", to_tag=a).model_tag == a
    assert rollback(index, layout, "default").model_tag == b  # "previous" = the one live before
    with pytest.raises(RollbackError, match="never champion"):
        rollback(index, layout, "default", to_tag="recforge-popularity:nope")
    with pytest.raises(RollbackError, match="already is the champion"):
        rollback(index, layout, "default", to_tag=b)
    shutil.rmtree(stored_model_dir(layout, c))
    with pytest.raises(RollbackError, match="not in the BentoML store"):
        rollback(index, layout, "default", to_tag=c)
    assert [e.action for e in index.history("default")] == ["promote"] * 3 + ["rollback"] * 3


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    result, _ = _candidate(tmp_path, "r1", 0.2)
    broken = dataclasses.replace(
        result, run_dir=tmp_path / "nowhere", checkpoint=tmp_path / "nowhere" / "x.ckpt"
    )
    with pytest.raises(FileNotFoundError, match="model.json"):
        find_artifact_dir(broken)
