"""Promotion gate: deployment eligibility, the Popularity rule, and the champion judged on the same split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from orchestration.runs import ensure_run_config
from pipeline.artifacts import DeploymentEvent, Evaluation, RunConfig, Split
from pipeline.config import PipelineConfig, SplitConfig, TrainerConfig
from pipeline.layout import Layout
from tests.records import make_event
from training.evaluate import evaluate_run, judge_on_split
from training.gate import decide
from training.split import make_split
from training.train import train_model

CFG = PipelineConfig.model_validate({"deployments": {"default": {"source": {}, "protocol": "temporal"}}})


def _evaluation(ndcg: float, popularity: float = 0.10) -> Evaluation:
    return Evaluation(
        model="bpr",
        metrics_path=Path("m.json"),
        leaderboard_path=Path("l.md"),
        metrics={"ndcg@10": ndcg},
        baselines={"popularity": {"ndcg@10": popularity}, "itemknn": {"ndcg@10": 0.12}},
        protocol="temporal",
        data_version="v1",
    )


def _split(directory: str = "s1") -> Split:
    p = Path(directory)
    return Split("v1", "temporal", 1, p, p / "t", p / "v", p / "x", p / "i", p / "u", {})


def _run_config(tmp_path: Path, cfg: PipelineConfig = CFG, name: str = "r1") -> RunConfig:
    return ensure_run_config(tmp_path / name, "bpr", name, cfg)


def _champion(value: float, split_dir: str = "s1", artifact_dir: str = "") -> DeploymentEvent:
    return make_event(
        "recforge-sasrec:abc", value=value, data_version="v0", split_dir=split_dir, artifact_dir=artifact_dir
    )


def test_rejects_candidate_below_popularity_lift(tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"gate": CFG.gate.model_copy(update={"min_lift_over_popularity": 1.05})})
    decision = decide(_evaluation(0.104), _split(), _run_config(tmp_path, cfg), cfg, None)
    assert not decision.promoted and decision.eligible
    assert "0.1040" in decision.reason and "0.1050" in decision.reason
    assert decision.popularity_value == 0.10 and decision.champion_value is None


def test_promotes_without_champion(tmp_path: Path) -> None:
    decision = decide(_evaluation(0.2), _split(), _run_config(tmp_path), CFG, None)
    assert decision.promoted and "no champion" in decision.reason
    assert decision.candidate_value == 0.2 and decision.headline().startswith("PROMOTED bpr")


def test_champion_on_the_same_split_uses_its_recorded_number(tmp_path: Path) -> None:
    rc = _run_config(tmp_path)
    tied = decide(_evaluation(0.21), _split(), rc, CFG, _champion(0.21))
    assert not tied.promoted and tied.champion_judged == "recorded"  # a tie keeps the incumbent
    assert "0.2100 <=" in tied.reason and tied.headline().startswith("NOT PROMOTED")
    assert decide(_evaluation(0.22), _split(), rc, CFG, _champion(0.21)).promoted
    lenient = CFG.model_copy(update={"gate": CFG.gate.model_copy(update={"champion_tolerance": 0.02})})
    assert decide(_evaluation(0.20), _split(), rc, lenient, _champion(0.21)).promoted


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"split.protocol": "random_holdout"}, "split protocol random_holdout != temporal"),
        ({"source.sample_users": 600}, "source.sample_users 600 != None"),
        (
            {"source.path": "/data/other.csv", "source.kind": "events"},
            "source.path '/data/other.csv' != None",
        ),
    ],
)
def test_a_run_that_does_not_match_its_deployment_is_never_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict, expected: str
) -> None:
    """Another protocol, a slice or another source: recorded, never promoted, whatever the numbers."""
    config = tmp_path / "pipeline.yaml"
    config.write_text("source: {kind: recbole_ml100k, name: ml-100k}\n")
    monkeypatch.setenv("RECFORGE_CONFIG", str(config))
    from pipeline.config import load_config

    cfg = load_config(overrides=overrides)
    rc = _run_config(tmp_path, cfg)
    assert not rc.eligible and expected in rc.eligibility and "never promoted" in rc.eligibility
    decision = decide(_evaluation(0.9), _split(), rc, cfg, None)  # far better than anything, no champion
    assert not decision.promoted and not decision.eligible and expected in decision.reason


def test_run_config_is_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage retried after someone edited the YAML runs with the settings the run started with."""
    from pipeline.config import load_config

    config = tmp_path / "pipeline.yaml"
    config.write_text("trainer: {max_epochs: 3}\n")
    monkeypatch.setenv("RECFORGE_CONFIG", str(config))
    first = ensure_run_config(tmp_path / "run", "bpr", "run", load_config())
    config.write_text("trainer: {max_epochs: 99}\n")
    again = ensure_run_config(tmp_path / "run", "bpr", "run", load_config(), {"embedding_size": 8})
    assert again == first and again.config["trainer"]["max_epochs"] == 3
    written = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert written["kind"] == "RunConfig" and written["schema_version"] == 1
    assert written["config_hash"] == first.config_hash and len(first.config_hash) == 16


def test_deployments_cannot_be_redefined_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import ConfigError, load_config

    monkeypatch.setenv("RECFORGE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="fixed in the config file"):
        load_config(overrides={"deployments.default.protocol": "random_holdout"})
    with pytest.raises(ConfigError, match="not declared"):
        load_config(overrides={"deployment": "nope"})


# ---------------------------------------------------------------- the champion re-scored on new data


def _trained(feature_set, layout: Layout, cfg: SplitConfig, run: str) -> tuple[Split, Path]:
    split = make_split(feature_set, cfg, layout)
    trainer = TrainerConfig(max_epochs=2, patience=2, num_threads=1)
    torch.manual_seed(0)
    params = {"embedding_size": 16, "lr": 0.01, "batch_size": 256}
    result = train_model("bpr", split, params, trainer, layout.run("bpr", run))
    return split, result.run_dir


def _permuted_copy(split: Split, target: Path) -> Split:
    """The same split (same parts, same examples) with its user and item index order reversed."""
    shutil.copytree(split.dir, target)
    for name in ("item_ids.json", "user_ids.json"):
        ids = json.loads((target / name).read_text())
        (target / name).write_text(json.dumps(ids[::-1]))
    return Split.from_dict(
        {
            **split.to_dict(),
            "dir": str(target),
            **{part: str(target / f"{part}.parquet") for part in ("train", "valid", "test")},
            "item_ids": str(target / "item_ids.json"),
            "user_ids": str(target / "user_ids.json"),
        }
    )


def test_rescoring_maps_ids_across_index_spaces(feature_set, layout: Layout, tmp_path: Path) -> None:
    """On its own split the re-score reproduces the evaluation exactly; on a copy whose index order is
    reversed (same users, items and parts) too, which only holds if every id is mapped right."""
    from pipeline.artifacts import TrainResult
    from pipeline.config import EvaluationConfig

    split, run_dir = _trained(feature_set, layout, SplitConfig(protocol="temporal", seed=3), "a")
    cfg = EvaluationConfig(ks=[10, 20])
    evaluated = evaluate_run(TrainResult.load(run_dir / "train.json"), split, cfg).metrics
    own = judge_on_split(run_dir / "model", run_dir / "model", split, cfg)
    # The judgement re-scores the ranking metrics (what the gate compares); the evaluation also
    # reports beyond-accuracy ones (novelty, diversity), which the gate does not read.
    assert {"ndcg@10", "recall@20"} <= set(own.champion) <= set(evaluated)
    recorded = {k: evaluated[k] for k in own.champion}
    assert own.champion == pytest.approx(recorded, abs=1e-12)
    assert own.candidate is None and own.withheld_pairs == 0
    permuted = _permuted_copy(split, tmp_path / "permuted")
    assert judge_on_split(run_dir / "model", run_dir / "model", permuted, cfg).champion == pytest.approx(
        recorded, abs=1e-6
    )


def test_gate_rescores_a_champion_judged_on_another_split(
    feature_set, layout: Layout, tmp_path: Path
) -> None:
    """The champion's number in the decision is its score on the candidate's split, not its old one.

    Under random_holdout the new split's test part holds events the old champion trained on: they are
    withheld from both models, and the candidate's number is re-computed on that test set too.
    """
    from pipeline.artifacts import TrainResult

    old_split, old_run = _trained(feature_set, layout, SplitConfig(protocol="random_holdout", seed=3), "old")
    new_split, new_run = _trained(feature_set, layout, SplitConfig(protocol="random_holdout", seed=4), "new")
    assert new_split.dir != old_split.dir
    judged = judge_on_split(old_run / "model", new_run / "model", new_split, CFG.evaluation)
    assert judged.withheld_pairs > 0 and judged.candidate is not None
    assert 0 < judged.users <= new_split.counts["test_users"]
    old_eval = evaluate_run(TrainResult.load(old_run / "train.json"), old_split, CFG.evaluation)
    champion = _champion(
        old_eval.metrics["ndcg@10"], split_dir=str(old_split.dir), artifact_dir=str(old_run / "model")
    )
    cfg = CFG.model_copy(
        update={
            "deployments": {
                "default": CFG.deployments["default"].model_copy(update={"protocol": "random_holdout"})
            }
        }
    )
    cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"protocol": "random_holdout"})})
    rc = _run_config(tmp_path, cfg)
    decision = decide(_evaluation(0.5, popularity=0.01), new_split, rc, cfg, champion, new_run / "model")
    assert decision.champion_judged == "rescored"
    assert decision.champion_value == pytest.approx(judged.champion["ndcg@10"])
    assert decision.champion_metrics == pytest.approx(judged.champion)
    assert decision.candidate_value == pytest.approx(judged.candidate["ndcg@10"])  # not the recorded 0.5
    assert decision.promoted == (judged.candidate["ndcg@10"] > judged.champion["ndcg@10"])
    assert "re-scored on this run's split" in decision.reason and "withheld from both" in decision.reason
    # A later temporal split of the same data: its train + valid part covers the champion's whole
    # training window, so nothing has to be withheld and the candidate's own number stands.
    t_old, t_old_run = _trained(feature_set, layout, SplitConfig(protocol="temporal", seed=3), "t-old")
    t_new, t_new_run = _trained(
        feature_set, layout, SplitConfig(protocol="temporal", seed=3, test_share=0.2), "t-new"
    )
    temporal = judge_on_split(t_old_run / "model", t_new_run / "model", t_new, CFG.evaluation)
    assert temporal.withheld_pairs == 0 and temporal.candidate is None
