"""ItemKNN, UserKNN, NeuMF and LightGCN: shapes, neighbourhoods and Pearson by hand, learning, artifact
round trips, the graph hook."""

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
from tests.model_helpers import artifact_round_trip, overfit_losses
from training.artifact import load_model_artifact
from training.data import GeneralDataModule
from training.models import MODELS, build_model
from training.models.baselines import pearson_similarity
from training.split import SplitIndex, make_split, train_matrix

torch.set_num_threads(1)
SMALL = {
    "userknn": {"k": 5},
    "neumf": {"embedding_size": 8, "mlp_embedding_size": 8, "mlp_layers": [16, 8], "lr": 0.01},
    "lightgcn": {"embedding_size": 16, "n_layers": 2, "lr": 0.01},
}
NAMES = list(SMALL)

# 3 users x 4 items (column 0 = padding). Centred rows: u0 = [.25, .25, .25, -.75],
# u1 = [.5, .5, -.5, -.5], u2 = [-.5, .5, -.5, .5] -> r01 = .5 / sqrt(.75) = 1/sqrt(3),
# r02 = -.5 / sqrt(.75) = -1/sqrt(3), r12 = 0.
HAND = np.array([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 0, 1, 0, 1]], dtype=np.float32)


@pytest.fixture
def split(feature_set: FeatureSet, layout: Layout):
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)


def _prepare(name: str, module: torch.nn.Module, train: sp.csr_matrix) -> None:
    if hasattr(module, "fit"):
        module.fit(train)
    if hasattr(module, "set_train_matrix"):
        module.set_train_matrix(train)


def test_registered_with_their_kinds() -> None:
    assert MODELS["userknn"].kind == "baseline" and not MODELS["userknn"].trainable
    assert MODELS["neumf"].kind == "general" and MODELS["lightgcn"].kind == "general"


@pytest.mark.parametrize("name", NAMES)
def test_full_sort_predict_shape(name: str) -> None:
    module = build_model(name, 7, 12, **SMALL[name])
    train = sp.random(7, 13, density=0.3, format="csr", random_state=0)
    train[:, 0] = 0
    train.eliminate_zeros()
    _prepare(name, module, train.tocsr())
    module.eval()
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    with torch.no_grad():
        scores = module.full_sort_predict(torch.tensor([0, 6, -1]), history)
    assert scores.shape == (3, 13)
    assert torch.isfinite(scores).all()


def test_pearson_similarity_matches_hand_computation() -> None:
    sim = pearson_similarity(sp.csr_matrix(HAND))
    r = 1 / math.sqrt(3)
    expected = np.array([[1, r, -r], [r, 1, 0], [-r, 0, 1]])
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    np.testing.assert_allclose(sim, np.corrcoef(HAND[:, 1:]), atol=1e-6)


def test_userknn_scores_are_weighted_neighbour_rows() -> None:
    knn = build_model("userknn", 3, 4, k=1).fit(sp.csr_matrix(HAND))
    r = 1 / math.sqrt(3)
    assert knn.neighbours[:2, 0].tolist() == [1, 0]
    np.testing.assert_allclose(knn.weights[:, 0].numpy(), [r, r, 0.0], atol=1e-6)  # u2: no positive
    scores = knn.full_sort_predict(torch.tensor([0, 1, 2]), torch.zeros(3, 2, dtype=torch.long))
    np.testing.assert_allclose(scores[0].numpy(), r * HAND[1], atol=1e-6)
    np.testing.assert_allclose(scores[1].numpy(), r * HAND[0], atol=1e-6)
    assert float(scores[2].abs().sum()) == 0.0
    # Unknown user with u1's items: correlates 1 with u1 -> scored from u1's row.
    unknown = knn.full_sort_predict(torch.tensor([-1]), torch.tensor([[1, 2]]))
    np.testing.assert_allclose(unknown[0].numpy(), HAND[1], atol=1e-6)


# 7 users x 4 items H=1, X=2, Y=3, Z=4 (column 0 = padding), built so that neighbourhoods are not
# mutual: item columns H = {u0, u1, u5}, X = {u0..u3}, Y = {u0..u4}, Z = {u5, u6}, so cosines are
# HX = 2/sqrt(12), HY = 2/sqrt(15), HZ = 1/sqrt(6), XY = 4/sqrt(20), XZ = YZ = 0. With k = 1: H's
# neighbour is X, X's is Y, Y's is X, Z's is H.
KNN_HAND = np.array(
    [[0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 1, 0, 0, 1],
     [0, 0, 0, 0, 1]],
    dtype=np.float32,
)  # fmt: skip


def test_itemknn_keeps_the_neighbours_of_the_target_item() -> None:
    """score(j) = sum of sim(i, j) over history items i among j's own k neighbours (standard item-kNN).

    A history of H alone: H is Z's neighbour (Z scores sim(H, Z)), but X, though H's own nearest item,
    keeps Y as its neighbour, so H says nothing about X. Pruning per history item instead would rank X
    first (sim(H, X)) and give Z nothing.
    """
    knn = build_model("itemknn", 7, 4, k=1).fit(sp.csr_matrix(KNN_HAND))
    hx, hz, xy = 2 / math.sqrt(12), 1 / math.sqrt(6), 4 / math.sqrt(20)
    # The similarity rows are each item's own neighbours (what /similar_items reads).
    np.testing.assert_allclose(
        knn.similarity.to_dense()[1:, 1:].numpy(),
        [[0, hx, 0, 0], [0, 0, xy, 0], [0, xy, 0, 0], [hz, 0, 0, 0]],
        atol=1e-6,
    )
    unknown = knn.full_sort_predict(torch.tensor([-1]), torch.tensor([[0, 1]]))  # history: H
    np.testing.assert_allclose(unknown[0, 1:].numpy(), [0, 0, 0, hz], atol=1e-6)
    # Known users are profiled from their training rows: u6 (Z only) -> nothing, Z is no one's neighbour;
    # u4 (Y only) -> X, whose neighbour Y is.
    known = knn.full_sort_predict(torch.tensor([6, 4]), torch.zeros(2, 1, dtype=torch.long))
    np.testing.assert_allclose(known[:, 1:].numpy(), [[0, 0, 0, 0], [0, xy, 0, 0]], atol=1e-6)


def _dense_itemknn_reference(train: np.ndarray, k: int) -> np.ndarray:
    """The item x item similarity as the dense formula: cosine, no self-similarity, each row's top k,
    of equal similarities the lower item index first."""
    norms = np.sqrt(train.sum(axis=0))
    sim = (train.T @ train) / (np.outer(norms, norms) + 1e-8)
    np.fill_diagonal(sim, 0.0)
    for row in sim:
        best = sorted(range(len(row)), key=lambda column: (-row[column], column))[:k]
        row[np.setdiff1d(np.arange(len(row)), best)] = 0.0
    return sim


@pytest.mark.parametrize("density", [0.15, 0.03])  # most items past k co-occurring items / most within
def test_knn_baselines_keep_sparse_state_equal_to_the_dense_formulas(density: float) -> None:
    """Fitted a block of items at a time, ItemKNN's similarity equals the dense formula, and no buffer
    of either kNN baseline grows with items x items or users x items (a shop's catalogue would not
    fit)."""
    rng = np.random.default_rng(3)
    train = np.zeros((40, 61), np.float32)
    train[:, 1:] = rng.random((40, 60)) < density
    knn = build_model("itemknn", 40, 60, k=7).fit(sp.csr_matrix(train), block_cells=8 * 61)
    reference = _dense_itemknn_reference(train, 7)
    np.testing.assert_allclose(knn.similarity.to_dense().numpy(), reference, atol=1e-6)
    rows = torch.tensor([5, 17, 60])
    np.testing.assert_allclose(knn.similarity_rows(rows).numpy(), reference[[5, 17, 60]], atol=1e-6)
    users, history = torch.tensor([0, 3, -1]), torch.tensor([[0, 9], [12, 13], [4, 5]])
    profiles = train[[0, 3, 0]].copy()
    profiles[2] = 0
    profiles[np.arange(3)[:, None], history.numpy()] = 1.0
    profiles[:, 0] = 0
    np.testing.assert_allclose(
        knn.full_sort_predict(users, history).numpy(), profiles @ reference.T, rtol=1e-5, atol=1e-6
    )
    userknn = build_model("userknn", 40, 60, k=5).fit(sp.csr_matrix(train))
    for module, most in ((knn, 7 * 61), (userknn, 5 * 40)):
        sizes = {name: buffer.numel() for name, buffer in module.named_buffers()}
        assert max(sizes.values()) <= max(2 * most, int(train.sum()) + 41), sizes


def test_userknn_neighbours_do_not_depend_on_the_block_size() -> None:
    """UserKNN correlates users a block at a time (its memory follows the block, not users^2): one user
    per block, a few and all at once give the same neighbours and weights."""
    rng = np.random.default_rng(5)
    train = np.zeros((37, 51), np.float32)
    train[:, 1:] = rng.random((37, 50)) < 0.15
    fitted = [
        build_model("userknn", 37, 50, k=4).fit(sp.csr_matrix(train), block_cells=cells)
        for cells in (37, 5 * 37, 1 << 24)
    ]
    for other in fitted[1:]:
        assert torch.equal(other.neighbours, fitted[0].neighbours)
        assert torch.equal(other.weights, fitted[0].weights)
    assert fitted[0].neighbours.shape == (37, 4)


def test_itemknn_blocks_follow_co_occurrences_and_do_not_change_the_neighbours() -> None:
    """ItemKNN's fit sizes its item blocks by a bound on their co-occurrence entries (so a long tail of
    rare items takes few blocks): every block within the cell budget unless it is one item, the blocks
    covering the catalogue in order, and the same similarity for any budget."""
    from training.models.baselines import _item_blocks

    rng = np.random.default_rng(11)
    train = np.zeros((50, 81), np.float32)
    popularity = np.linspace(0.6, 0.01, 80)  # a head of popular items and a tail of rare ones
    train[:, 1:] = rng.random((50, 80)) < popularity
    binary = sp.csr_matrix(train)
    by_item = binary.T.tocsr()
    co_occurrences = np.diff((by_item @ binary).tocsr().indptr)
    for cells in (1, 40, 300, 10**9):
        blocks = _item_blocks(by_item, np.diff(binary.indptr), cells)
        assert [start for start, _ in blocks] == [0] + [stop for _, stop in blocks[:-1]]
        assert blocks[-1][1] == 81
        for start, stop in blocks:
            assert stop - start == 1 or co_occurrences[start:stop].sum() <= cells
    assert len(_item_blocks(by_item, np.diff(binary.indptr), 300)) < len(
        _item_blocks(by_item, np.diff(binary.indptr), 40)
    )
    fitted = [build_model("itemknn", 50, 80, k=6).fit(binary, block_cells=cells) for cells in (1, 300, 10**9)]
    for other in fitted[1:]:
        assert torch.equal(other.similarity_indices, fitted[0].similarity_indices)
        assert torch.equal(other.similarity_values, fitted[0].similarity_values)
    np.testing.assert_allclose(
        fitted[0].similarity.to_dense().numpy(), _dense_itemknn_reference(train, 6), atol=1e-6
    )


def test_itemknn_in_threads_gives_the_same_neighbours_and_scores() -> None:
    """Blocks of the fit and rows of the scoring product worked on side by side (threads) give the
    same similarity and the same sparse scores, entry for entry, as one thread."""
    from training.models.baselines import product_by_rows

    rng = np.random.default_rng(5)
    train = np.zeros((60, 91), np.float32)
    train[:, 1:] = rng.random((60, 90)) < np.linspace(0.5, 0.02, 90)
    binary = sp.csr_matrix(train)
    one = build_model("itemknn", 60, 90, k=7).fit(binary, block_cells=50, threads=1)
    for threads in (2, 3):
        many = build_model("itemknn", 60, 90, k=7).fit(binary, block_cells=50, threads=threads)
        assert torch.equal(many.similarity_indices, one.similarity_indices)
        assert torch.equal(many.similarity_values, one.similarity_values)
    right = one._similarity()[1]
    whole = (binary @ right).tocsr()
    for threads in (2, 4, 60, 100):  # more threads than rows: ranges of one row, none empty
        parts = product_by_rows(binary, right, threads)
        assert parts.shape == whole.shape
        for a, b in ((parts.indptr, whole.indptr), (parts.indices, whole.indices), (parts.data, whole.data)):
            np.testing.assert_array_equal(a, b)
    empty = sp.csr_matrix((3, 91), dtype=np.float32)  # users without a profile item
    assert product_by_rows(empty, right, 2).nnz == 0


@pytest.mark.parametrize("name", ["itemknn", "userknn"])
def test_knn_artifacts_saved_dense_still_load(name: str, split, tmp_path: Path) -> None:
    """A kNN artifact written when the baselines kept a dense ``user_items`` (and ItemKNN a dense
    ``similarity``) loads into the sparse state and scores the same: a promoted baseline keeps serving."""
    module = build_model(name, SplitIndex.load(split).n_users, SplitIndex.load(split).n_items, k=5)
    module.fit(train_matrix(split))
    artifact, users, history, expected = artifact_round_trip(
        module, name, {"k": 5}, split, tmp_path / "model", unknown_user=True
    )
    assert torch.equal(artifact.score(users, history)[:, 1:], expected[:, 1:].float())
    state = module.state_dict()
    legacy = {
        key: value for key, value in state.items() if not key.startswith(("train_rows.", "similarity_"))
    }
    legacy["user_items"] = torch.from_numpy(train_matrix(split).toarray().astype(np.float32))
    if name == "itemknn":
        legacy["similarity"] = module.similarity.to_dense()
    torch.save(legacy, tmp_path / "model" / "weights.pt")
    old = load_model_artifact(tmp_path / "model")
    assert torch.allclose(old.score(users, history)[:, 1:], expected[:, 1:].float())


@pytest.mark.parametrize("name", ["neumf", "lightgcn"])
def test_loss_falls_when_overfitting_a_batch(name: str, split) -> None:
    torch.manual_seed(0)
    dm = GeneralDataModule(split, batch_size=256)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = build_model(name, dm.n_users, dm.n_items, **SMALL[name])
    _prepare(name, module, dm.train_matrix)
    losses = overfit_losses(module, batch)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", NAMES)
def test_artifact_round_trip_gives_identical_scores(name: str, split, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = GeneralDataModule(split, batch_size=256)
    module = build_model(name, dm.n_users, dm.n_items, **SMALL[name])
    _prepare(name, module, dm.train_matrix)
    if name != "userknn":  # a few steps, so weights (and LightGCN's propagated cache) are not the init
        dm.setup("fit")
        optimizer = module.configure_optimizers()
        module.train()
        for batch, _ in zip(dm.train_dataloader(), range(3), strict=False):
            optimizer.zero_grad()
            module.calculate_loss(batch).backward()
            optimizer.step()
    artifact, users, history, expected = artifact_round_trip(
        module, name, SMALL[name], split, tmp_path / "model", unknown_user=True
    )  # rebuilt from weights.pt alone: no training graph
    assert getattr(artifact.module, "adjacency", None) is None
    actual = artifact.score(users, history)
    assert torch.equal(actual[:, 1:], expected[:, 1:].float())


def test_lightgcn_trains_through_the_graph_hook(split, tmp_path: Path) -> None:
    from training.train import train_model

    cfg = TrainerConfig(max_epochs=2, patience=2, num_threads=1)
    result = train_model("lightgcn", split, SMALL["lightgcn"], cfg, tmp_path / "run")
    assert result.epochs == 2 and 0.0 < result.best_valid_ndcg10 <= 1.0
    artifact = load_model_artifact(tmp_path / "run" / "model")
    assert bool(artifact.module.cache_ready)
    # The saved propagated embeddings are those of the saved ego weights.
    fresh = build_model("lightgcn", len(artifact.user_ids), artifact.n_items, **SMALL["lightgcn"])
    fresh.load_state_dict(artifact.module.state_dict())
    fresh.set_train_matrix(artifact.seen)
    users, items = fresh.propagate()
    torch.testing.assert_close(users, artifact.module.user_final)
    torch.testing.assert_close(items, artifact.module.item_final)


def test_neumf_full_sort_equals_pointwise_logits() -> None:
    torch.manual_seed(0)
    module = build_model("neumf", 5, 9, **SMALL["neumf"], predict_chunk=50).eval()  # several chunks
    users = torch.tensor([0, 4, -1])
    with torch.no_grad():
        scores = module.full_sort_predict(users, torch.zeros(3, 2, dtype=torch.long))
        idx = module._user_index(users)
        pointwise = torch.stack([module._logit(idx[b].expand(10), torch.arange(10))[0] for b in range(3)])
    torch.testing.assert_close(scores, pointwise)
