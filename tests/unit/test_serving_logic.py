"""Request-time logic of the recommender (no HTTP, no Feast): history mapping, fallbacks, exclusion.

Uses real artifacts written by ``save_model_artifact`` from the fitted baselines, so the service code
is exercised against the same files training produces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from serving.recommender import Recommender, history_length_of, load_recommender
from training.artifact import save_model_artifact
from training.models import build_model

N_USERS, N_ITEMS = 6, 10
ITEM_IDS = [f"i{j}" for j in range(1, N_ITEMS + 1)]  # index j -> "i{j}"
USER_IDS = [f"u{u}" for u in range(N_USERS)]
# Training rows: users 0-2 like items 1-4, users 3-5 like items 5-8; items 9, 10 are rare.
ROWS = {0: [1, 2, 3], 1: [1, 2, 4], 2: [2, 3, 4, 9], 3: [5, 6, 7], 4: [5, 6, 8], 5: [6, 7, 8, 10]}


def _train_matrix() -> sp.csr_matrix:
    rows, cols = zip(*[(u, i) for u, items in ROWS.items() for i in items], strict=True)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS + 1))


def _artifact(tmp: Path, name: str, **hparams: object) -> Path:
    train = _train_matrix()
    module = build_model(name, N_USERS, N_ITEMS, **hparams)
    module.fit(train)
    return save_model_artifact(tmp / name, name, module, hparams, ITEM_IDS, USER_IDS, train)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("artifacts")
    return {"popularity": _artifact(tmp, "popularity"), "itemknn": _artifact(tmp, "itemknn", k=5)}


@pytest.fixture(scope="module")
def knn(artifacts: dict[str, Path]) -> Recommender:
    return load_recommender(artifacts["itemknn"])


@pytest.fixture(scope="module")
def pop(artifacts: dict[str, Path]) -> Recommender:
    return load_recommender(artifacts["popularity"])


def test_history_mapping_drops_unknown_and_right_aligns(knn: Recommender) -> None:
    mapped = knn.map_history(["i3", "nope", "i1", 7, "i10"])
    assert mapped == [3, 1, 10]  # unknown dropped, ints accepted as ids, order kept (oldest first)
    tensor = knn.history_tensor(mapped)
    assert tensor.shape == (1, knn.history_length)
    assert tensor[0, -3:].tolist() == [3, 1, 10] and tensor[0, :-3].eq(0).all()


def test_history_is_truncated_to_the_newest(knn: Recommender) -> None:
    knn_short = Recommender(knn.artifact, history_length=2)
    assert knn_short.map_history(["i1", "i2", "i3"]) == [2, 3]
    assert knn_short.history_tensor([2, 3]).tolist() == [[2, 3]]
    assert knn_short.map_history(None) == [] and knn_short.history_tensor([]).eq(0).all()


def test_history_length_from_hparams(tmp_path: Path) -> None:
    path = _artifact(tmp_path, "popularity", max_seq_length=7)
    assert history_length_of(path) == 7
    assert load_recommender(path).history_length == 7


def test_known_user_gets_model_scores_without_seen_items(knn: Recommender) -> None:
    rec = knn.recommend("u0", history=["i4"], k=5, exclude_seen=True)
    assert not rec.fallback
    ids = [i.item_id for i in rec.items]
    assert not {"i1", "i2", "i3", "i4"} & set(ids)  # training items and online history both excluded
    assert ids and ids[0] == "i9"  # the only in-cluster item left; scores are ranked descending
    assert [i.score for i in rec.items] == sorted((i.score for i in rec.items), reverse=True)


def test_known_user_model_matches_artifact_scores(knn: Recommender) -> None:
    rec = knn.recommend("u3", history=None, k=3, exclude_seen=False)
    expected = knn.artifact.score(torch.tensor([3]), torch.zeros(1, 1, dtype=torch.long))[0]
    top = torch.topk(expected, 3).values.tolist()
    assert [i.score for i in rec.items] == pytest.approx(top)


def test_unknown_user_with_history_is_scored_from_history(knn: Recommender) -> None:
    rec = knn.recommend("new-user", history=["i5", "i6"], k=3, exclude_seen=True)
    assert not rec.fallback and rec.history_used == 2
    ids = [i.item_id for i in rec.items]
    assert set(ids) <= {"i7", "i8", "i10"} and "i5" not in ids and "i6" not in ids


def test_unknown_user_without_history_falls_back_to_popularity(knn: Recommender) -> None:
    rec = knn.recommend("new-user", history=["not-in-catalogue"], k=3, exclude_seen=True)
    assert rec.fallback and rec.fallback_reason == "unknown user without history"
    counts = np.asarray(_train_matrix().sum(axis=0)).ravel()
    top_count = counts[1:].max()
    assert all(counts[int(i.item_id[1:])] == top_count for i in rec.items[:2])


def test_popularity_model_cannot_use_history(pop: Recommender) -> None:
    rec = pop.recommend("new-user", history=["i1"], k=4, exclude_seen=True)
    assert rec.fallback and "cannot score from history" in (rec.fallback_reason or "")
    assert "i1" not in [i.item_id for i in rec.items]  # exclusion still applies to the fallback


def test_k_larger_than_catalogue_and_exclusions(pop: Recommender) -> None:
    rec = pop.recommend("u2", history=None, k=1000, exclude_seen=True)
    ids = [i.item_id for i in rec.items]
    assert len(ids) == N_ITEMS - 4 and len(set(ids)) == len(ids)  # padding and 4 seen items never returned
    rec_all = pop.recommend("u2", history=None, k=1000, exclude_seen=False)
    assert len(rec_all.items) == N_ITEMS


def test_similar_items_itemknn_and_cooccurrence(knn: Recommender, pop: Recommender) -> None:
    assert knn.similarity_method == "item_similarity"
    assert pop.similarity_method == "cooccurrence_cosine"
    for rec in (knn, pop):
        ids = [i.item_id for i in rec.similar_items("i5", 3)]
        assert ids and "i5" not in ids and set(ids) <= {"i6", "i7", "i8"}
    with pytest.raises(KeyError):
        knn.similar_items("missing", 3)


def test_similar_items_uses_item_embeddings_when_present(pop: Recommender) -> None:
    class WithEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = torch.nn.Embedding(N_ITEMS + 1, 2)
            with torch.no_grad():
                self.items.weight.copy_(torch.tensor([[0, 0]] + [[1.0, j / 10] for j in range(N_ITEMS)]))

        def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            return torch.zeros(users.shape[0], N_ITEMS + 1)

    art = pop.artifact
    emb_art = type(art)(art.name, WithEmbeddings(), art.item_ids, art.user_ids, art.popularity, art.seen)
    rec = Recommender(emb_art)
    assert rec.similarity_method == "embedding_cosine"
    assert [i.item_id for i in rec.similar_items("i1", 2)] == ["i2", "i3"]


@pytest.mark.parametrize(("name", "hparams"), [("bpr", {"embedding_size": 8}), ("sasrec", {"max_len": 6})])
def test_learned_models_serve_known_and_unknown_users(tmp_path: Path, name: str, hparams: dict) -> None:
    """Untrained BPR/SASRec artifacts: the serving paths work with the learned models' contract."""
    torch.manual_seed(0)
    train = _train_matrix()
    module = build_model(name, N_USERS, N_ITEMS, **hparams)
    path = save_model_artifact(tmp_path / name, name, module, hparams, ITEM_IDS, USER_IDS, train)
    rec = load_recommender(path)
    assert rec.similarity_method == "embedding_cosine" and rec.uses_history
    if name == "sasrec":
        assert rec.history_length == 6  # the model's max_len, not the feature store's 50

    known = rec.recommend("u0", history=None, k=3, exclude_seen=True)  # SASRec: training items as context
    assert not known.fallback and len(known.items) == 3
    assert not {"i1", "i2", "i3"} & {i.item_id for i in known.items}
    assert all(np.isfinite(i.score) for i in known.items)

    new = rec.recommend("new-user", history=["i5", "i6", "unknown"], k=3, exclude_seen=True)
    assert not new.fallback and new.history_used == 2
    assert not {"i5", "i6"} & {i.item_id for i in new.items}
    assert [i.item_id for i in rec.similar_items("i5", 20)].count("i5") == 0


def test_unreachable_feature_store_degrades_to_no_history(tmp_path: Path) -> None:
    from serving.online import OnlineHistory

    online = OnlineHistory(repo_path=tmp_path / "no-repo")
    ok, detail = online.health()
    assert not ok and "feature_store.yaml" in detail  # /healthz reports 503 with this detail
    assert online.recent_items("u0") is None  # requests still get an answer (without history)


def test_whole_online_history_is_excluded_not_only_the_model_input(knn: Recommender) -> None:
    """A model reading the newest 2 items must still never recommend the older online items."""
    short = Recommender(knn.artifact, history_length=2)
    rec = short.recommend("new-user", history=["i5", "i6", "i7", "i8"], k=10, exclude_seen=True)
    assert rec.history_used == 2 and rec.strategy == "history"
    assert not {"i5", "i6", "i7", "i8"} & {i.item_id for i in rec.items}
    kept = short.recommend("new-user", history=["i5", "i6", "i7", "i8"], k=10, exclude_seen=False)
    assert {"i5", "i6"} & {i.item_id for i in kept.items}  # only exclusion removed them
