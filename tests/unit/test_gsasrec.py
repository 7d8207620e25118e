"""gSASRec: the gBCE loss by hand and at its limits, the negative sampler, learning, the artifact round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig, TrainerConfig, load_model_params, load_tuning_grid
from pipeline.layout import Layout
from tests.model_helpers import artifact_round_trip, next_item_after_a_cycle
from training.artifact import load_model_artifact
from training.data import build_eval_inputs
from training.models import MODELS, build_model, pipeline_models
from training.models.gsasrec import gbce_beta, gbce_loss, negative_logits, sample_negatives

torch.set_num_threads(1)
SMALL = {
    "hidden_size": 16,
    "n_layers": 1,
    "n_heads": 2,
    "inner_size": 32,
    "history_length": 10,
    "dropout": 0.0,
    "negatives": 4,
    "lr": 0.01,
}


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    from training.split import make_split

    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def test_registered_as_a_sequential_model_that_serves_like_sasrec() -> None:
    spec = MODELS["gsasrec"]
    assert spec.kind == "sequential" and spec.trainable and "gsasrec" in pipeline_models()
    assert spec.capabilities == MODELS["sasrec"].capabilities
    params = load_model_params("gsasrec")
    grid = load_tuning_grid("gsasrec")  # the defaults are one of its candidates: the one validation chose
    assert grid is not None and {256, 16, 1} <= set(grid["negatives"]) and 0.75 in grid["gbce_t"]
    assert all(params[name] in values for name, values in grid.items())
    sasrec = load_model_params("sasrec")
    assert {k: v for k, v in params.items() if k not in ("negatives", "gbce_t", "tied_output")} == {
        k: v for k, v in sasrec.items() if k != "loss_type"
    }
    module = build_model("gsasrec", 5, 9, **params)  # the yaml's keys are all accepted
    assert module.full_sort_predict(torch.tensor([0]), torch.tensor([[0, 1, 2]])).shape == (1, 10)


def test_beta_follows_the_paper_and_its_limits() -> None:
    # alpha = k / (|I| - 1); beta = alpha (t (1 - 1/alpha) + 1/alpha)
    alpha = 256 / 1681
    assert gbce_beta(256, 1682, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert gbce_beta(256, 1682, 0.75) == pytest.approx(1 + 0.75 * (alpha - 1))  # the same, expanded
    assert gbce_beta(256, 1682, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    assert gbce_beta(256, 1682, 1.0) == pytest.approx(alpha)  # t = 1: fully calibrated
    assert gbce_beta(1681, 1682, 0.3) == pytest.approx(1.0)  # every other item sampled: nothing to correct
    betas = [gbce_beta(10, 101, t / 10) for t in range(11)]
    assert all(a > b for a, b in zip(betas[:-1], betas[1:], strict=True))  # more calibration, a smaller power


def test_loss_by_hand() -> None:
    positive = torch.tensor([0.5, -2.0])
    negative = torch.tensor([[-1.0, 2.0], [0.0, 3.0]])
    beta = 0.4

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    by_hand = [
        -math.log(sigmoid(0.5) ** beta) - math.log(1 - sigmoid(-1.0)) - math.log(1 - sigmoid(2.0)),
        -math.log(sigmoid(-2.0) ** beta) - math.log(1 - sigmoid(0.0)) - math.log(1 - sigmoid(3.0)),
    ]
    assert gbce_loss(positive, negative, beta).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_beta_one_is_binary_cross_entropy_with_the_negatives() -> None:
    positive, negative = torch.randn(5), torch.randn(5, 3)
    logits = torch.cat([positive.unsqueeze(-1), negative], -1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1).mean()
    torch.testing.assert_close(gbce_loss(positive, negative, gbce_beta(3, 50, 0.0)), bce)


def test_loss_is_finite_at_extreme_logits() -> None:
    positive = torch.tensor([-1000.0, 1000.0], requires_grad=True)
    negative = torch.tensor([[1000.0], [-1000.0]], requires_grad=True)
    loss = gbce_loss(positive, negative, 0.2)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx((0.2 * 1000 + 1000) / 2)
    assert torch.isfinite(positive.grad).all() and torch.isfinite(negative.grad).all()


def test_negatives_are_uniform_over_the_other_items() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.tensor([1, 3, 5])
    draws = sample_negatives(targets, 5, 4000, generator)
    assert draws.shape == (3, 4000)
    for row, target in enumerate(targets.tolist()):
        counts = torch.bincount(draws[row], minlength=6)
        assert counts[0] == 0 and counts[target] == 0
        others = counts[[i for i in range(1, 6) if i != target]]
        assert others.min() > 900 and others.max() < 1100  # 1000 expected each


@pytest.mark.parametrize("n_items", [8, 5000])  # logits read from the full matrix, then from gathered rows
def test_negative_logits_are_dot_products(n_items: int) -> None:
    torch.manual_seed(0)
    states, weights = torch.randn(6, 4), torch.randn(n_items + 1, 4)
    items = sample_negatives(torch.randint(1, n_items + 1, (6,)), n_items, 3)
    expected = torch.stack([weights[items[t]] @ states[t] for t in range(6)])
    torch.testing.assert_close(negative_logits(states, weights, items), expected)


def test_negatives_are_capped_by_the_catalogue_and_bad_settings_refused() -> None:
    module = build_model("gsasrec", 3, 8, **{**SMALL, "negatives": 256, "gbce_t": 1.0})
    assert module.negatives == 7 and module.beta == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gbce_t"):
        build_model("gsasrec", 3, 8, **{**SMALL, "gbce_t": 1.5})
    with pytest.raises(ValueError, match="negatives"):
        build_model("gsasrec", 3, 8, **{**SMALL, "negatives": 0})


def test_learns_a_next_item_cycle() -> None:
    """Sequences walk a fixed cycle of the catalogue; after training, the next item ranks first."""
    predicted, expected = next_item_after_a_cycle("gsasrec", SMALL, steps=80, known=5)
    assert torch.equal(predicted, expected)


def test_artifact_round_trip_gives_identical_scores(split, tmp_path: Path) -> None:
    from training.data import SequentialDataModule

    dm = SequentialDataModule(split, history_length=10)
    torch.manual_seed(0)
    module = build_model("gsasrec", dm.n_users, dm.n_items, **SMALL).eval()
    artifact, users, history, expected = artifact_round_trip(
        module, "gsasrec", SMALL, split, tmp_path / "model", meta={"protocol": split.protocol}
    )
    assert artifact.kind == "sequential"
    actual = artifact.score(users, history)
    assert torch.equal(actual[:, 1:], expected[:, 1:].float())


def test_trains_with_lightning_and_writes_an_artifact(split, tmp_path: Path) -> None:
    from training.train import train_model

    run_dir = tmp_path / "runs" / "gsasrec"
    result = train_model(
        "gsasrec",
        split,
        {**SMALL, "batch_size": 32},
        TrainerConfig(max_epochs=2, patience=2, num_threads=1),
        run_dir,
    )
    assert result.epochs == 2 and 0.0 <= result.best_valid_ndcg10 <= 1.0
    artifact = load_model_artifact(run_dir / "model")
    inputs = build_eval_inputs(split, "valid", history_length=10)
    assert torch.isfinite(artifact.score(inputs.users, inputs.history)[:, 1:]).all()


def test_untied_output_scores_and_learns_with_a_table_of_its_own() -> None:
    torch.manual_seed(0)
    module = build_model("gsasrec", 1, 12, **{**SMALL, "tied_output": False})
    history = torch.randint(1, 13, (3, 6))
    with torch.no_grad():
        last = module.encode(history)[:, -1]
        torch.testing.assert_close(
            module.full_sort_predict(torch.full((3,), -1), history), last @ module.output_embedding.weight.T
        )
    batch = {"history": history, "targets": torch.randint(1, 13, (3, 6))}
    module.calculate_loss(batch).backward()
    assert module.output_embedding.weight.grad.abs().sum() > 0  # negatives and positives score here
    tied = build_model("gsasrec", 1, 12, **SMALL)
    assert tied.output_embedding is None and tied.output_weights() is tied.item_embedding.weight
