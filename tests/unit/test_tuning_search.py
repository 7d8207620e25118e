"""The TPE search of the tuning stage (orchestration/search.py through orchestration/tuning.py), without
Airflow: the declared space, rounds that learn from the previous ones, a persisted study, pruning on
validation, and a search that never reads the test part."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from orchestration import search, tuning
from pipeline.config import SplitConfig, load_model_params, load_search_space
from training.split import make_split

torch.set_num_threads(1)


def test_the_search_space_reads_lists_and_ranges_and_rejects_the_rest(model_configs: Path):
    (model_configs / "bpr.yaml").write_text(
        "lr: 0.002\nsearch_space:\n  lr: {low: 0.0001, high: 0.1, log: true}\n"
        "  embedding_size: {low: 16, high: 128, step: 16}\n  batch_size: [256, 512]\n"
    )
    assert load_model_params("bpr") == {"lr": 0.002}  # the space is not a hyperparameter
    space = search.search_space(load_search_space("bpr") or {})
    assert space["lr"] == FloatDistribution(0.0001, 0.1, log=True)
    assert space["embedding_size"] == IntDistribution(16, 128, step=16)
    assert space["batch_size"] == CategoricalDistribution([256, 512])
    for bad, message in (
        ({"lr": {"low": 0.1, "high": 0.01}}, "must be below"),
        ({"lr": {"low": 0.1, "high": 1.0, "scale": "log"}}, "unknown keys"),
        ({"lr": 0.1}, "expected a list of values"),
        ({"lr": []}, "empty list"),
    ):
        with pytest.raises(ValueError, match=message):
            search.search_space(bad)
    (model_configs / "bad.yaml").write_text("search_space: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml: search_space must be a non-empty mapping"):
        load_search_space("bad")


def test_the_budget_is_spread_over_the_rounds_earlier_rounds_first():
    assert [tuning.round_share(7, 3, r) for r in range(3)] == [3, 2, 2]
    assert [tuning.round_share(2, 3, r) for r in range(3)] == [1, 1, 0]
    assert sum(tuning.round_share(12, 5, r) for r in range(5)) == 12


def _overrides(home: Path, **more) -> dict:
    return {
        "home": str(home),
        "split.protocol": "random_holdout",
        "trainer.max_epochs": 3,
        "trainer.patience": 3,
        "trainer.num_threads": 1,
        "tuning.rounds": 2,
        "tuning.startup_trials": 2,
        **more,
    }


@pytest.mark.slow  # trains five BPR candidates
def test_tpe_search_runs_in_rounds_on_a_persisted_study_without_reading_test(feature_set, tmp_path: Path):
    overrides = _overrides(tmp_path / "home")
    cfg, layout = tuning.context(overrides)
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    split_manifest = str(split.dir / "split.json")
    grid = {"lr": [0.00001, 0.01, 0.05], "embedding_size": [8, 16]}
    base = {"batch_size": 256}

    # Planning, training the trials and choosing run with the test part gone: the study only ever sees
    # validation scores, and no trial's training or validation reads a test event.
    hidden = split.test.with_suffix(".hidden")
    manifests: list[str] = []
    previous: list[str] = []
    asked_per_round = []
    split.test.rename(hidden)
    for round_index in range(2):
        planned = tuning.plan_round("bpr", "s1", round_index, previous, overrides, "tpe", 5, grid, base)
        asked_per_round.append([c["id"] for c in planned])
        previous = [tuning.train_candidate("bpr", "s1", split_manifest, c, overrides) for c in planned]
        manifests += previous
    tuning_json = Path(tuning.pick_best("bpr", "s1", manifests, overrides))
    hidden.rename(split.test)

    assert asked_per_round == [["t00", "t01", "t02"], ["t03", "t04"]]
    result = json.loads(tuning_json.read_text())
    assert result["search"] == "tpe" and result["selected_on"] == "valid" and len(result["candidates"]) == 5
    for candidate in result["candidates"]:
        assert candidate["overrides"]["batch_size"] == 256  # the fixed overrides reach every trial
        assert (
            candidate["overrides"]["lr"] in grid["lr"]
            and candidate["overrides"]["embedding_size"] in grid["embedding_size"]
        )
    finished = [c for c in result["candidates"] if not c["pruned"]]
    assert result["winner"]["valid_ndcg@10"] == max(c["valid_ndcg@10"] for c in finished)

    # The study persisted every trial with its validation score (or as pruned) next to the run.
    study = optuna.load_study(study_name="bpr/tune-s1", storage=search.storage_url(tuning_json.parent))
    assert (tuning_json.parent / "study.db").is_file()
    by_number = {t.number: t for t in study.trials}
    for candidate in result["candidates"]:
        trial = by_number[candidate["trial"]]
        if candidate["pruned"]:
            assert trial.state == TrialState.PRUNED
        else:
            assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(
                candidate["valid_ndcg@10"]
            )
        assert len(trial.intermediate_values) >= 1  # every epoch reported its validation score
    # Telling twice (a retried pick_best) changes nothing.
    tuning.pick_best("bpr", "s1", manifests, overrides)
    assert [
        t.state
        for t in optuna.load_study(
            study_name="bpr/tune-s1", storage=search.storage_url(tuning_json.parent)
        ).trials
    ] == [t.state for t in study.trials]

    evaluation = json.loads(
        Path(tuning.evaluate_winner("bpr", "s1", str(tuning_json), split_manifest, overrides)).read_text()
    )
    assert 0.0 <= evaluation["metrics"]["ndcg@10"] <= 1.0


@pytest.mark.slow  # trains a BPR candidate
def test_a_trial_below_the_median_of_finished_ones_is_pruned_and_never_wins(feature_set, tmp_path: Path):
    overrides = _overrides(tmp_path / "home", **{"trainer.max_epochs": 6, "trainer.patience": 6})
    _, layout = tuning.context(overrides)
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    grid = {"lr": [0.000001]}  # learns nothing in a few epochs: far below the finished trials
    study, _ = tuning._study("bpr", "p1", overrides)
    space = search.search_space(grid)
    for _ in range(2):  # two finished trials that scored high at every epoch
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.000001},
                distributions=space,
                value=0.99,
                intermediate_values=dict.fromkeys(range(6), 0.99),
            )
        )
    (candidate,) = tuning.plan_round("bpr", "p1", 0, [], overrides, "tpe", 1, grid, {"batch_size": 256})
    manifest = tuning.train_candidate("bpr", "p1", str(split.dir / "split.json"), candidate, overrides)

    searched = json.loads((Path(manifest).parent / "search.json").read_text())
    assert searched == {"trial": 2, "pruned_at_epoch": 2}  # warm-up is two epochs (0 and 1)
    assert json.loads(Path(manifest).read_text())["epochs"] == 3  # stopped, not trained to max_epochs

    other = tmp_path / "other"
    other.mkdir()
    (other / "candidate.json").write_text(json.dumps({"id": "c00", "hparams": {}}))
    from pipeline.artifacts import TrainResult

    TrainResult("bpr", other, other / "x.ckpt", {}, 1, 0.1, 1.0, -1.0, 1.0).save(other / "train.json")
    result = json.loads(
        Path(tuning.pick_best("bpr", "p1", [manifest, str(other / "train.json")], overrides)).read_text()
    )
    assert result["pruned"] == 1 and result["winner"]["id"] == "c00"  # a pruned trial never wins
    assert (
        optuna.load_study(
            study_name="bpr/tune-p1", storage=search.storage_url(Path(result["best_params"]).parent)
        )
        .trials[2]
        .state
        == TrialState.PRUNED
    )


@pytest.mark.slow  # trains two BPR trials at two training seeds each
def test_a_tpe_trial_at_several_training_seeds_is_told_the_mean_of_its_seeds(feature_set, tmp_path: Path):
    overrides = _overrides(tmp_path / "home", **{"tuning.training_seeds": 2, "trainer.seed": 11})
    _, layout = tuning.context(overrides)
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    grid = {"lr": [0.001, 0.01], "embedding_size": [8]}
    planned = tuning.plan_round("bpr", "s3", 0, [], overrides, "tpe", 2, grid, {"batch_size": 256})
    # The round's one trial, once per training seed.
    assert [(c["id"], c["trial"], c["seed"], c["run"]) for c in planned] == [
        ("t00", 0, 11, "t00"),
        ("t00", 0, 12, "t00-seed12"),
    ]
    manifests = [
        tuning.train_candidate("bpr", "s3", str(split.dir / "split.json"), c, overrides) for c in planned
    ]
    scores = [json.loads(Path(m).read_text())["best_valid_ndcg10"] for m in manifests]
    assert scores[0] != scores[1]  # two trainings of their own, so the mean is neither score

    # Planning the next round tells the study the trial's mean over its seeds, once.
    second = tuning.plan_round("bpr", "s3", 1, manifests, overrides, "tpe", 2, grid, {"batch_size": 256})
    assert [(c["id"], c["seed"]) for c in second] == [("t01", 11), ("t01", 12)]
    study = optuna.load_study(
        study_name="bpr/tune-s3", storage=search.storage_url(tuning.tuning_dir("bpr", "s3", overrides))
    )
    trial = next(t for t in study.trials if t.number == 0)
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(sum(scores) / 2)
