"""DIN and DIEN: ranker contract, padding, attention masks, learning, round trips, explanations, AUGRU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig, TrainerConfig, load_model_params
from pipeline.layout import Layout
from tests.model_helpers import overfit_losses
from training.artifact import load_model_artifact, save_model_artifact
from training.attributes import attributes_for
from training.data import build_eval_inputs, build_example_set
from training.models import MODELS, build_model
from training.models.capabilities import Explains, RanksCandidates, can
from training.models.dien import AUGRUCell
from training.models.din import top_history_items
from training.split import SplitIndex, make_split, train_matrix

torch.set_num_threads(1)
NAMES = ["din", "dien"]
SMALL = {
    "din": {"embedding_size": 16, "attribute_size": 4, "attention_size": 8, "mlp_sizes": [16], "lr": 0.01},
    "dien": {"embedding_size": 16, "attribute_size": 4, "hidden_size": 8, "mlp_sizes": [16], "lr": 0.01},
}
SMALL = {name: {**params, "user_id_size": 4} for name, params in SMALL.items()}


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def small(name: str, n_users: int = 7, n_items: int = 12, attributes=None, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    params = {**SMALL[name], "history_length": 8, **extra}
    return build_model(name, n_users, n_items, attributes, **params).eval()


def example_batch(split, history_length: int = 8, num_negatives: int = 4, rows: int = 128):
    examples = build_example_set(split, "train", history_length, num_negatives, seed=3)
    return examples.batch(np.arange(min(rows, len(examples))))


@pytest.mark.parametrize("name", NAMES)
def test_registered_rankers_with_configs(name: str) -> None:
    assert MODELS[name].kind == "example" and MODELS[name].trainable
    params = load_model_params(name)
    module = build_model(name, 5, 9, **params).eval()  # every yaml key is accepted
    assert can(module, RanksCandidates) and can(module, Explains) and params["history_length"] <= 30
    with torch.no_grad():
        assert module.full_sort_predict(torch.tensor([0]), torch.tensor([[0, 1, 2]])).shape == (1, 10)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_full_sort_equals_candidate_scores(name: str) -> None:
    module = small(name)
    users, history = torch.tensor([0, 6, -1]), torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    candidates = torch.tensor([[1, 5, 7], [2, 3, 12], [4, 4, 9]])
    with torch.no_grad():
        full = module.full_sort_predict(users, history)
        scores = module.score_candidates(users, history, candidates)
        top = module.explain(users, history, candidates, top=3)
    assert full.shape == (3, 13) and torch.isfinite(full).all()
    assert scores.shape == (3, 3) and top.shape == (3, 3, 3) and top.dtype == torch.long
    # The chunked full ranking (shared candidates) and the per-row path agree.
    torch.testing.assert_close(full.gather(1, candidates), scores, rtol=1e-5, atol=1e-5)
    module.score_budget = 50  # forces one candidate per chunk
    with torch.no_grad():
        torch.testing.assert_close(module.full_sort_predict(users, history), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_leading_padding_and_batch_mates_do_not_change_scores(name: str) -> None:
    module = small(name)
    histories = [[3, 4], [1, 2, 3, 4, 5, 6], [7], []]
    users = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        together = torch.zeros(4, 8, dtype=torch.long)
        for row, seq in enumerate(histories):
            if seq:
                together[row, -len(seq) :] = torch.tensor(seq)
        batch_scores = module.full_sort_predict(users, together)
        for row, seq in enumerate(histories):
            alone = torch.tensor([[0] * (3 if seq else 1) + seq])  # less padding, no batch mates
            torch.testing.assert_close(
                module.full_sort_predict(users[row : row + 1], alone)[0],
                batch_scores[row],
                rtol=1e-5,
                atol=1e-5,
            )


@pytest.mark.parametrize("name", NAMES)
def test_explain_never_returns_padding(name: str) -> None:
    module = small(name)
    history = torch.tensor([[0, 0, 0, 0, 0, 5, 9, 2], [0, 0, 0, 0, 0, 0, 0, 11], [0] * 8])
    candidates = torch.arange(1, 13).repeat(3, 1)
    with torch.no_grad():
        top = module.explain(torch.tensor([0, 1, 2]), history, candidates, top=3)
    assert set(top[0].unique().tolist()) <= {5, 9, 2} and (top[0] > 0).all()  # long enough: no padding
    assert (top[1, :, 0] == 11).all() and (top[1, :, 1:] == 0).all()  # one item, then zeros
    assert (top[2] == 0).all()  # empty history


def test_din_attention_is_unnormalised_and_masked() -> None:
    module = small("din")
    history = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    context = module._context(
        module.encoder.item_vectors(),
        module.encoder.user_vectors(*module.encoder.user_inputs(torch.tensor([0]))),
        history,
    )
    weights = module.attention(context, module.encoder.item_vectors()[torch.tensor([[1, 2]])])
    assert weights.shape == (1, 8, 2) and (weights[0, :5] == 0).all()
    # The decomposed first layer equals the paper's concatenation [h, c, h - c, h * c].
    h, c = module.encoder.item_vectors()[3], module.encoder.item_vectors()[1]
    direct = module.attention_out(module.attention_act(module.attention_in(torch.cat([h, c, h - c, h * c]))))
    torch.testing.assert_close(weights[0, 5, 0], direct[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and so does the shared-candidate (full ranking) path
        shared = module.attention(context, module.encoder.item_vectors()[torch.tensor([[1, 2]])][:1])
    torch.testing.assert_close(shared, weights.detach(), rtol=1e-5, atol=1e-5)


def test_augru_with_attention_one_is_a_gru_and_zero_keeps_the_state() -> None:
    torch.manual_seed(0)
    cell = AUGRUCell(5, 4)
    gru = torch.nn.GRUCell(5, 4)
    gru.load_state_dict(cell.state_dict())
    x, h = torch.randn(6, 5), torch.randn(6, 4)
    for grad in (True, False):  # the training path and the in-place scoring path
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(cell(x, h.clone(), torch.ones(6, 1)), gru(x, h))
            torch.testing.assert_close(cell(x, h.clone(), torch.zeros(6, 1)), h)
            half = cell(x, h.clone(), torch.full((6, 1), 0.5))
            torch.testing.assert_close(half, h + 0.5 * (gru(x, h) - h))  # by hand: a scales the update


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_when_overfitting_a_batch(name: str, split) -> None:
    index = SplitIndex.load(split)
    module = small(name, index.n_users, index.n_items, attributes_for(split))
    losses = overfit_losses(module, example_batch(split), steps=60)
    assert losses[-1] < 0.6 * losses[0]  # DIEN: the auxiliary loss redraws its negatives each step


@pytest.mark.parametrize("name", NAMES)
def test_artifact_round_trip_with_attributes_gives_identical_scores(name: str, split, tmp_path: Path) -> None:
    index = SplitIndex.load(split)
    features = attributes_for(split)
    module = small(name, index.n_users, index.n_items, features)
    overfit_losses(module, example_batch(split), steps=5)  # move the weights off their initial values
    module.eval()
    save_model_artifact(
        tmp_path / "m", name, module, {**SMALL[name], "history_length": 8}, index.item_ids, index.user_ids,
        train_matrix(split), attributes=features,
    )  # fmt: skip
    loaded = load_model_artifact(tmp_path / "m")
    users, history = torch.tensor([0, 3, -1]), torch.tensor([[0, 0, 1, 2], [5, 6, 7, 8], [0, 0, 0, 9]])
    with torch.no_grad():
        assert torch.equal(
            module.full_sort_predict(users, history), loaded.module.full_sort_predict(users, history)
        )
        codes, numbers = (torch.from_numpy(a[[0, 3]]) for a in (features.users.codes, features.users.numbers))
        assert torch.equal(
            loaded.module.full_sort_predict_from_attributes(codes, numbers, history[:2]),
            module.full_sort_predict_from_attributes(codes, numbers, history[:2]),
        )


@pytest.mark.parametrize("name", NAMES)
def test_attribute_scoring_equals_user_scoring_without_user_ids(name: str, split) -> None:
    index = SplitIndex.load(split)
    features = attributes_for(split)
    module = small(name, index.n_users, index.n_items, features, user_id_size=0)
    users, history = torch.tensor([0, 3]), torch.tensor([[0, 0, 1, 2], [5, 6, 7, 8]])
    codes, numbers = (torch.from_numpy(a[[0, 3]]) for a in (features.users.codes, features.users.numbers))
    with torch.no_grad():
        by_codes = module.full_sort_predict_from_attributes(codes, numbers, history)
        assert torch.equal(by_codes, module.full_sort_predict(users, history))
        # Attributes matter: another user's codes give other scores.
        other = module.full_sort_predict_from_attributes(codes.flip(0), numbers.flip(0), history)
        assert not torch.equal(by_codes, other)


@pytest.mark.parametrize("name", NAMES)
def test_pointwise_metrics_on_test_examples(name: str, split) -> None:
    index = SplitIndex.load(split)
    module = small(name, index.n_users, index.n_items, attributes_for(split))
    metrics = module.pointwise_metrics(build_example_set(split, "test", 8, num_negatives=1, seed=0))
    assert set(metrics) == {"auc", "logloss"} and 0.0 <= metrics["auc"] <= 1.0 and metrics["logloss"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_trains_beats_popularity_and_explains_by_its_attention(name: str, split, tmp_path: Path) -> None:
    """Trained through the pipeline it beats Popularity; its explanations are the history items its own
    attention weighs most for each candidate.

    (An earlier version asserted that the most attended item shares the candidate's cluster more often
    than chance. Across trainer seeds 1, 2, 3 and 2026 that share ranged from 0.00 to 0.59 against a
    chance of 0.25, before and after the attribute encoder changed: 8 epochs on 40 synthetic users do
    not reliably teach cluster-aligned attention, so the check passed or failed by seed. What is
    asserted now holds for every seed.)
    """
    from training.models.baselines import Popularity  # noqa: F401  (registered baseline)
    from training.train import evaluate_module, train_model

    params = {**SMALL[name], "history_length": 8, "num_negatives": 4, "batch_size": 128}
    cfg = TrainerConfig(max_epochs=8, patience=8, num_threads=1)
    result = train_model(name, split, params, cfg, tmp_path / "run")
    pop = train_model("popularity", split, {}, cfg, tmp_path / "pop")
    assert result.best_valid_ndcg10 > pop.best_valid_ndcg10
    artifact = load_model_artifact(tmp_path / "run" / "model")
    valid = build_eval_inputs(split, "valid", 8)
    assert evaluate_module(artifact.module, valid, [10], 64)["ndcg@10"] == pytest.approx(
        result.best_valid_ndcg10
    )
    module, index = artifact.module, SplitIndex.load(split)
    rows = torch.arange(min(16, valid.n_users))
    users, history = valid.users[rows], module._cut(valid.history[rows])
    candidates = torch.arange(1, index.n_items + 1).repeat(len(rows), 1)
    with torch.no_grad():
        top = module.explain(users, history, candidates, top=2)
        user_vecs = module.encoder.user_vectors(*module.encoder.user_inputs(users), users)
        context = module._context(module.encoder.item_vectors(), user_vecs, history)
        _, weights = module._logits(context, candidates)  # (B, L, N)
    expected = top_history_items(weights, history, 2)
    assert torch.equal(top, expected)
    informative = (history > 0).sum(1) >= 2
    assert informative.any() and (top[informative] > 0).all()  # two real history items each
