"""orchestration/tuning.py without Airflow: grid expansion, training candidates, choosing on validation only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from orchestration import tuning
from pipeline.artifacts import TrainResult
from pipeline.config import SplitConfig, load_model_params, load_tuning_grid
from training.evaluate import evaluate_run
from training.split import make_split

torch.set_num_threads(1)


def test_tuning_grid_key_is_stripped_from_model_params(model_configs: Path):
    (model_configs / "bpr.yaml").write_text(
        "embedding_size: 64\nlr: 0.002\ntuning_grid:\n  lr: [0.001, 0.004]\n  embedding_size: [32, 64]\n"
    )
    assert load_model_params("bpr") == {"embedding_size": 64, "lr": 0.002}
    assert load_model_params("bpr", {"lr": 0.01}) == {"embedding_size": 64, "lr": 0.01}
    assert load_tuning_grid("bpr") == {"lr": [0.001, 0.004], "embedding_size": [32, 64]}
    (model_configs / "bad.yaml").write_text("tuning_grid: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml: tuning_grid must be a non-empty mapping"):
        load_tuning_grid("bad")


def test_yaml_grid_expands_to_the_cartesian_product_defaults_first(model_configs: Path):
    (model_configs / "bpr.yaml").write_text(
        yaml.safe_dump(
            {
                "embedding_size": 64,
                "lr": 0.002,
                "tuning_grid": {"lr": [0.001, 0.002], "embedding_size": [32, 64]},
            }
        )
    )
    candidates = tuning.candidate_grid("bpr", max_candidates=10)
    assert [c["id"] for c in candidates] == ["c00", "c01", "c02", "c03"]
    combos = [c["hparams"] for c in candidates]
    assert combos[0] == {"lr": 0.002, "embedding_size": 64}  # the defaults come first
    assert sorted(json.dumps(c, sort_keys=True) for c in combos) == sorted(
        json.dumps({"lr": lr, "embedding_size": e}, sort_keys=True) for lr in (0.001, 0.002) for e in (32, 64)
    )
    assert combos[-1] == {"lr": 0.001, "embedding_size": 32}  # both knobs moved: last
    assert len(tuning.candidate_grid("bpr", max_candidates=3)) == 3
    # the trigger form's grid wins over the YAML's; fixed overrides go into every candidate
    form = tuning.candidate_grid("bpr", 5, grid={"reg_weight": [0.0, 0.1]}, base={"batch_size": 64})
    assert [c["hparams"] for c in form] == [
        {"batch_size": 64, "reg_weight": 0.0},
        {"batch_size": 64, "reg_weight": 0.1},
    ]
    with pytest.raises(ValueError, match="max_candidates"):
        tuning.candidate_grid("bpr", 0)


def test_default_grid_is_lr_times_width_around_the_defaults(model_configs: Path):
    (model_configs / "bpr.yaml").write_text("embedding_size: 64\nlr: 0.002\nreg_weight: 0.0001\n")
    candidates = tuning.candidate_grid("bpr", max_candidates=9)
    combos = [c["hparams"] for c in candidates]
    assert len(combos) == 9 and combos[0] == {"lr": 0.002, "embedding_size": 64}
    assert {c["lr"] for c in combos} == {0.001, 0.002, 0.004}
    assert {c["embedding_size"] for c in combos} == {32, 64, 128}
    # capped: the defaults and the one-knob-at-a-time neighbours survive
    capped = [c["hparams"] for c in tuning.candidate_grid("bpr", max_candidates=5)]
    assert all((c["lr"] == 0.002) or (c["embedding_size"] == 64) for c in capped)
    (model_configs / "nothing.yaml").write_text("dropout: 0.1\n")
    assert [c["hparams"] for c in tuning.candidate_grid("nothing", 4)] == [{}]  # only the defaults


def test_pick_best_chooses_on_validation_even_when_test_disagrees(feature_set, tmp_path: Path):
    home = tmp_path / "home"
    overrides = {
        "home": str(home),
        "split.protocol": "random_holdout",
        "trainer.max_epochs": 2,
        "trainer.patience": 2,
        "trainer.num_threads": 1,
    }
    cfg, layout = tuning.context(overrides)
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    candidates = [
        {"id": "c00", "hparams": {"lr": 0.05, "embedding_size": 16, "batch_size": 256}},
        {"id": "c01", "hparams": {"lr": 0.00001, "embedding_size": 16, "batch_size": 256}},
    ]
    manifests = [
        tuning.train_candidate("bpr", "t1", str(split.dir / "split.json"), c, overrides) for c in candidates
    ]
    assert all(Path(m).name == "train.json" and Path(m).is_file() for m in manifests)
    assert Path(manifests[0]).parent == home / "runs" / "bpr" / "tune-t1" / "candidates" / "c00"
    test_ndcg = [
        evaluate_run(TrainResult.load(m), split, cfg.evaluation).metrics["ndcg@10"] for m in manifests
    ]
    assert test_ndcg[0] != test_ndcg[1]
    test_loser = manifests[test_ndcg.index(min(test_ndcg))]
    # Make validation disagree with test: the candidate that is worse on TEST is best on VALID.
    for path in manifests:
        data = json.loads(Path(path).read_text())
        data["best_valid_ndcg10"] = 0.9 if path == test_loser else 0.1
        Path(path).write_text(json.dumps(data))
    # Choosing must not need the test part at all.
    hidden = split.test.with_suffix(".hidden")
    split.test.rename(hidden)
    tuning_json = Path(tuning.pick_best("bpr", "t1", manifests, overrides))
    hidden.rename(split.test)

    result = json.loads(tuning_json.read_text())
    assert result["winner"]["train_manifest"] == test_loser
    assert result["selected_on"] == "valid" and len(result["candidates"]) == 2
    assert "winner_test_metrics" not in result
    best = yaml.safe_load((tuning_json.parent / "best_params.yaml").read_text())
    assert best == json.loads((Path(test_loser).parent / "candidate.json").read_text())["hparams"]

    evaluation = json.loads(
        Path(
            tuning.evaluate_winner("bpr", "t1", str(tuning_json), str(split.dir / "split.json"), overrides)
        ).read_text()
    )
    assert evaluation["metrics"]["ndcg@10"] == pytest.approx(min(test_ndcg))
    assert json.loads(tuning_json.read_text())["winner_test_metrics"]["ndcg@10"] == pytest.approx(
        min(test_ndcg)
    )


def test_pick_best_breaks_ties_towards_the_earlier_candidate(tmp_path: Path):
    overrides = {"home": str(tmp_path / "home")}
    manifests = []
    for cid, valid in (("c01", 0.2), ("c00", 0.2), ("c02", 0.1)):
        run_dir = tmp_path / cid
        run_dir.mkdir()
        (run_dir / "candidate.json").write_text(json.dumps({"id": cid, "hparams": {"lr": cid}}))
        TrainResult("bpr", run_dir, run_dir / "x.ckpt", {}, 1, 0.1, 1.0, valid, 1.0).save(
            run_dir / "train.json"
        )
        manifests.append(str(run_dir / "train.json"))
    result = json.loads(Path(tuning.pick_best("bpr", "t2", manifests, overrides)).read_text())
    assert result["winner"]["id"] == "c00"
    with pytest.raises(ValueError, match="no candidate finished"):
        tuning.pick_best("bpr", "t3", [], overrides)


def test_the_command_line_grid_replaces_the_yaml_grid_and_rejects_a_non_list(monkeypatch, capsys):
    calls: list[dict] = []

    def run_tuning(model, run_id, overrides, max_candidates, grid=None, search=None):  # type: ignore[no-untyped-def]
        calls.append({"model": model, "grid": grid, "max_candidates": max_candidates})
        raise SystemExit(0)  # what it was given is the point, not a training run

    monkeypatch.setattr(tuning, "run_tuning", run_tuning)
    with pytest.raises(SystemExit):
        tuning.main(
            ["gsasrec", "--grid", "negatives=[4, 8, 32]", "--grid", "gbce_t=[0.0]", "--max-candidates", "3"]
        )
    assert calls == [
        {"model": "gsasrec", "grid": {"negatives": [4, 8, 32], "gbce_t": [0.0]}, "max_candidates": 3}
    ]

    with pytest.raises(SystemExit) as exit_:
        tuning.main(["gsasrec", "--grid", "negatives=16"])
    assert exit_.value.code == 2 and "give a non-empty list" in capsys.readouterr().err
    assert len(calls) == 1  # the bad grid never reached a tuning run


def _state(manifest: str) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(TrainResult.load(manifest).checkpoint, map_location="cpu", weights_only=False)
    return checkpoint["state_dict"]


def test_several_training_seeds_train_each_candidate_per_seed_and_choose_on_their_mean(
    feature_set, tmp_path: Path
):
    overrides = {
        "home": str(tmp_path / "home"),
        "split.protocol": "random_holdout",
        "trainer.seed": 7,
        "trainer.max_epochs": 1,
        "trainer.patience": 1,
        "trainer.num_threads": 1,
        "tuning.training_seeds": 2,
    }
    _, layout = tuning.context(overrides)
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    planned = tuning.plan_round(
        "bpr",
        "t4",
        0,
        [],
        overrides,
        "grid",
        2,
        {"lr": [0.01, 0.02]},
        {"embedding_size": 8, "batch_size": 256},
    )
    assert [(c["id"], c["seed"], c["run"]) for c in planned] == [
        ("c00", 7, "c00"),
        ("c00", 8, "c00-seed8"),
        ("c01", 7, "c01"),
        ("c01", 8, "c01-seed8"),
    ]
    manifests = [
        tuning.train_candidate("bpr", "t4", str(split.dir / "split.json"), c, overrides) for c in planned
    ]
    candidates_dir = tmp_path / "home" / "runs" / "bpr" / "tune-t4" / "candidates"
    assert [Path(m).parent for m in manifests] == [candidates_dir / c["run"] for c in planned]
    # Each seed is a training of its own: the same hyperparameters, other initial weights.
    first, second = _state(manifests[0]), _state(manifests[1])
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)

    # c00's first seed is the best single training, but c01 is better on the mean of its two seeds:
    # judged on one seed, c00 would win.
    for path, valid in zip(manifests, (0.5, 0.1, 0.35, 0.35), strict=True):
        data = json.loads(Path(path).read_text())
        data["best_valid_ndcg10"] = valid
        Path(path).write_text(json.dumps(data))
    hidden = split.test.with_suffix(".hidden")
    split.test.rename(hidden)  # choosing never reads the test part
    result = json.loads(Path(tuning.pick_best("bpr", "t4", list(reversed(manifests)), overrides)).read_text())
    hidden.rename(split.test)
    assert result["training_seeds"] == 2
    assert [c["id"] for c in result["candidates"]] == ["c00", "c01"]
    c00, c01 = result["candidates"]
    assert c00["valid_ndcg@10"] == pytest.approx(0.3) and c00["valid_ndcg@10_std"] == pytest.approx(
        0.2828, abs=1e-4
    )
    assert [(s["seed"], s["valid_ndcg@10"]) for s in c00["seeds"]] == [(7, 0.5), (8, 0.1)]
    assert result["winner"]["id"] == "c01" and result["winner"]["valid_ndcg@10"] == pytest.approx(0.35)
    # The winner's test evaluation reads its training at trainer.seed.
    assert result["winner"]["train_manifest"] == manifests[2]
    assert yaml.safe_load((candidates_dir.parent / "best_params.yaml").read_text()) == planned[2]["hparams"]


def test_one_training_seed_plans_the_candidates_as_they_are_and_a_pruned_seed_prunes_its_candidate():
    candidates = [{"id": "c00", "hparams": {"lr": 0.1}}, {"id": "c01", "hparams": {"lr": 0.2}}]
    assert tuning.seeded_runs(candidates, 2026, 1) == candidates
    assert [c["run"] for c in tuning.seeded_runs(candidates, 2026, 3)] == [
        "c00", "c00-seed2027", "c00-seed2028", "c01", "c01-seed2027", "c01-seed2028"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="training_seeds"):
        tuning.seeded_runs(candidates, 2026, 0)

    def record(cid: str, seed: int | None, valid: float, pruned: bool = False) -> dict:
        return {"id": cid, "seed": seed, "trial": 0, "pruned": pruned, "valid_ndcg@10": valid, "epochs": 1,
                "train_manifest": f"{cid}-{seed}"}  # fmt: skip

    once = record("c02", None, 0.2)
    merged = tuning.by_candidate(
        [
            record("c01", 2027, 0.4),
            once,
            record("c01", 2026, 0.2, pruned=True),
            record("c00", 2027, float("-inf")),
            record("c00", 2026, 0.3),
        ]  # fmt: skip
    )
    assert [m["id"] for m in merged] == ["c00", "c01", "c02"]
    assert merged[0]["valid_ndcg@10"] == float("-inf") and merged[0]["valid_ndcg@10_std"] is None
    assert merged[1]["pruned"] and merged[1]["train_manifest"] == "c01-2026"
    assert merged[1]["valid_ndcg@10"] == pytest.approx(0.3)
    assert merged[2] == once  # trained once: its record as it was
