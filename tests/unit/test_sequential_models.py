"""GRU4Rec, NARM and BERT4Rec: registry, scoring contract, padding invariance, causality (the two
recurrent ones), learning, round trips; then BERT4Rec's own rules (cloze mask, attention in both
directions, prediction from the newest items and a [MASK])."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig, TrainerConfig, load_model_params
from pipeline.layout import Layout
from tests.model_helpers import artifact_round_trip, next_item_after_a_cycle, overfit_losses
from training.artifact import load_model_artifact
from training.data import SequentialDataModule, build_eval_inputs
from training.models import MODELS, build_model, pipeline_models
from training.models.bert4rec import cloze_mask
from training.split import make_split

torch.set_num_threads(1)
NAMES = ["gru4rec", "narm", "bert4rec"]
CAUSAL = ["gru4rec", "narm"]  # BERT4Rec attends both ways by design
SMALL = {
    "gru4rec": {"embedding_size": 16, "hidden_size": 24, "dropout": 0.0, "history_length": 10, "lr": 0.01},
    "narm": {
        "embedding_size": 16,
        "hidden_size": 24,
        "dropout": 0.0,
        "ct_dropout": 0.0,
        "history_length": 10,
        "lr": 0.01,
    },
    "bert4rec": {
        "hidden_size": 16,
        "n_layers": 1,
        "n_heads": 2,
        "inner_size": 32,
        "dropout": 0.0,
        "history_length": 10,
        "mask_prob": 0.3,
        "lr": 0.01,
    },
}


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def small(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    module = build_model(name, 7, 12, **{**SMALL[name], **extra})
    return module.eval()


def test_registered_as_sequential_pipeline_models_with_configs() -> None:
    for name in NAMES:
        assert MODELS[name].kind == "sequential" and MODELS[name].trainable
        assert name in pipeline_models()
        params = load_model_params(name)
        assert params["history_length"] == 50
        module = build_model(name, 5, 9, **params)  # the yaml's keys are all accepted
        assert module.full_sort_predict(torch.tensor([0]), torch.tensor([[0, 1, 2]])).shape == (1, 10)


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_full_sort_predict_shape(name: str, n_layers: int) -> None:
    module = small(name, n_layers=n_layers)
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    with torch.no_grad():
        scores = module.full_sort_predict(torch.tensor([0, 6, -1]), history)
    assert scores.shape == (3, 13) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    # Histories longer than history_length are cut to their newest history_length items.
    long = torch.randint(1, 13, (2, 25))
    with torch.no_grad():
        assert torch.equal(
            module.full_sort_predict(torch.tensor([0, 1]), long),
            module.full_sort_predict(torch.tensor([0, 1]), long[:, -10:]),
        )


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_left_padding_and_batch_mates_do_not_change_scores(name: str, n_layers: int) -> None:
    module = small(name, n_layers=n_layers)
    histories = [[3, 4], [1, 2, 3, 4, 5, 6], [7], []]
    width = 8
    with torch.no_grad():
        batch = torch.zeros(len(histories), width, dtype=torch.long)
        for row, seq in enumerate(histories):
            if seq:
                batch[row, width - len(seq) :] = torch.tensor(seq)
        together = module.full_sort_predict(torch.arange(4), batch)
        for row, seq in enumerate(histories):
            for pad in (0, 1, 3):
                alone = torch.tensor([[0] * pad + (seq or [0])])
                scores = module.full_sort_predict(torch.tensor([row]), alone)
                torch.testing.assert_close(scores[0], together[row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_training_states_are_causal_and_match_serving(name: str) -> None:
    """Position t of a training window sees only items up to t and equals serving the prefix."""
    module = small(name)
    history = torch.tensor([[0, 0, 0, 5, 2, 9, 11, 3, 1, 7]])
    with torch.no_grad():
        states = module.encode(history)
        changed = history.clone()
        changed[0, -2:] = torch.tensor([4, 4])
        assert torch.allclose(module.encode(changed)[0, :-2], states[0, :-2], atol=1e-6)
        weights = module.item_embedding.weight
        for t in range(3, 10):
            served = module.full_sort_predict(torch.tensor([0]), history[:, : t + 1])
            torch.testing.assert_close(served[0], states[0, t] @ weights.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_when_overfitting_a_batch(name: str, split) -> None:
    torch.manual_seed(0)
    dm = SequentialDataModule(split, history_length=10, batch_size=256)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = build_model(name, dm.n_users, dm.n_items, **SMALL[name])
    # BERT4Rec draws a new cloze mask every step, so one batch is many tasks: it needs more steps.
    losses = overfit_losses(module, batch, steps=200 if name == "bert4rec" else 60)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", NAMES)
def test_artifact_round_trip_gives_identical_scores(name: str, split, tmp_path: Path) -> None:
    dm = SequentialDataModule(split, history_length=10)
    torch.manual_seed(0)
    module = build_model(name, dm.n_users, dm.n_items, **SMALL[name]).eval()
    artifact, users, history, expected = artifact_round_trip(
        module, name, SMALL[name], split, tmp_path / "model", meta={"protocol": split.protocol}
    )
    assert artifact.kind == "sequential"
    actual = artifact.score(users, history)
    assert torch.equal(actual[:, 1:], expected[:, 1:].float())
    assert actual[:, 0].eq(-torch.inf).all()


@pytest.mark.parametrize("name", NAMES)
def test_trains_with_lightning_and_writes_an_artifact(name: str, split, tmp_path: Path) -> None:
    from training.train import train_model

    params = {**SMALL[name], "batch_size": 32}
    run_dir = tmp_path / "runs" / name
    result = train_model(name, split, params, TrainerConfig(max_epochs=2, patience=2, num_threads=1), run_dir)
    assert result.epochs == 2 and 0.0 <= result.best_valid_ndcg10 <= 1.0
    artifact = load_model_artifact(run_dir / "model")
    inputs = build_eval_inputs(split, "valid", history_length=10)
    assert torch.isfinite(artifact.score(inputs.users, inputs.history)[:, 1:]).all()


def test_eval_inputs_can_leave_seen_items_rankable(split) -> None:
    excluded = build_eval_inputs(split, "test", history_length=10)
    included = build_eval_inputs(split, "test", history_length=10, exclude_seen=False)
    assert excluded.exclude.nnz > 0 and included.exclude.nnz == 0
    assert included.exclude.shape == excluded.exclude.shape
    assert torch.equal(included.users, excluded.users) and torch.equal(included.history, excluded.history)
    assert (included.truth != excluded.truth).nnz == 0


def test_bert4rec_is_registered_and_serves_like_sasrec() -> None:
    spec = MODELS["bert4rec"]
    assert spec.kind == "sequential" and spec.trainable and "bert4rec" in pipeline_models()
    assert spec.capabilities == MODELS["sasrec"].capabilities
    params = load_model_params("bert4rec")
    module = build_model("bert4rec", 5, 9, **params)  # the yaml's keys are all accepted
    assert module.full_sort_predict(torch.tensor([0]), torch.tensor([[0, 1, 2]])).shape == (1, 10)
    assert module.item_embeddings().shape == (10, params["hidden_size"])  # no [MASK] row among the items


def test_bert4rec_cloze_mask_hides_real_items_only_and_at_least_one_per_sequence() -> None:
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 50, (2000, 12))
    items[:, :4] = 0  # right-aligned: padding on the left
    items[:3] = 0  # sequences without any item
    masked = cloze_mask(items, 0.2, generator)
    assert not masked[items == 0].any()
    assert masked[3:].any(dim=1).all() and not masked[:3].any()
    share = masked[3:].float().sum() / (items[3:] > 0).sum()
    assert 0.19 < share < 0.23  # 0.2 drawn, plus the newest item of the ~17% of rows that drew none
    assert torch.equal(cloze_mask(items, 1.0, generator), items > 0)
    one_item = torch.tensor([[0, 0, 7]])
    assert torch.equal(cloze_mask(one_item, 0.01, generator), torch.tensor([[False, False, True]]))


def test_bert4rec_attention_reads_both_directions_while_sasrec_stays_causal() -> None:
    torch.manual_seed(0)
    sequence = torch.tensor([[0, 3, 5, 2, 8]])
    changed = sequence.clone()
    changed[0, -1] = 6  # only the newest item differs
    for name, first_state_moves in (("bert4rec", True), ("sasrec", False)):
        params = {k: v for k, v in SMALL["bert4rec"].items() if k != "mask_prob" or name == "bert4rec"}
        module = build_model(name, 1, 9, **params).eval()
        with torch.no_grad():
            before, after = module.encode(sequence), module.encode(changed)
        assert (not torch.allclose(before[0, 1], after[0, 1])) == first_state_moves, name


def test_bert4rec_prediction_reads_the_newest_items_and_a_mask_after_them() -> None:
    torch.manual_seed(0)
    module = build_model("bert4rec", 1, 30, **SMALL["bert4rec"]).eval()
    history = torch.randint(1, 31, (4, 25))
    with torch.no_grad():
        scores = module.full_sort_predict(torch.full((4,), -1), history)
        tail = module.full_sort_predict(torch.full((4,), -1), history[:, -9:])
        state = module.head(module.encode(torch.cat([history[:, -9:], torch.full((4, 1), 31)], 1))[:, -1])
    assert scores.shape == (4, 31)
    torch.testing.assert_close(scores, tail)  # history_length 10 = 9 known items + [MASK]
    torch.testing.assert_close(scores, state @ module.item_embedding.weight[:31].T + module.output_bias)


def test_bert4rec_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        build_model("bert4rec", 3, 8, **{**SMALL["bert4rec"], "mask_prob": 0.0})
    with pytest.raises(ValueError, match="mask_prob"):
        build_model("bert4rec", 3, 8, **{**SMALL["bert4rec"], "mask_prob": 1.5})
    with pytest.raises(ValueError, match="history_length"):
        build_model("bert4rec", 3, 8, **{**SMALL["bert4rec"], "history_length": 1})


def test_bert4rec_learns_a_next_item_cycle() -> None:
    """Sequences walk a fixed cycle of the catalogue; after training, the item after a history ranks
    first. The histories hold 9 items, so with the [MASK] they are as long as the training windows."""
    predicted, expected = next_item_after_a_cycle("bert4rec", SMALL["bert4rec"], steps=300, known=9)
    assert torch.equal(predicted, expected)
