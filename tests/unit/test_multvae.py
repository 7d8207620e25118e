"""Mult-VAE: the KL annealing schedule, the ELBO's parts, the user-row batches, learning the synthetic
structure and the artifact round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig, TrainerConfig, load_model_params
from pipeline.layout import Layout
from tests.model_helpers import artifact_round_trip
from training.artifact import load_model_artifact
from training.data import UserRowDataModule, build_datamodule, build_eval_inputs
from training.models import MODELS, build_model, pipeline_models
from training.models.capabilities import NeedsTrainMatrix, ScoresFromHistory, can
from training.models.multvae import gaussian_kl, kl_weight
from training.split import make_split, train_matrix
from training.train import evaluate_module, train_model

torch.set_num_threads(1)
# 5 users x 4 items (column 0 = padding, never set); user 3 has no training item.
X = np.array(
    [[0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=np.float32
)
SMALL = {"hidden_size": 16, "latent_size": 4}


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def test_registered_as_a_trained_user_row_model_with_a_dag() -> None:
    spec = MODELS["multvae"]
    assert spec.kind == "user_rows" and spec.trainable and "multvae" in pipeline_models()
    assert {NeedsTrainMatrix, ScoresFromHistory} <= spec.capabilities


def test_kl_weight_rises_linearly_to_beta_max_and_stays() -> None:
    assert kl_weight(0, 0.2, 100) == 0.0
    assert kl_weight(50, 0.2, 100) == pytest.approx(0.1)
    assert kl_weight(100, 0.2, 100) == pytest.approx(0.2)
    assert kl_weight(10_000, 0.2, 100) == pytest.approx(0.2)
    assert kl_weight(0, 0.3, 0) == 0.3  # no annealing: β_max from the first batch


def test_the_loss_anneals_per_training_batch_and_is_nll_plus_beta_kl() -> None:
    vae = build_model("multvae", 5, 4, total_anneal_steps=4, beta_max=0.2, dropout=0.0, **SMALL)
    rows = torch.from_numpy(X[[0, 1, 2, 4]])
    with torch.no_grad():
        vae.eval()  # no sampling: the loss is deterministic and does not advance the annealing clock
        nll, kl = vae.negative_elbo(rows, beta=0.0)
        assert nll > 0 and kl >= 0
        assert float(vae.calculate_loss({"rows": rows})) == pytest.approx(float(nll))  # β = 0 at step 0
        assert vae.anneal_step == 0
        vae.train()
        for _ in range(6):
            vae.calculate_loss({"rows": rows})
        assert vae.anneal_step == 6
        vae.eval()  # past total_anneal_steps: β = beta_max
        nll, kl = vae.negative_elbo(rows, beta=0.2)
        loss = float(vae.calculate_loss({"rows": rows}))
        assert loss == pytest.approx(float(nll + 0.2 * kl), rel=1e-5)


def test_gaussian_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(2, 3)
    assert torch.allclose(gaussian_kl(zeros, zeros), torch.zeros(2))
    assert (gaussian_kl(torch.ones(2, 3), torch.full((2, 3), -1.0)) > 0).all()


def test_scores_known_users_from_training_rows_and_unknown_ones_from_history() -> None:
    vae = build_model("multvae", 5, 4, **SMALL)
    vae.set_train_matrix(sp.csr_matrix(X))
    vae.eval()
    with torch.no_grad():
        scores = vae.full_sort_predict(torch.tensor([0, -1]), torch.tensor([[0, 0], [1, 2]]))
        # Unknown user with history {1, 2} = known user 0 whose training row is {1, 2}.
        assert torch.allclose(scores[0], scores[1])
        assert scores.shape == (2, 5)
    with pytest.raises(ValueError, match="train matrix"):
        vae.set_train_matrix(sp.csr_matrix(X[:, :3]))
    assert can(vae, ScoresFromHistory)


def test_user_row_batches_are_users_with_their_training_rows(split) -> None:
    data = build_datamodule("user_rows", split, {"batch_size": 8}, seed=0)
    assert isinstance(data, UserRowDataModule)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    matrix = (train_matrix(split) > 0).toarray()
    assert batch["rows"].shape == (8, matrix.shape[1])
    np.testing.assert_array_equal(batch["rows"].numpy(), matrix[batch["users"].numpy()])
    assert (batch["rows"].sum(dim=1) > 0).all() and not batch["rows"][:, 0].any()


@pytest.mark.slow
def test_learns_the_synthetic_structure(split, tmp_path: Path) -> None:
    """With its configs/models default, Mult-VAE ranks the validation items above popularity."""
    result = train_model(
        "multvae",
        split,
        load_model_params("multvae"),
        TrainerConfig(num_threads=1, max_epochs=15),
        tmp_path / "run",
    )
    matrix = train_matrix(split)
    popularity = build_model("popularity", matrix.shape[0], matrix.shape[1] - 1).fit(matrix)
    baseline = evaluate_module(popularity, build_eval_inputs(split, "valid", 50), [10], 512)["ndcg@10"]
    assert result.epochs > 0 and result.best_valid_ndcg10 > baseline + 0.05, (
        result.best_valid_ndcg10,
        baseline,
    )
    assert load_model_artifact(tmp_path / "run" / "model").name == "multvae"


def test_artifact_round_trip_gives_identical_scores(split, tmp_path: Path) -> None:
    params = {**load_model_params("multvae"), **SMALL}
    matrix = train_matrix(split)
    module = build_model("multvae", matrix.shape[0], matrix.shape[1] - 1, **params)
    module.set_train_matrix(matrix)
    artifact, users, history, expected = artifact_round_trip(
        module, "multvae", params, split, tmp_path / "model", unknown_user=True
    )
    assert torch.equal(artifact.score(users, history)[:, 1:], expected[:, 1:].float())
