"""EASE: the closed form checked against a direct NumPy computation, learning, the artifact round trip."""

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
from training.data import build_eval_inputs
from training.models import MODELS, build_model, pipeline_models
from training.split import make_split, train_matrix
from training.train import evaluate_module, train_model

torch.set_num_threads(1)
# 5 users x 4 items (column 0 = padding, never set).
X = np.array(
    [[0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=np.float32
)


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def test_registered_as_a_closed_form_model_with_a_dag() -> None:
    assert MODELS["ease"].kind == "general" and not MODELS["ease"].trainable
    assert "ease" in pipeline_models()


def test_weights_are_the_closed_form_with_a_zero_diagonal() -> None:
    reg = 2.0
    ease = build_model("ease", 5, 4, reg_weight=reg).fit(sp.csr_matrix(X))
    items = X[:, 1:].astype(np.float64)
    p = np.linalg.inv(items.T @ items + reg * np.eye(4))
    expected = np.eye(4) - p @ np.diag(1.0 / np.diag(p))
    weights = ease.item_weights.numpy()
    np.testing.assert_allclose(weights[1:, 1:], expected, atol=1e-6)
    np.testing.assert_array_equal(np.diag(weights), np.zeros(5))
    assert not weights[0].any() and not weights[:, 0].any()  # padding neither predicts nor is predicted
    # Known users are scored from their training rows, an unknown one from its history: X_u B.
    scores = ease.full_sort_predict(torch.tensor([0, 3, -1]), torch.tensor([[0, 0], [0, 0], [2, 4]]))
    np.testing.assert_allclose(scores[:2, 1:].numpy(), items[[0, 3]] @ expected, atol=1e-5)
    np.testing.assert_allclose(scores[2, 1:].numpy(), expected[1] + expected[3], atol=1e-5)


def test_a_non_positive_lambda_is_refused() -> None:
    with pytest.raises(ValueError, match="reg_weight"):
        build_model("ease", 5, 4, reg_weight=0.0)


def test_learns_the_synthetic_structure(split, tmp_path: Path) -> None:
    """With its configs/models default, EASE ranks the validation items above popularity."""
    result = train_model(
        "ease", split, load_model_params("ease"), TrainerConfig(num_threads=1), tmp_path / "run"
    )
    matrix = train_matrix(split)
    popularity = build_model("popularity", matrix.shape[0], matrix.shape[1] - 1).fit(matrix)
    inputs = build_eval_inputs(split, "valid", 50)
    baseline = evaluate_module(popularity, inputs, [10], 512)["ndcg@10"]
    assert result.epochs == 0 and result.best_valid_ndcg10 > baseline + 0.05, (
        result.best_valid_ndcg10,
        baseline,
    )
    assert load_model_artifact(tmp_path / "run" / "model").name == "ease"


def test_artifact_round_trip_gives_identical_scores(split, tmp_path: Path) -> None:
    params = load_model_params("ease")
    matrix = train_matrix(split)
    module = build_model("ease", matrix.shape[0], matrix.shape[1] - 1, **params).fit(matrix)
    artifact, users, history, expected = artifact_round_trip(
        module, "ease", params, split, tmp_path / "model", unknown_user=True
    )
    assert torch.equal(artifact.score(users, history)[:, 1:], expected[:, 1:].float())
