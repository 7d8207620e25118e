"""Rating MF, content-based TF-IDF and top-K REINFORCE: shapes, learning, artifacts, model properties."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig, TrainerConfig
from pipeline.layout import Layout
from pipeline.schema import DataSchema
from tests.model_helpers import artifact_round_trip, overfit_losses
from training.artifact import load_model_artifact
from training.attributes import Attributes, attributes_for, encode_side
from training.data import ExampleDataModule, build_eval_inputs
from training.models import MODELS, build_model
from training.models.reinforce import snips, topk_correction, topk_inclusion
from training.split import make_split
from training.train import evaluate_module, train_model

torch.set_num_threads(1)
SMALL = {
    "mf": {"embedding_size": 8, "lr": 0.02, "reg_weight": 0.01, "num_negatives": 0, "batch_size": 256},
    "content": {},
    "reinforce": {
        "embedding_size": 16,
        "hidden_size": 16,
        "history_length": 10,
        "lr": 0.01,
        "num_negatives": 0,
        "batch_size": 128,
    },
}
LEARNED = ["mf", "reinforce"]


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def _example_batch(split, name: str, size: int = 256) -> tuple[ExampleDataModule, dict]:
    params = SMALL[name]
    dm = ExampleDataModule(
        split, num_negatives=0, batch_size=size, history_length=params.get("history_length", 10)
    )
    dm.setup("fit")
    return dm, next(iter(dm.train_dataloader()))


def _content(split, n_users: int, n_items: int, matrix: sp.csr_matrix):
    module = build_model("content", n_users, n_items, attributes_for(split), **SMALL["content"])
    return module.fit(matrix)


def test_registered_with_their_kinds() -> None:
    assert MODELS["mf"].kind == "example" and MODELS["reinforce"].kind == "example"
    assert MODELS["content"].kind == "general" and not MODELS["content"].trainable


@pytest.mark.parametrize("name", LEARNED)
def test_full_sort_predict_shape_and_unknown_user(name: str) -> None:
    module = build_model(name, 7, 12, **SMALL[name]).eval()
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    with torch.no_grad():
        scores = module.full_sort_predict(torch.tensor([0, 6, -1]), history)
    assert scores.shape == (3, 13)
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name", LEARNED)
def test_loss_falls_when_overfitting_a_batch(name: str, split) -> None:
    torch.manual_seed(0)
    dm, batch = _example_batch(split, name)
    module = build_model(name, dm.n_users, dm.n_items, **SMALL[name])
    losses = overfit_losses(module, batch, steps=80)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", [*LEARNED, "content"])
def test_artifact_round_trip_gives_identical_scores(name: str, split, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm, batch = _example_batch(split, name if name != "content" else "mf")
    features = attributes_for(split)
    if name == "content":
        module = _content(split, dm.n_users, dm.n_items, dm.train_matrix)
    else:
        module = build_model(name, dm.n_users, dm.n_items, **SMALL[name])
        overfit_losses(module, batch, steps=3)  # weights (and MF's rating buffers) are not the init
    artifact, users, history, expected = artifact_round_trip(
        module,
        name,
        SMALL[name],
        split,
        tmp_path / "model",
        attributes=features if name == "content" else None,
        unknown_user=True,
    )
    actual = artifact.score(users, history)
    assert torch.equal(actual[:, 1:], expected[:, 1:].float())


def _popularity_valid_ndcg(split, matrix: sp.csr_matrix, n_users: int, n_items: int, length: int) -> float:
    popularity = build_model("popularity", n_users, n_items).fit(matrix)
    return evaluate_module(popularity, build_eval_inputs(split, "valid", length), [10], 512)["ndcg@10"]


@pytest.mark.parametrize("name", ["content", "reinforce"])
def test_train_model_beats_popularity_on_synthetic_split(name: str, split, tmp_path: Path) -> None:
    cfg = TrainerConfig(max_epochs=8, patience=8, num_threads=1)
    result = train_model(name, split, SMALL[name], cfg, tmp_path / "run")
    dm = ExampleDataModule(split)
    baseline = _popularity_valid_ndcg(split, dm.train_matrix, dm.n_users, dm.n_items, 50)
    assert result.best_valid_ndcg10 > baseline, (result.best_valid_ndcg10, baseline)
    assert load_model_artifact(tmp_path / "run" / "model").name == name


def test_mf_train_model_and_rating_metrics(split, tmp_path: Path) -> None:
    cfg = TrainerConfig(max_epochs=2, patience=2, num_threads=1)
    result = train_model("mf", split, SMALL["mf"], cfg, tmp_path / "run")
    assert result.epochs == 2 and 0.0 <= result.best_valid_ndcg10 <= 1.0
    module = load_model_artifact(tmp_path / "run" / "model").module
    assert float(module.rating_min) == 1.0 and float(module.rating_max) == 5.0  # synthetic ratings 1..5


# ----- rating MF -------------------------------------------------------------------------------------


def _cluster_ratings(n_users: int = 60, n_items: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every pair rated: 5 when user and item share one of 2 clusters, 1 otherwise, plus noise."""
    rng = np.random.default_rng(seed)
    users, items = np.meshgrid(np.arange(n_users), np.arange(1, n_items + 1), indexing="ij")
    users, items = users.ravel(), items.ravel()
    same = (users % 2) == (items % 2)
    ratings = np.where(same, 5.0, 1.0) + rng.normal(0, 0.3, size=len(users))
    return {
        "users": torch.from_numpy(users),
        "items": torch.from_numpy(items),
        "ratings": torch.from_numpy(ratings.astype(np.float32)),
        "history": torch.zeros(len(users), 1, dtype=torch.long),
    }


def test_mf_beats_global_mean_on_structured_ratings() -> None:
    torch.manual_seed(0)
    data = _cluster_ratings()
    perm = torch.randperm(len(data["users"]))
    train = {k: v[perm[:1800]] for k, v in data.items()}
    test = {k: v[perm[1800:]] for k, v in data.items()}
    module = build_model("mf", 60, 40, embedding_size=4, lr=0.05, reg_weight=0.001)
    overfit_losses(module, train, steps=150)
    module.eval()
    metrics = module.pointwise_metrics(SimpleNamespace(all=lambda: test))
    assert metrics["rmse"] < 0.6 < 1.5 < metrics["rmse_global_mean"], metrics
    assert metrics["mae"] < metrics["rmse"] + 1e-9
    assert float(module.rating_min) <= float(train["ratings"].min()) + 1e-6
    # Ranking by predicted rating puts the user's own cluster first.
    scores = module.full_sort_predict(torch.tensor([0]), torch.zeros(1, 1, dtype=torch.long))[0, 1:]
    top = torch.topk(scores, 10).indices + 1
    assert bool((top % 2 == 0).all())


def test_mf_skips_nan_ratings_and_keeps_a_gradient() -> None:
    module = build_model("mf", 3, 5)
    batch = {
        "users": torch.tensor([0, 1]),
        "items": torch.tensor([1, 2]),
        "ratings": torch.tensor([float("nan"), float("nan")]),
    }
    loss = module.calculate_loss(batch)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    batch["ratings"] = torch.tensor([float("nan"), 4.0])
    loss = module.calculate_loss(batch)
    assert torch.isfinite(loss) and float(module.rating_count) == 1.0
    assert float(module.global_bias) == 4.0  # initialised to the first batch's mean rating


def test_mf_predictions_clipped_to_training_range() -> None:
    module = build_model("mf", 2, 3)
    module.rating_min.fill_(1.0)
    module.rating_max.fill_(5.0)
    assert module.clip(torch.tensor([-3.0, 2.5, 9.0])).tolist() == [1.0, 2.5, 5.0]


# ----- content-based --------------------------------------------------------------------------------


def _hand_features() -> Attributes:
    """5 items: 1 and 2 share genre A and title word "star"; 3 has genre A only; 4, 5 are unrelated
    but for the year bin they share."""
    schema = DataSchema.model_validate(
        {
            "item_features": {
                "genres": {"type": "list"},
                "year": {"type": "numeric", "bin_width": 10},
                "title": {"type": "text", "max_tokens": 2},
            }
        }
    )
    rows = pd.DataFrame(
        {
            "genres": [["A"], ["A"], ["A"], ["B"], ["C"]],
            "year": [1980, 1980, 1990, 2000, 2000],
            "title": ["star one", "star two", "three", "love", "five"],
        },
        index=["i1", "i2", "i3", "i4", "i5"],
    )
    items = encode_side("item", schema, rows, list(rows.index), padding=True)
    users = encode_side("user", schema, pd.DataFrame(index=["u0", "u1"]), ["u0", "u1"], padding=False)
    return Attributes(schema, users, items)


def test_content_similar_attributes_score_higher_and_cold_user_from_history() -> None:
    module = build_model("content", 2, 5, _hand_features())
    vectors = module.item_embeddings()
    assert vectors.shape[0] == 6
    torch.testing.assert_close(vectors[1:].norm(dim=1), torch.ones(5))
    train = sp.csr_matrix(np.array([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]], dtype=np.float32))
    module.fit(train)
    scores = module.full_sort_predict(torch.tensor([0, 1]), torch.zeros(2, 3, dtype=torch.long))
    # User 0 watched item 1: item 2 (genre + title word + year) > item 3 (genre) > unrelated 4, 5.
    assert scores[0, 2] > scores[0, 3] > scores[0, 4] == scores[0, 5] == 0.0
    assert scores[1, 4] > scores[1, 5] > scores[1, 1]  # item 5 shares item 4's year bin only
    # An unknown user with the same history as user 0 gets the same scores.
    cold = module.full_sort_predict(torch.tensor([-1]), torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(cold[0], scores[0])


def test_content_recency_weighting_favours_the_newest_item() -> None:
    module = build_model("content", 1, 5, _hand_features(), recency_decay=0.1)
    module.fit(sp.csr_matrix((1, 6), dtype=np.float32))
    scores = module.full_sort_predict(torch.tensor([-1]), torch.tensor([[1, 4]]))  # 4 is newest
    assert scores[0, 5] > scores[0, 2]


def test_content_without_item_attributes_names_the_fix() -> None:
    with pytest.raises(ValueError, match="declares none"):
        build_model("content", 1, 5).fit(sp.csr_matrix((1, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="not item attributes"):
        build_model("content", 1, 5, _hand_features(), field_weights={"genre": 2.0})


# ----- REINFORCE --------------------------------------------------------------------------------------


def test_topk_correction_matches_hand_computation() -> None:
    pi = torch.tensor([0.0, 0.1, 0.5, 1.0])
    # K (1 - pi)^(K-1) with K = 3: 3, 3 * 0.81, 3 * 0.25, 0.
    torch.testing.assert_close(topk_correction(pi, 3), torch.tensor([3.0, 2.43, 0.75, 0.0]))
    torch.testing.assert_close(topk_inclusion(pi, 3), torch.tensor([0.0, 0.271, 0.875, 1.0]))
    assert torch.equal(topk_correction(pi, 1), torch.ones(4))  # K = 1: plain REINFORCE


def test_reinforce_loss_weights_by_hand() -> None:
    """With zero item embeddings pi = beta = uniform over n items: weight = 1 * K(1-1/n)^(K-1) * r."""
    torch.manual_seed(0)
    n, k = 4, 3
    module = build_model("reinforce", 2, n, embedding_size=4, hidden_size=4, top_k=k, ce_weight=0.0)
    with torch.no_grad():
        module.item_embedding.weight.zero_()
        module.beta_item_embedding.weight.zero_()
    batch = {
        "users": torch.tensor([0, 1]),
        "items": torch.tensor([1, 2]),
        "ratings": torch.tensor([5.0, 2.0]),  # rewards 1 and 0
        "history": torch.tensor([[0, 3], [1, 2]]),
    }
    log_uniform = float(np.log(1 / n))
    expected = -(k * (1 - 1 / n) ** (k - 1) * 1.0 * log_uniform) / 2 - log_uniform
    assert abs(float(module.calculate_loss(batch)) - expected) < 1e-5


def test_reinforce_offpolicy_estimate_equals_logged_reward_when_pi_is_beta() -> None:
    torch.manual_seed(0)
    module = build_model("reinforce", 5, 9, embedding_size=8, hidden_size=8, top_k=3).eval()
    with torch.no_grad():  # pi == beta: the behaviour head is a copy of the policy head
        module.beta_head.load_state_dict(module.policy_head.state_dict())
        module.beta_item_embedding.weight.copy_(module.item_embedding.weight)
    examples = {
        "users": torch.arange(6) % 5,
        "items": torch.tensor([1, 4, 2, 9, 5, 3]),
        "ratings": torch.tensor([5.0, 1.0, 4.0, float("nan"), 2.0, 3.0]),
        "history": torch.tensor([[0, 2], [1, 3], [0, 0], [4, 5], [6, 7], [0, 8]]),
    }
    metrics = module.pointwise_metrics(SimpleNamespace(all=lambda: examples))
    assert metrics["logged_reward"] == pytest.approx(3 / 6)  # 5, 4 and the implicit (NaN) event
    assert metrics["snips_reward@1"] == pytest.approx(metrics["logged_reward"], abs=1e-9)
    assert 0.0 <= metrics["snips_reward@3"] <= 1.0
    # SNIPS by hand: weights 2 and 1 on rewards 1 and 0 -> 2/3.
    assert snips(torch.tensor([0.2, 0.1]), torch.tensor([0.1, 0.1]), torch.tensor([1.0, 0.0]), 10) == (
        pytest.approx(2 / 3)
    )


def test_reinforce_beta_head_does_not_move_the_policy_state() -> None:
    torch.manual_seed(0)
    module = build_model("reinforce", 2, 6, embedding_size=4, hidden_size=4)
    state = module.state(torch.tensor([[1, 2], [0, 3]]))
    F_beta = torch.nn.functional.log_softmax(module.beta_logits(state), dim=1)[:, 1].sum()
    F_beta.backward()
    assert module.gru.weight_hh_l0.grad is None and module.beta_head.weight.grad is not None
