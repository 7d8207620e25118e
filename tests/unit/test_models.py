"""Models, data modules, training and evaluation on synthetic data: shapes, learning, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from pipeline.artifacts import Evaluation, FeatureSet, TrainResult
from pipeline.config import EvaluationConfig, SplitConfig, TrainerConfig
from pipeline.layout import Layout
from tests.model_helpers import artifact_round_trip, overfit_losses
from training.artifact import load_model_artifact
from training.data import GeneralDataModule, SequentialDataModule, build_eval_inputs
from training.evaluate import evaluate_run
from training.models import MODELS, build_model, pipeline_models
from training.report import PER_USER_FILE
from training.split import SplitIndex, make_split

torch.set_num_threads(1)
SMALL = {
    "bpr": {"embedding_size": 16, "lr": 0.01, "batch_size": 256},
    "sasrec": {
        "hidden_size": 16,
        "n_layers": 1,
        "n_heads": 2,
        "inner_size": 32,
        "history_length": 10,
        "dropout": 0.0,
        "lr": 0.01,
        "batch_size": 32,
    },
}


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def test_registry_has_learned_models_and_baselines() -> None:
    assert {"popularity", "itemknn", "bpr", "sasrec"} <= set(MODELS)
    assert MODELS["sasrec"].kind == "sequential" and MODELS["bpr"].kind == "general"
    assert set(pipeline_models()) >= {"bpr", "sasrec"} and "popularity" not in pipeline_models()


@pytest.mark.parametrize("name", ["bpr", "sasrec", "popularity", "itemknn"])
def test_full_sort_predict_shape(name: str) -> None:
    module = build_model(name, 7, 12, **SMALL.get(name, {}))
    if hasattr(module, "fit"):
        import scipy.sparse as sp

        module.fit(sp.random(7, 13, density=0.3, format="csr", random_state=0))
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    scores = module.full_sort_predict(torch.tensor([0, 6, -1]), history)
    assert scores.shape == (3, 13)
    assert torch.isfinite(scores).all()


def test_negatives_are_never_interacted(split) -> None:
    dm = GeneralDataModule(split, batch_size=10_000)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    seen = dm.train_matrix
    users, negatives = batch["users"].numpy().copy(), batch["negatives"].numpy().copy()
    assert (negatives >= 1).all() and (negatives <= dm.n_items).all()
    assert np.asarray(seen[users, negatives]).ravel().sum() == 0
    assert np.asarray(seen[users, batch["positives"].numpy().copy()]).ravel().min() == 1


def test_sequence_windows_cover_every_train_transition(split) -> None:
    dm = SequentialDataModule(split, history_length=10, batch_size=10_000)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    history, targets = batch["history"], batch["targets"]
    assert history.shape[1] == 10
    # Each target is the next item after its input position; every train event but each user's first is a target.
    assert int((targets > 0).sum()) == dm.n_train_interactions - dm.train_matrix.shape[0]
    shifted = (history[:, 1:] == targets[:, :-1]) | (targets[:, :-1] == 0)
    assert bool(shifted.all())


def test_eval_inputs_follow_the_contract(split) -> None:
    index = SplitIndex.load(split)
    inputs = build_eval_inputs(split, "test", history_length=5)
    test = pd.read_parquet(split.test)
    assert inputs.n_users == test["user_id"].nunique()
    row = 0
    user_id = index.user_ids[int(inputs.users[row])]
    event = test[test["user_id"] == user_id].sort_values(["event_timestamp", "event_id"]).iloc[0]
    expected = [index.item_index[i] for i in event["recent_items"]][-5:]
    assert inputs.history[row].tolist() == [0] * (5 - len(expected)) + expected
    assert inputs.truth[row].indices.tolist() == [index.item_index[event["item_id"]]]
    train_valid = pd.concat([pd.read_parquet(split.train), pd.read_parquet(split.valid)])
    seen = sorted(
        index.item_index[i] for i in set(train_valid.loc[train_valid["user_id"] == user_id, "item_id"])
    )
    assert sorted(inputs.exclude[row].indices.tolist()) == seen


def test_random_holdout_validation_histories_hold_no_test_event(
    feature_set: FeatureSet, layout: Layout
) -> None:
    """Under random_holdout a validation event's point-in-time history holds events the split put into
    test: the model is shown only the history's train events there (train + valid ones when testing),
    and the test histories stay exactly what the feature store served."""
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    index = SplitIndex.load(split)
    parts = {
        name: pd.read_parquet(getattr(split, name)).assign(part=name) for name in ("train", "valid", "test")
    }
    events = pd.concat(parts.values()).sort_values(["event_timestamp", "event_id"])
    items = {name: frame.groupby("user_id")["item_id"].agg(set).to_dict() for name, frame in parts.items()}
    test_only = {u: items["test"][u] - items["train"].get(u, set()) for u in items["test"]}
    as_served = pd.read_parquet(feature_set.examples).set_index("event_id")["recent_items"]

    def first(part: str) -> pd.DataFrame:
        rows = parts[part].sort_values(["event_timestamp", "event_id"]).drop_duplicates("user_id")
        return rows.assign(recent_items=as_served.loc[rows["event_id"]].to_numpy())

    served = dict(zip(first("valid")["user_id"], first("valid")["recent_items"], strict=True))
    assert any(set(served[u]) & test_only[u] for u in served)  # the synthetic data has the case
    valid = build_eval_inputs(split, "valid", history_length=50)
    stamps = dict(zip(first("valid")["user_id"], first("valid")["event_timestamp"], strict=True))
    for user, row in zip(valid.users.tolist(), valid.history.tolist(), strict=True):
        user_id = index.user_ids[user]
        shown = [index.item_ids[i - 1] for i in row if i > 0]
        assert not set(shown) & test_only[user_id], user_id
        # The served list stands for the user's last events before the validation event; only the
        # train ones are shown, in the same order.
        mine = events[(events["user_id"] == user_id) & (events["event_timestamp"] < stamps[user_id])]
        window = mine.tail(len(served[user_id]))
        assert window["item_id"].tolist() == list(served[user_id])
        assert shown == window.loc[window["part"] == "train", "item_id"].tolist()

    # The split wrote the lists already cut: no history of the valid part names a test-only item.
    for user, recent in zip(parts["valid"]["user_id"], parts["valid"]["recent_items"], strict=True):
        assert not set(recent) & test_only.get(user, set()), user

    test = build_eval_inputs(split, "test", history_length=50)
    recent = dict(zip(first("test")["user_id"], first("test")["recent_items"], strict=True))
    for user, row in zip(test.users.tolist(), test.history.tolist(), strict=True):
        expected = [index.item_index[i] for i in recent[index.user_ids[user]]][-50:]
        assert row == [0] * (50 - len(expected)) + expected


def test_hidden_events_leave_histories_by_event_or_by_item() -> None:
    """An entry goes when its event is hidden (a re-watched item's visible event stays); a list that does
    not line up with the user's events loses every item of the user's hidden events."""
    from training.split import without_hidden_events

    t = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u"],
            "item_id": ["a", "b", "a", "c"],
            "event_timestamp": [
                t,
                t + pd.Timedelta(1, "h"),
                t + pd.Timedelta(2, "h"),
                t + pd.Timedelta(3, "h"),
            ],
            "event_id": [0, 1, 2, 3],
            "hidden": [False, True, True, False],
        }
    )
    rows = pd.DataFrame(
        {
            "user_id": ["u", "u"],
            "event_timestamp": [t + pd.Timedelta(3, "h"), t + pd.Timedelta(3, "h")],
            "recent_items": [["a", "b", "a"], ["b", "x", "a"]],
        }
    )
    assert without_hidden_events(rows, events).to_pylist() == [["a"], ["x"]]


@pytest.mark.parametrize(
    ("name", "extra"), [("bpr", {}), ("bpr", {"sparse_embeddings": True}), ("sasrec", {})]
)
def test_loss_falls_when_overfitting_a_batch(name: str, extra: dict, split) -> None:
    torch.manual_seed(0)
    dm_cls = SequentialDataModule if name == "sasrec" else GeneralDataModule
    dm = dm_cls(split, batch_size=256, **({"history_length": 10} if name == "sasrec" else {}))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = build_model(name, dm.n_users, dm.n_items, **SMALL[name], **extra)
    losses = overfit_losses(module, batch)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", ["bpr", "sasrec", "itemknn", "popularity"])
def test_artifact_round_trip_gives_identical_scores(name: str, split, tmp_path: Path) -> None:
    dm = GeneralDataModule(split)
    module = build_model(name, dm.n_users, dm.n_items, **SMALL.get(name, {}))
    if hasattr(module, "fit"):
        module.fit(dm.train_matrix)
    artifact, users, history, expected = artifact_round_trip(
        module, name, SMALL.get(name, {}), split, tmp_path / "model", meta={"protocol": split.protocol}
    )
    actual = artifact.score(users, history)
    assert torch.equal(actual[:, 1:], expected[:, 1:].float())
    assert artifact.meta["protocol"] == "leave_last_out"
    assert artifact.seen.shape == (dm.n_users, dm.n_items + 1)


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_train_and_evaluate_end_to_end(name: str, split, tmp_path: Path) -> None:
    from training.train import train_model

    cfg = TrainerConfig(max_epochs=3, patience=2, num_threads=1)
    run_dir = tmp_path / "runs" / name / "r1"
    result = train_model(name, split, SMALL[name], cfg, run_dir)
    assert result.epochs == 3 and result.epoch_seconds > 0 and result.peak_rss_mb > 0
    assert 0.0 <= result.best_valid_ndcg10 <= 1.0 and result.checkpoint.exists()
    assert TrainResult.load(run_dir / "train.json") == result
    assert (run_dir / "model" / "weights.pt").exists()

    evaluation = evaluate_run(result, split, EvaluationConfig(ks=[10, 20], batch_users=16))
    assert Evaluation.load(run_dir / "evaluation.json") == evaluation
    assert set(evaluation.baselines) == {"popularity", "itemknn", "userknn"}
    assert set(evaluation.seconds) == {"inputs", "model", "popularity", "itemknn", "userknn"}
    assert all(seconds > 0 for seconds in evaluation.seconds.values())
    assert (split.dir / "baselines" / "popularity.json").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_users"] == split.counts["test_users"]
    assert {"ndcg@10", "recall@20", "coverage@10"} <= set(metrics["metrics"])
    # Beyond accuracy: by the model's item embeddings (BPR and SASRec have them) and for baselines too.
    assert {"gini@10", "novelty@20", "ild_embeddings@10"} <= set(metrics["metrics"])
    assert 0.0 <= metrics["metrics"]["gini@10"] <= 1.0 and metrics["metrics"]["novelty@10"] > 0
    assert {"gini@10", "novelty@10"} <= set(metrics["baselines"]["popularity"])
    board = (run_dir / "leaderboard.md").read_text()
    assert f"| {name} |" in board and "| popularity |" in board and "| itemknn |" in board


def test_evaluation_reports_the_configured_baselines_only(split, tmp_path: Path) -> None:
    """``evaluation.baselines`` decides which baselines are fitted and reported (UserKNN's fit is
    quadratic in users); popularity, which the gate judges by, cannot be left out."""
    from training.train import train_model

    run_dir = tmp_path / "runs" / "bpr" / "r1"
    result = train_model("bpr", split, SMALL["bpr"], TrainerConfig(max_epochs=1, num_threads=1), run_dir)
    cfg = EvaluationConfig(ks=[10], batch_users=16, baselines=["popularity", "itemknn"])
    evaluation = evaluate_run(result, split, cfg)
    assert set(evaluation.baselines) == {"popularity", "itemknn"}
    with np.load(run_dir / PER_USER_FILE) as per_user:
        assert not any(key.startswith("userknn::") for key in per_user.files)
    assert "| userknn |" not in (run_dir / "leaderboard.md").read_text()
    with pytest.raises(ValidationError, match="popularity"):
        EvaluationConfig(baselines=["itemknn"])
    with pytest.raises(ValidationError, match="twice"):
        EvaluationConfig(baselines=["popularity", "popularity"])
    with pytest.raises(ValidationError):
        EvaluationConfig(baselines=["popularity", "svd"])


def test_cached_baseline_numbers_of_other_code_are_recomputed(split) -> None:
    """A baseline's cached test metrics hold only for the code that produced them (e.g. ItemKNN before a
    fix of its neighbourhoods): another fingerprint in the cache key means a fresh fit."""
    from training.evaluate import baseline_code, baseline_metrics

    cfg = EvaluationConfig(ks=[10], batch_users=64)
    fresh = baseline_metrics("itemknn", split, cfg)
    cache = split.dir / "baselines" / "itemknn.json"
    stored = json.loads(cache.read_text())
    assert stored["key"]["code"] == baseline_code("itemknn")
    stale = {**stored, "key": {**stored["key"], "code": "older"}, "metrics": {"ndcg@10": -1.0}}
    cache.write_text(json.dumps(stale))
    assert baseline_metrics("itemknn", split, cfg) == fresh


def test_baseline_run_trains_without_lightning(split, tmp_path: Path) -> None:
    from training.train import train_model

    result = train_model("itemknn", split, {"k": 20}, TrainerConfig(num_threads=1), tmp_path / "knn")
    assert result.epochs == 0 and result.best_valid_ndcg10 > 0
    assert load_model_artifact(tmp_path / "knn" / "model").name == "itemknn"


def test_cold_users_are_not_evaluated(make_examples, tmp_path: Path) -> None:
    examples = make_examples(n_users=30, n_items=40, n_events=600, seed=4)
    # A user whose only events are the newest of all: under a temporal cut they have no train event.
    late = examples.iloc[:3].copy()
    late["user_id"] = "u_cold"
    late["event_id"] = examples["event_id"].max() + 1 + np.arange(3)
    late["event_timestamp"] = examples["event_timestamp"].max() + pd.Timedelta(days=1)
    path = tmp_path / "ex.parquet"
    pd.concat([examples, late]).to_parquet(path, index=False)
    split = make_split(
        FeatureSet("v", tmp_path, path, [], "s", ""),
        SplitConfig(protocol="temporal"),
        Layout(tmp_path / "home"),
    )
    index = SplitIndex.load(split)
    inputs = build_eval_inputs(split, "test")
    evaluated = {index.user_ids[int(u)] for u in inputs.users}
    train_users = set(pd.read_parquet(split.train)["user_id"])
    assert "u_cold" not in evaluated
    assert evaluated == set(pd.read_parquet(split.test)["user_id"]) & train_users


@pytest.fixture
def lightning_imported_before_logging():
    """Lightning's own state when it is imported before logging is configured (an Airflow task, a
    script): a stderr handler on its loggers, no propagation. Restored afterwards."""
    import logging

    import lightning  # noqa: F401 - its import adds the handler of the top "lightning" logger

    saved = {}
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate)
        if name != "lightning" and not logger.handlers:
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False
    yield
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_lightning_logs_at_its_levels_and_one_line_per_epoch(
    split, tmp_path: Path, caplog, capfd, lightning_imported_before_logging
) -> None:
    import logging

    from training.train import route_lightning_logs, train_model

    caplog.set_level(logging.INFO)
    cfg = TrainerConfig(max_epochs=2, patience=5, num_threads=1)
    train_model("bpr", split, SMALL["bpr"], cfg, tmp_path / "run")
    stderr = capfd.readouterr().err
    assert "Seed set to" not in stderr and "GPU available" not in stderr  # not printed by Lightning itself
    assert "it/s" not in stderr  # no progress bar off a terminal
    lightning = [r for r in caplog.records if r.name.startswith("lightning.")]
    assert any(r.getMessage().startswith("GPU available") and r.levelno == logging.INFO for r in lightning)
    assert not [r for r in caplog.records if "💡" in r.getMessage()]
    epochs = [
        r.getMessage() for r in caplog.records if r.name == "training.train" and " epoch " in r.getMessage()
    ]
    assert [m.split(":")[0] for m in epochs] == ["BPR epoch 1/2", "BPR epoch 2/2"]
    assert "train loss 0." in epochs[0] and "valid/ndcg@10 0." in epochs[0]

    # The setup is idempotent: again, it adds no handler and no filter (pytest's own capture handlers stay).
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
    before = [(len(logging.getLogger(n).handlers), len(logging.getLogger(n).filters)) for n in names]
    route_lightning_logs()
    route_lightning_logs()
    assert [(len(logging.getLogger(n).handlers), len(logging.getLogger(n).filters)) for n in names] == before
    assert not [h for n in names for h in logging.getLogger(n).handlers if type(h) is logging.StreamHandler]
    assert all(logging.getLogger(name).propagate for name in names)


def test_scoring_an_artifact_keeps_the_per_catalogue_cache_between_calls() -> None:
    """The service scores one user per request: per-catalogue work (item towers) must not be redone."""
    import numpy as np
    import scipy.sparse as sp

    from training.artifact import ModelArtifact
    from training.models.base import RecommenderModule

    class Counting(RecommenderModule):
        def __init__(self) -> None:
            super().__init__()
            self.item_vectors = torch.nn.Parameter(torch.randn(4, 2))
            self.computed = 0

        def _items(self) -> torch.Tensor:
            self.computed += 1
            return self.item_vectors * 1.0

        def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            return torch.ones(users.shape[0], 2) @ self.eval_cache("items", self._items).T

    module = Counting()
    artifact = ModelArtifact(
        "bpr", module, ["a", "b", "c"], ["u"], np.ones(4), sp.csr_matrix((1, 4)), history_length=2
    )
    first = artifact.score(torch.tensor([0]), torch.zeros(1, 2, dtype=torch.long))
    second = artifact.score(torch.tensor([0]), torch.zeros(1, 2, dtype=torch.long))
    assert torch.equal(first, second) and module.computed == 1
    module.train()
    artifact.score(torch.tensor([0]), torch.zeros(1, 2, dtype=torch.long))
    assert module.computed == 2 and not module.training  # a module left in train mode is switched


def test_early_stopping_may_rank_a_fixed_sample_of_validation_users_never_of_test(split) -> None:
    every = build_eval_inputs(split, "valid", history_length=20)
    sample = build_eval_inputs(split, "valid", history_length=20, max_users=5, seed=7)
    assert sample.n_users == 5 < every.n_users
    again = build_eval_inputs(split, "valid", history_length=20, max_users=5, seed=7)
    assert torch.equal(again.users, sample.users)  # the same users every epoch and every run
    rows = np.searchsorted(every.users.numpy(), sample.users.numpy())
    assert torch.equal(every.users[rows], sample.users)
    assert torch.equal(every.history[rows], sample.history)
    assert (every.truth[rows] != sample.truth).nnz == 0 and (every.exclude[rows] != sample.exclude).nnz == 0
    with pytest.raises(ValueError, match="test ranks every user"):
        build_eval_inputs(split, "test", max_users=5)


def test_training_records_how_many_validation_users_it_stopped_on(split, tmp_path: Path) -> None:
    from training.train import train_model

    cfg = TrainerConfig(max_epochs=1, num_threads=1, valid_users=4)
    result = train_model("bpr", split, SMALL["bpr"], cfg, tmp_path / "run")
    assert result.valid_users == 4
    assert TrainResult.load(tmp_path / "run" / "train.json").valid_users == 4


def test_early_stopping_ranks_a_large_catalogue_by_blocks_with_the_same_values(
    split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``LISTS_MIN_ITEMS`` items on, a dot-product model's validation ranks by blocks with sparse
    rows (as the test evaluation does): the same validation metrics every epoch as the dense ranking."""
    import training.models.base
    import training.train
    from training.train import train_model

    blocks_called = []
    by_blocks = training.models.base.top_k_of_dot_product
    monkeypatch.setattr(
        training.models.base,
        "top_k_of_dot_product",
        lambda *args, **kwargs: blocks_called.append(1) or by_blocks(*args, **kwargs),
    )
    cfg = TrainerConfig(max_epochs=2, num_threads=1)
    logged = {}
    for name, threshold in (("dense", 10**9), ("blocks", 0)):
        monkeypatch.setattr(training.train, "LISTS_MIN_ITEMS", threshold)
        result = train_model("bpr", split, SMALL["bpr"], cfg, tmp_path / name)
        metrics = pd.read_csv(next((tmp_path / name / "lightning_logs").rglob("metrics.csv")))
        logged[name] = metrics.filter(like="valid/").dropna().to_numpy()
        assert (name == "blocks") == bool(blocks_called)
        logged[name + " best"] = result.best_valid_ndcg10
    assert logged["dense"].shape == (2, 3)
    np.testing.assert_allclose(logged["blocks"], logged["dense"], rtol=1e-6)
    assert logged["blocks best"] == pytest.approx(logged["dense best"], rel=1e-6)
