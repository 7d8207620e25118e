"""Two-tower and DeepFM: shapes, padding, learning, artifact round trips, cold start, AUC/LogLoss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig, TrainerConfig
from pipeline.layout import Layout
from tests.model_helpers import artifact_round_trip, cold_start_holdout, overfit_losses
from training.artifact import load_model_artifact
from training.attributes import attributes_for
from training.data import ExampleDataModule, build_eval_inputs, build_example_set
from training.metrics import binary_auc, binary_logloss
from training.models import MODELS, build_model
from training.models.capabilities import RanksCandidates, ScoresColdItems, ScoresFromHistory
from training.split import make_split
from training.train import evaluate_module

torch.set_num_threads(1)
SMALL = {
    "twotower": {
        "embedding_size": 16,
        "attribute_size": 8,
        "hidden_sizes": [32],
        "dropout": 0.0,
        "temperature": 0.1,
        "lr": 0.01,
        "num_negatives": 4,
        "history_length": 10,
        "batch_size": 128,
    },
    "deepfm": {
        "embedding_size": 8,
        "hidden_sizes": [32, 16],
        "dropout": 0.0,
        "lr": 0.01,
        "num_negatives": 4,
        "history_length": 10,
        "batch_size": 128,
    },
}
NAMES = list(SMALL)


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def _module(name: str, dm: ExampleDataModule, split, matrix: sp.csr_matrix | None = None):
    module = build_model(name, dm.n_users, dm.n_items, attributes_for(split), **SMALL[name])
    module.set_train_matrix(dm.train_matrix if matrix is None else matrix)
    return module


def _datamodule(name: str, split) -> ExampleDataModule:
    params = SMALL[name]
    dm = ExampleDataModule(
        split,
        num_negatives=params["num_negatives"],
        batch_size=params["batch_size"],
        history_length=params["history_length"],
    )
    dm.setup("fit")
    return dm


def _train(module, dm: ExampleDataModule, rows: np.ndarray, epochs: int) -> None:
    """A plain loop over the given example rows (lets a test hold users/items out of training)."""
    optimizer = module.configure_optimizers()
    generator = np.random.default_rng(0)
    module.train()
    for _ in range(epochs):
        order = generator.permutation(rows)
        for start in range(0, len(order), dm.batch_size):
            optimizer.zero_grad()
            module.calculate_loss(dm.examples.batch(order[start : start + dm.batch_size])).backward()
            optimizer.step()
    module.eval()


def test_registered_as_example_models() -> None:
    assert MODELS["twotower"].kind == "example" and MODELS["deepfm"].kind == "example"
    assert RanksCandidates in MODELS["deepfm"].capabilities
    assert (
        ScoresFromHistory in MODELS["twotower"].capabilities
        and ScoresColdItems in MODELS["twotower"].capabilities
    )


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name: str, split) -> None:
    dm = _datamodule(name, split)
    module = _module(name, dm, split).eval()
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    with torch.no_grad():
        scores = module.full_sort_predict(torch.tensor([0, dm.n_users - 1, -1]), history)
        codes, numbers = attributes_for(split).users.encode(
            [{"age": 25, "gender": "F", "occupation": "occupation1"}, {}, {"gender": "M"}]
        )
        cold = module.full_sort_predict_from_attributes(
            torch.from_numpy(codes), torch.from_numpy(numbers), history
        )
        items = module.item_embeddings()
    assert scores.shape == cold.shape == (3, dm.n_items + 1)
    assert torch.isfinite(scores).all() and torch.isfinite(cold).all()
    assert items.shape[0] == dm.n_items + 1
    if name == "deepfm":
        candidates = torch.tensor([[1, 2, 5], [7, 7, 9], [3, 1, 2]])
        with torch.no_grad():
            picked = module.score_candidates(torch.tensor([0, dm.n_users - 1, -1]), history, candidates)
        assert picked.shape == (3, 3)
        # Full ranking (chunked, split first layer) is the same function as candidate scoring.
        torch.testing.assert_close(picked, scores.gather(1, candidates), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_extra_left_padding_does_not_change_scores(name: str, split) -> None:
    dm = _datamodule(name, split)
    module = _module(name, dm, split).eval()
    users = torch.tensor([0, 1])
    short = torch.tensor([[0, 5, 6], [0, 0, 0]])
    long = torch.tensor([[0, 0, 0, 0, 0, 5, 6], [0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            module.full_sort_predict(users, short), module.full_sort_predict(users, long)
        )


def test_twotower_history_pooling_ignores_padding_rows(split) -> None:
    dm = _datamodule("twotower", split)
    module = _module("twotower", dm, split).eval()
    with torch.no_grad():
        module.history_item.weight[0].fill_(100.0)  # padding must never be read, whatever its row holds
        a = module.full_sort_predict(torch.tensor([0]), torch.tensor([[0, 0, 5, 6]]))
        b = module.full_sort_predict(torch.tensor([0]), torch.tensor([[5, 6]]))
    torch.testing.assert_close(a, b)


def test_twotower_without_history_input_ignores_history(split) -> None:
    dm = _datamodule("twotower", split)
    params = {**SMALL["twotower"], "pool_history": False}
    module = build_model("twotower", dm.n_users, dm.n_items, attributes_for(split), **params)
    module.eval()
    assert not module.scores_from_history
    with torch.no_grad():
        a = module.full_sort_predict(torch.tensor([0, -1]), torch.tensor([[0, 5, 6], [1, 2, 3]]))
        b = module.full_sort_predict(torch.tensor([0, -1]), torch.zeros(2, 3, dtype=torch.long))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_when_overfitting_a_batch(name: str, split) -> None:
    torch.manual_seed(0)
    dm = _datamodule(name, split)
    batch = next(iter(dm.train_dataloader()))
    module = _module(name, dm, split)
    module.user_id_dropout = module.item_id_dropout = 0.0  # a fixed objective
    losses = overfit_losses(module, batch)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", NAMES)
def test_artifact_round_trip_gives_identical_scores(name: str, split, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = _datamodule(name, split)
    module = _module(name, dm, split)
    _train(module, dm, np.arange(len(dm.examples)), epochs=1)
    artifact, users, history, expected = artifact_round_trip(
        module,
        name,
        SMALL[name],
        split,
        tmp_path / "model",
        attributes=attributes_for(split),
        unknown_user=True,
    )
    codes, numbers = (
        torch.from_numpy(a) for a in artifact.attributes.users.encode([{"age": 30, "gender": "F"}])
    )
    with torch.no_grad():
        cold_expected = module.full_sort_predict_from_attributes(codes, numbers, history[:1])
        cold_actual = artifact.module.full_sort_predict_from_attributes(codes, numbers, history[:1])
    assert torch.equal(artifact.score(users, history)[:, 1:], expected[:, 1:].float())
    assert torch.equal(cold_actual, cold_expected)


@pytest.mark.parametrize("name", NAMES)
def test_train_model_beats_popularity(name: str, split, tmp_path: Path) -> None:
    from training.train import train_model

    cfg = TrainerConfig(max_epochs=8, patience=8, num_threads=1)
    result = train_model(name, split, SMALL[name], cfg, tmp_path / "run")
    valid = build_eval_inputs(split, "valid", history_length=10)
    dm = _datamodule(name, split)
    popularity = build_model("popularity", dm.n_users, dm.n_items).fit(dm.train_matrix)
    baseline = evaluate_module(popularity, valid, [10], 64)["ndcg@10"]
    assert result.best_valid_ndcg10 > baseline + 0.05, (result.best_valid_ndcg10, baseline)
    if name == "deepfm":
        artifact = load_model_artifact(tmp_path / "run" / "model")
        metrics = artifact.module.pointwise_metrics(build_example_set(split, "test", 10, 1, seed=0))
        assert metrics["auc"] > 0.6 and math.isfinite(metrics["logloss"]), metrics


@pytest.mark.parametrize("name", NAMES)
def test_cold_users_and_items_are_scored_from_attributes(name: str, split) -> None:
    """Users and items removed from training are placed by their attributes alone."""
    torch.manual_seed(0)
    dm = _datamodule(name, split)
    train_matrix, user_cluster, item_cluster, cold_users, cold_items = cold_start_holdout(
        split, dm.index, dm.train_matrix
    )
    examples = dm.examples
    keep = ~np.isin(examples.users, cold_users) & ~np.isin(examples.items, cold_items)
    module = _module(name, dm, split, train_matrix)
    # Heavier id dropout than the defaults: ~36 training users give few "unknown user" rows otherwise.
    module.user_id_dropout = module.item_id_dropout = 0.5
    _train(module, dm, np.flatnonzero(keep), epochs=20)

    attributes = attributes_for(split).users
    codes, numbers = (
        torch.from_numpy(attributes.codes[cold_users]),
        torch.from_numpy(attributes.numbers[cold_users]),
    )
    with torch.no_grad():
        scores = module.full_sort_predict_from_attributes(
            codes, numbers, torch.zeros(len(cold_users), 1, dtype=torch.long)
        )
    wins = []
    for row, cluster in enumerate(user_cluster[cold_users]):
        own = scores[row, 1:][item_cluster[1:] == cluster]
        other = scores[row, 1:][item_cluster[1:] != cluster]
        wins.append(float((own.unsqueeze(1) > other.unsqueeze(0)).float().mean()))
    assert np.mean(wins) > 0.6, wins  # chance = 0.5; attributes explain ~40 % of behaviour here

    if name == "twotower":
        with torch.no_grad():
            vectors = module.item_embeddings()
        for item in cold_items:
            similarity = vectors[1:] @ vectors[item]
            mates = (item_cluster[1:] == item_cluster[item]) & (np.arange(1, dm.n_items + 1) != item)
            assert similarity[mates].mean() > similarity[item_cluster[1:] != item_cluster[item]].mean() + 0.2


def test_auc_and_logloss_match_hand_computation() -> None:
    # Positives 0.35 and 0.8 vs negatives 0.1 and 0.4: 3 of the 4 pairs ordered correctly.
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert binary_auc(scores, labels) == pytest.approx(0.75)
    assert binary_auc(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])) == pytest.approx(0.5)  # tie
    assert math.isnan(binary_auc(scores, torch.ones(4)))
    # logit 0 -> p = 1/2 -> log 2 per row, whatever the label; logit log(3) -> p = 3/4.
    assert binary_logloss(torch.zeros(4), labels) == pytest.approx(math.log(2))
    assert binary_logloss(torch.tensor([math.log(3)]), torch.tensor([1.0])) == pytest.approx(-math.log(0.75))


def test_two_tower_with_sparse_tables_learns_with_lazy_adam(split) -> None:
    from training.models.optim import LazyAdam

    torch.manual_seed(0)
    dm = _datamodule("twotower", split)
    batch = next(iter(dm.train_dataloader()))
    module = build_model(
        "twotower", dm.n_users, dm.n_items, attributes_for(split), **SMALL["twotower"], sparse_embeddings=True
    )
    module.set_train_matrix(dm.train_matrix)
    module.user_id_dropout = module.item_id_dropout = 0.0
    assert type(module.configure_optimizers()) is LazyAdam
    losses = overfit_losses(module, batch)
    assert losses[-1] < 0.5 * losses[0], losses[::10]
