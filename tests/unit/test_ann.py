"""The ANN item index (serving.ann) and the service's ANN path (serving.recommender) on small catalogues.

With a search effort above the catalogue size HNSW is exhaustive in practice, so the ANN path must give
exactly the exact path's answer: the same items, in the same order, with the same scores, seen items
excluded, an item bias counted (HybridMF).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from serving.ann import AnnIndexError, ItemIndex
from serving.package import build_ann_index
from serving.recommender import Recommender, load_recommender
from training.artifact import load_model_artifact, save_model_artifact
from training.models import build_model

N_USERS, N_ITEMS, DIM = 30, 400, 8
ITEM_IDS = [f"i{j}" for j in range(1, N_ITEMS + 1)]
USER_IDS = [f"u{u}" for u in range(N_USERS)]


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    vectors = centres[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, d))
    norms = 1.0 + rng.pareto(3.0, n)[:, None]  # a few long (popular) vectors
    return (vectors * norms).astype(np.float32)


def _train_matrix(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = [
        (u, int(i)) for u in range(N_USERS) for i in rng.choice(np.arange(1, N_ITEMS + 1), 15, replace=False)
    ]
    r, c = zip(*rows, strict=True)
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(N_USERS, N_ITEMS + 1))


def test_index_recall_against_exact_inner_product() -> None:
    table = np.vstack([np.zeros((1, 16), np.float32), _clustered(2000, 16, 1)])
    queries = _clustered(50, 16, 2)
    exact = ItemIndex.build(table, ef_search=2000)
    default = ItemIndex.build(table)
    for q in queries:
        truth = np.argsort(-(table[1:] @ q))[:10] + 1
        assert exact.search(q, 10).tolist() == truth.tolist()  # padding row 0 never returned
    found = [set(default.search(q, 50).tolist()) for q in queries]
    truths = [set((np.argsort(-(table[1:] @ q))[:50] + 1).tolist()) for q in queries]
    recall = np.mean([len(f & t) / 50 for f, t in zip(found, truths, strict=True)])
    assert recall >= 0.9, recall


def test_index_round_trips_and_refuses_a_foreign_model(tmp_path: Path) -> None:
    table = np.vstack([np.zeros((1, 8), np.float32), _clustered(300, 8, 3)])
    index = ItemIndex.build(table, ef_search=300)
    saved = index.save(tmp_path / "ann")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann"]  # written beside, then renamed
    loaded = ItemIndex.load(saved, n_items=300, dim=8)
    q = _clustered(1, 8, 4)[0]
    assert loaded.search(q, 20).tolist() == index.search(q, 20).tolist()
    assert loaded.settings() == index.settings()
    with pytest.raises(AnnIndexError, match="n_items=300, the model has 299"):
        ItemIndex.load(saved, n_items=299)
    (saved / "ann.json").unlink()
    with pytest.raises(AnnIndexError, match="ann.json"):
        ItemIndex.load(saved)


def test_index_refuses_broken_vectors() -> None:
    table = np.ones((5, 4), np.float32)
    table[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ItemIndex.build(table)


def _artifact(tmp: Path, name: str, **hparams: object) -> Path:
    torch.manual_seed(0)
    module = build_model(name, N_USERS, N_ITEMS, **hparams)
    train = _train_matrix()
    if hasattr(module, "set_train_matrix"):
        module.set_train_matrix(train)
    with torch.no_grad():
        for table in (
            module.state_dict(keep_vars=True)[k]
            for k in module.state_dict()
            if "embedding" in k or "_id." in k
        ):
            table.normal_(0.0, 1.0)
        if name == "hybridmf":  # a bias large enough to reorder the dot products
            module.item_bias.weight.normal_(0.0, 3.0)
    return save_model_artifact(tmp / name, name, module, hparams, ITEM_IDS, USER_IDS, train)


@pytest.mark.parametrize("name", ["bpr", "hybridmf"])
def test_ann_path_answers_as_exact_scoring(tmp_path: Path, name: str) -> None:
    path = _artifact(tmp_path, name, embedding_size=DIM)
    index = build_ann_index(path, min_items=N_ITEMS)
    assert index is not None and build_ann_index(path, min_items=N_ITEMS + 1) is None
    index.ef_search = N_ITEMS  # exhaustive: the answers must be the exact ones
    index.save(tmp_path / "ann")
    exact = load_recommender(path)
    ann = load_recommender(path, ann_dir=tmp_path / "ann")
    assert ann.ann is not None and ann.describe()["stages"][0]["stage"] == "ann"
    seen = _train_matrix()
    for user in ["u0", "u7", "u29"]:
        want, got = exact.recommend(user, None, k=20), ann.recommend(user, None, k=20)
        assert got.stages == [f"ann:{name}@{100 + 15}"] and want.stages == [f"full_ranking:{name}"]
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        np.testing.assert_allclose(
            [i.score for i in got.items], [i.score for i in want.items], rtol=1e-4, atol=1e-4
        )
        trained = {ITEM_IDS[j - 1] for j in seen[int(user[1:])].indices}
        assert not trained & {i.item_id for i in got.items}  # seen items still excluded
        assert got.strategy == "known_user"
    history = ["i3", "i50", "i77"]
    want, got = exact.recommend("stranger", history, k=10), ann.recommend("stranger", history, k=10)
    assert got.strategy == want.strategy == "history" and got.stages[0].startswith("ann:")
    assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
    assert not set(history) & {i.item_id for i in got.items}
    # Nothing to take a dot product with: the popularity fallback, exactly as without an index.
    cold = ann.recommend("stranger", None, k=5)
    assert cold.fallback and cold.stages == [f"full_ranking:{name}"]


def test_a_model_without_the_capability_gets_no_index(tmp_path: Path) -> None:
    train = _train_matrix()
    module = build_model("itemknn", N_USERS, N_ITEMS, k=5)
    module.fit(train)
    path = save_model_artifact(tmp_path / "itemknn", "itemknn", module, {"k": 5}, ITEM_IDS, USER_IDS, train)
    assert build_ann_index(path, min_items=1) is None
    index = ItemIndex.build(np.ones((N_ITEMS + 1, 4), np.float32))
    with pytest.raises(ValueError, match="does not score by a dot product"):
        Recommender(load_model_artifact(path), ann=index)
