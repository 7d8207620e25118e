"""Hybrid MF (MF with side features): cold users and items placed by their attributes, ids-only = MF."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig
from pipeline.layout import Layout
from tests.model_helpers import cold_start_holdout
from training.attributes import attributes_for
from training.data import GeneralDataModule
from training.models import build_model
from training.split import make_split

torch.set_num_threads(1)
# Heavier id dropout than the default: ~36 training users give the attribute vectors few rows otherwise.
PARAMS = {"embedding_size": 16, "lr": 0.01, "reg_weight": 1e-3, "id_dropout": 0.8}


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def _train(module, matrix: sp.csr_matrix, epochs: int) -> None:
    """BPR steps over the (user, item) pairs of ``matrix`` with uniform negatives."""
    users, items = matrix.nonzero()
    rng = np.random.default_rng(0)
    optimizer = module.configure_optimizers()
    module.train()
    for _ in range(epochs):
        order = rng.permutation(len(users))
        for start in range(0, len(order), 128):
            rows = order[start : start + 128]
            batch = {
                "users": torch.from_numpy(users[rows].astype(np.int64)),
                "positives": torch.from_numpy(items[rows].astype(np.int64)),
                "negatives": torch.from_numpy(rng.integers(1, module.n_items + 1, len(rows))),
            }
            optimizer.zero_grad()
            module.calculate_loss(batch).backward()
            optimizer.step()
    module.eval()


def _held_out(split):
    """The train matrix without two users per cluster and one item per cluster (the cold ones)."""
    dm = GeneralDataModule(split, batch_size=128, history_length=10)
    return dm, *cold_start_holdout(split, dm.index, dm.train_matrix)


def test_cold_users_and_items_are_placed_by_their_attributes(split) -> None:
    torch.manual_seed(0)
    dm, matrix, user_cluster, item_cluster, cold_users, cold_items = _held_out(split)
    module = build_model("hybridmf", dm.n_users, dm.n_items, attributes_for(split), **PARAMS)
    module.set_train_matrix(matrix)
    _train(module, matrix, epochs=30)

    users = attributes_for(split).users
    codes, numbers = torch.from_numpy(users.codes[cold_users]), torch.from_numpy(users.numbers[cold_users])
    with torch.no_grad():
        scores = module.full_sort_predict_from_attributes(
            codes, numbers, torch.zeros(len(cold_users), 1).long()
        )
    wins = []
    for row, cluster in enumerate(user_cluster[cold_users]):
        own = scores[row, 1:][item_cluster[1:] == cluster]
        other = scores[row, 1:][item_cluster[1:] != cluster]
        wins.append(float((own.unsqueeze(1) > other.unsqueeze(0)).float().mean()))
    assert np.mean(wins) > 0.6, wins  # chance = 0.5

    # A cold item ranks higher for the warm users of its cluster than for the others.
    warm = np.setdiff1d(np.arange(dm.n_users), cold_users)
    with torch.no_grad():
        warm_scores = module.full_sort_predict(torch.from_numpy(warm), torch.zeros(len(warm), 1).long())
    percentile = (warm_scores[:, 1:].unsqueeze(1) < warm_scores[:, cold_items].unsqueeze(2)).float().mean(2)
    lifts = [
        float(percentile[user_cluster[warm] == item_cluster[item], j].mean())
        - float(percentile[user_cluster[warm] != item_cluster[item], j].mean())
        for j, item in enumerate(cold_items)
    ]
    assert np.mean(lifts) > 0.1, lifts

    # The vector of a new item given by its attributes is the cold item's own vector.
    item_side = attributes_for(split).items
    with torch.no_grad():
        new = module.item_embeddings_from_attributes(
            torch.from_numpy(item_side.codes[cold_items]), torch.from_numpy(item_side.numbers[cold_items])
        )
        torch.testing.assert_close(new, module.item_embeddings()[cold_items])


def test_without_attributes_it_is_mf_and_cannot_place_a_cold_item(split) -> None:
    torch.manual_seed(0)
    dm, matrix, _, _, _, cold_items = _held_out(split)
    module = build_model("hybridmf", dm.n_users, dm.n_items, None, **PARAMS)
    module.set_train_matrix(matrix)
    _train(module, matrix, epochs=3)
    with torch.no_grad():
        scores = module.full_sort_predict(torch.arange(dm.n_users), torch.zeros(dm.n_users, 1).long())
    # No id vector, no bias, no attributes: the same score (zero) for every user.
    assert torch.count_nonzero(scores[:, cold_items]) == 0
    assert scores[:, 1:].std() > 0


def test_an_unknown_user_is_folded_in_from_the_history(split) -> None:
    dm = GeneralDataModule(split, batch_size=128, history_length=10)
    module = build_model("hybridmf", dm.n_users, dm.n_items, attributes_for(split), **PARAMS).eval()
    history = torch.tensor([[0, 0, 3, 4], [0, 0, 0, 7], [0, 0, 0, 0]])
    with torch.no_grad():
        scores = module.full_sort_predict(torch.tensor([-1, -1, -1]), history)
        vectors, bias = module.item_embeddings(), module._catalogue()[1]
        unknown_row = module.user_attributes(torch.tensor([dm.n_users])).sum(-2)
    expected = (unknown_row + vectors[[3, 4]].mean(0)) @ vectors.T + bias
    torch.testing.assert_close(scores[0], expected[0])
    assert not torch.allclose(scores[0], scores[1]) and not torch.allclose(scores[1], scores[2])
