"""BERT4Rec's own rules: the cloze mask, attention in both directions, prediction from the newest items
and a [MASK], learning. The contract it shares with the other sequential models (shapes, padding,
round trip, Lightning training): test_sequential_models.py."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_model_params
from tests.model_helpers import next_item_after_a_cycle
from training.models import MODELS, build_model, pipeline_models
from training.models.bert4rec import cloze_mask

torch.set_num_threads(1)
SMALL = {
    "hidden_size": 16,
    "n_layers": 1,
    "n_heads": 2,
    "inner_size": 32,
    "history_length": 10,
    "dropout": 0.0,
    "mask_prob": 0.3,
    "lr": 0.01,
}


def test_registered_as_a_sequential_model_that_serves_like_sasrec() -> None:
    spec = MODELS["bert4rec"]
    assert spec.kind == "sequential" and spec.trainable and "bert4rec" in pipeline_models()
    assert spec.capabilities == MODELS["sasrec"].capabilities
    params = load_model_params("bert4rec")
    module = build_model("bert4rec", 5, 9, **params)  # the yaml's keys are all accepted
    assert module.full_sort_predict(torch.tensor([0]), torch.tensor([[0, 1, 2]])).shape == (1, 10)
    assert module.item_embeddings().shape == (10, params["hidden_size"])  # no [MASK] row among the items


def test_cloze_mask_hides_real_items_only_and_at_least_one_per_sequence() -> None:
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


def test_attention_reads_both_directions_while_sasrec_stays_causal() -> None:
    torch.manual_seed(0)
    sequence = torch.tensor([[0, 3, 5, 2, 8]])
    changed = sequence.clone()
    changed[0, -1] = 6  # only the newest item differs
    for name, first_state_moves in (("bert4rec", True), ("sasrec", False)):
        params = {k: v for k, v in SMALL.items() if k != "mask_prob" or name == "bert4rec"}
        module = build_model(name, 1, 9, **params).eval()
        with torch.no_grad():
            before, after = module.encode(sequence), module.encode(changed)
        assert (not torch.allclose(before[0, 1], after[0, 1])) == first_state_moves, name


def test_prediction_reads_the_newest_items_and_a_mask_after_them() -> None:
    torch.manual_seed(0)
    module = build_model("bert4rec", 1, 30, **SMALL).eval()
    history = torch.randint(1, 31, (4, 25))
    with torch.no_grad():
        scores = module.full_sort_predict(torch.full((4,), -1), history)
        tail = module.full_sort_predict(torch.full((4,), -1), history[:, -9:])
        state = module.head(module.encode(torch.cat([history[:, -9:], torch.full((4, 1), 31)], 1))[:, -1])
    assert scores.shape == (4, 31)
    torch.testing.assert_close(scores, tail)  # history_length 10 = 9 known items + [MASK]
    torch.testing.assert_close(scores, state @ module.item_embedding.weight[:31].T + module.output_bias)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        build_model("bert4rec", 3, 8, **{**SMALL, "mask_prob": 0.0})
    with pytest.raises(ValueError, match="mask_prob"):
        build_model("bert4rec", 3, 8, **{**SMALL, "mask_prob": 1.5})
    with pytest.raises(ValueError, match="history_length"):
        build_model("bert4rec", 3, 8, **{**SMALL, "history_length": 1})


def test_learns_a_next_item_cycle() -> None:
    """Sequences walk a fixed cycle of the catalogue; after training, the item after a history ranks
    first. The histories hold 9 items, so with the [MASK] they are as long as the training windows."""
    predicted, expected = next_item_after_a_cycle("bert4rec", SMALL, steps=150, known=9)
    assert torch.equal(predicted, expected)
