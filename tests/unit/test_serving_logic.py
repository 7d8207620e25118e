"""Request-time logic of the service without a server: the recommender, the Feast reader, the HTTP guard.

The recommender (history mapping, fallbacks, exclusion) runs on real artifacts written by
``save_model_artifact`` from the fitted baselines, so the service code is exercised against the same
files training produces. The HTTP guard (``serving.http_safety``: API key, body and content-type
limits, the one error shape, the OpenAPI patch) runs in-process around a small Starlette app; the
real ``bentoml serve`` is tested in tests/integration/test_bento_http.py and test_service_lifecycle.py.
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
from training.models.capabilities import EmbedsItems

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
    path = _artifact(tmp_path, "popularity", history_length=7)
    assert history_length_of(path) == 7
    assert load_recommender(path).history_length == 7


def test_artifacts_saved_with_the_old_history_name_still_load(tmp_path: Path) -> None:
    """Sequential models recorded ``max_len`` before the name was unified: loading renames it."""
    import json

    hparams = {"history_length": 6, "hidden_size": 8, "n_layers": 1, "n_heads": 1, "inner_size": 8}
    module = build_model("sasrec", N_USERS, N_ITEMS, **hparams)
    path = save_model_artifact(
        tmp_path / "sasrec", "sasrec", module, hparams, ITEM_IDS, USER_IDS, _train_matrix()
    )
    info = json.loads((path / "model.json").read_text())
    info["hparams"]["max_len"] = info["hparams"].pop("history_length")
    (path / "model.json").write_text(json.dumps(info))
    assert history_length_of(path) == 6
    assert load_recommender(path).history_length == 6


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
    class WithEmbeddings(torch.nn.Module, EmbedsItems):
        def __init__(self) -> None:
            super().__init__()
            self.item_embedding = torch.nn.Embedding(N_ITEMS + 1, 2)
            with torch.no_grad():
                self.item_embedding.weight.copy_(
                    torch.tensor([[0, 0]] + [[1.0, j / 10] for j in range(N_ITEMS)])
                )

        def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            return torch.zeros(users.shape[0], N_ITEMS + 1)

    art = pop.artifact
    emb_art = type(art)(art.name, WithEmbeddings(), art.item_ids, art.user_ids, art.popularity, art.seen)
    rec = Recommender(emb_art)
    assert rec.similarity_method == "embedding_cosine"
    assert [i.item_id for i in rec.similar_items("i1", 2)] == ["i2", "i3"]


@pytest.mark.parametrize(
    ("name", "hparams"), [("bpr", {"embedding_size": 8}), ("sasrec", {"history_length": 6})]
)
def test_learned_models_serve_known_and_unknown_users(tmp_path: Path, name: str, hparams: dict) -> None:
    """Untrained BPR/SASRec artifacts: the serving paths work with the learned models' contract."""
    torch.manual_seed(0)
    train = _train_matrix()
    module = build_model(name, N_USERS, N_ITEMS, **hparams)
    path = save_model_artifact(tmp_path / name, name, module, hparams, ITEM_IDS, USER_IDS, train)
    rec = load_recommender(path)
    assert rec.similarity_method == "embedding_cosine" and rec.uses_history
    if name == "sasrec":
        assert rec.history_length == 6  # the model's history_length, not the feature store's 50

    known = rec.recommend("u0", history=None, k=3, exclude_seen=True)  # SASRec: training items as context
    assert not known.fallback and len(known.items) == 3
    assert not {"i1", "i2", "i3"} & {i.item_id for i in known.items}
    assert all(np.isfinite(i.score) for i in known.items)

    new = rec.recommend("new-user", history=["i5", "i6", "unknown"], k=3, exclude_seen=True)
    assert not new.fallback and new.history_used == 2
    assert not {"i5", "i6"} & {i.item_id for i in new.items}
    assert [i.item_id for i in rec.similar_items("i5", 20)].count("i5") == 0


# ---- sessions and diversity -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    """An untrained SASRec (fixed seed): its scores depend on the history it is given."""
    torch.manual_seed(0)
    hparams = {"history_length": 6, "hidden_size": 8, "n_layers": 1, "n_heads": 1, "inner_size": 8}
    module = build_model("sasrec", N_USERS, N_ITEMS, **hparams)
    tmp = tmp_path_factory.mktemp("sasrec")
    return load_recommender(
        save_model_artifact(tmp / "sasrec", "sasrec", module, hparams, ITEM_IDS, USER_IDS, _train_matrix())
    )


@pytest.fixture(scope="module")
def bpr(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    torch.manual_seed(0)
    module = build_model("bpr", N_USERS, N_ITEMS, embedding_size=8)
    tmp = tmp_path_factory.mktemp("bpr")
    path = save_model_artifact(
        tmp / "bpr", "bpr", module, {"embedding_size": 8}, ITEM_IDS, USER_IDS, _train_matrix()
    )
    return load_recommender(path)


def _ids(rec) -> list[str]:
    return [i.item_id for i in rec.items]


def test_anonymous_session_is_the_history_of_a_sequential_model(sasrec: Recommender) -> None:
    first = sasrec.recommend(None, None, k=5, exclude_seen=False, session=["i1", "i2", "i3"])
    other = sasrec.recommend(None, None, k=5, exclude_seen=False, session=["i8", "i7", "i6"])
    assert first.strategy == other.strategy == "session" and not first.fallback
    assert first.user_id is None and first.history_used == 3
    # Nothing is excluded here: the lists differ because the model read different sessions.
    assert _ids(first) != _ids(other)
    expected = sasrec.artifact.score(torch.tensor([-1]), sasrec.history_tensor([1, 2, 3]))[0]
    assert [i.score for i in first.items] == pytest.approx(torch.topk(expected[1:], 5).values.tolist())
    # An unknown user without online history is served the same way as an anonymous visitor.
    assert _ids(
        sasrec.recommend("new-user", [], k=5, exclude_seen=False, session=["i1", "i2", "i3"])
    ) == _ids(first)


def test_known_user_session_follows_the_online_history(sasrec: Recommender) -> None:
    plain = sasrec.recommend("u0", ["i1", "i2"], k=4, exclude_seen=False)
    with_session = sasrec.recommend("u0", ["i1", "i2"], k=4, exclude_seen=False, session=["i7", "i1"])
    assert plain.strategy == "known_user" and with_session.strategy == "history+session"
    # i1 appears in both: kept once, at its latest place -> the model reads [i2, i7, i1].
    assert with_session.history_used == 3
    expected = sasrec.artifact.score(torch.tensor([0]), sasrec.history_tensor([2, 7, 1]))[0]
    assert [i.score for i in with_session.items] == pytest.approx(torch.topk(expected[1:], 4).values.tolist())
    assert _ids(with_session) != _ids(plain)
    excluded = sasrec.recommend("u0", ["i1"], k=10, exclude_seen=True, session=["i9", "i10"])
    assert not {"i1", "i2", "i3", "i9", "i10"} & set(_ids(excluded))  # training, online and session items


def test_session_merge_keeps_each_item_at_its_latest_occurrence() -> None:
    from serving.recommender import merge_history

    assert merge_history([1, 2, 3], [2, 4]) == [1, 3, 2, 4]
    assert merge_history([], [5, 6, 5]) == [6, 5]
    assert merge_history([1, 2], []) == [1, 2]


def test_unknown_session_items_are_reported_not_refused(sasrec: Recommender) -> None:
    rec = sasrec.recommend(None, None, k=3, session=["i4", "not-in-catalogue", 7, "i5"])
    assert rec.unknown_session_items == ["not-in-catalogue", "7"]
    assert rec.strategy == "session" and rec.history_used == 2
    only_unknown = sasrec.recommend(None, None, k=3, session=["x", "y"])
    assert only_unknown.fallback and only_unknown.strategy == "popularity"
    assert only_unknown.unknown_session_items == ["x", "y"]
    assert only_unknown.fallback_reason == "anonymous visitor without a known session item"


def test_too_long_session_is_refused_with_the_limit(sasrec: Recommender) -> None:
    from serving.recommender import SessionTooLong
    from serving.request_models import MAX_SESSION_ITEMS

    ok = sasrec.recommend(None, None, k=3, session=["i1"] * MAX_SESSION_ITEMS)
    assert ok.strategy == "session"
    with pytest.raises(SessionTooLong, match=f"at most {MAX_SESSION_ITEMS}"):
        sasrec.recommend(None, None, k=3, session=["i1"] * (MAX_SESSION_ITEMS + 1))


def test_models_without_a_history_say_the_session_was_ignored(pop: Recommender, bpr: Recommender) -> None:
    anonymous = pop.recommend(None, None, k=3, session=["i1", "i2"])
    assert anonymous.strategy == "popularity" and anonymous.fallback
    assert "session ignored" in (anonymous.note or "") and not {"i1", "i2"} & set(_ids(anonymous))
    # BPR scores a known user from its own row: the session is excluded, not read.
    known = bpr.recommend("u0", None, k=3, session=["i9"])
    assert known.strategy == "known_user" and "session ignored" in (known.note or "")
    assert _ids(known) == _ids(bpr.recommend("u0", ["i9"], k=3))
    # An anonymous visitor is scored from the session by BPR's history path.
    assert bpr.recommend(None, None, k=3, session=["i5", "i6"]).strategy == "session"


def test_zero_diversity_is_todays_answer_and_more_diversity_reranks(bpr: Recommender) -> None:
    today = bpr.recommend("u0", None, k=4, exclude_seen=False)
    assert bpr.recommend("u0", None, k=4, exclude_seen=False, diversity=0.0) == today
    diverse = bpr.recommend("u0", None, k=4, exclude_seen=False, diversity=1.0)
    assert diverse.stages[-1] == "rerank:mmr(diversity=1,embedding_cosine)@50"
    assert _ids(diverse)[0] == _ids(today)[0]  # MMR's first pick is the most relevant item
    vectors = bpr.artifact.module.item_embeddings().detach()

    def ild(rec) -> float:
        from training.rerank import intra_list_diversity

        return float(intra_list_diversity(vectors[[int(i[1:]) for i in _ids(rec)]]))

    assert ild(diverse) > ild(today)
    with pytest.raises(ValueError, match="diversity"):
        bpr.recommend("u0", None, k=4, diversity=-0.1)


def test_diversity_without_embeddings_uses_the_model_similarity(knn: Recommender) -> None:
    assert knn.diversity_method == "item_similarity"
    rec = knn.recommend("new-user", ["i5"], k=3, diversity=0.5)
    assert rec.stages[-1].startswith("rerank:mmr(diversity=0.5,item_similarity)") and len(rec.items) == 3


def test_diversity_without_embeddings_uses_item_attributes(pop: Recommender) -> None:
    """Popularity has no item vectors: MMR measures redundancy by the items' genres."""
    import dataclasses

    from pipeline.schema import DataSchema, FieldSpec
    from training.attributes import Attributes, EntityAttributes, FieldEncoding

    genre = FieldEncoding("genres", FieldSpec(type="list", max_tokens=1), ["A", "B"])
    in_a = {1, 2, 3, 6}  # genre A holds the two most popular items (i2, i6: 3 users each)
    codes = np.array([[0]] + [[1] if j in in_a else [2] for j in range(1, N_ITEMS + 1)])
    items = EntityAttributes("item", [genre], codes, np.zeros((N_ITEMS + 1, 0), np.float32))
    users = EntityAttributes("user", [], np.zeros((N_USERS, 0), np.int64), np.zeros((N_USERS, 0), np.float32))
    art = dataclasses.replace(pop.artifact, attributes=Attributes(DataSchema(name="t"), users, items))
    rec = Recommender(art)
    assert rec.diversity_method == "attribute_cosine"
    plain = rec.recommend(None, None, k=4, exclude_seen=False)
    diverse = rec.recommend(None, None, k=4, exclude_seen=False, diversity=0.9)
    genre_of = {f"i{j}": "A" if j in in_a else "B" for j in range(1, N_ITEMS + 1)}
    plain_genres = [genre_of[i] for i in _ids(plain)]
    diverse_genres = [genre_of[i] for i in _ids(diverse)]
    assert plain_genres[:2] == ["A", "A"] and diverse_genres[:2] in (["A", "B"], ["B", "A"])
    # Once both genres are in, every candidate is equally redundant: relevance decides again.
    assert diverse_genres.index("B") < plain_genres.index("B")
    assert _ids(diverse)[0] == _ids(plain)[0] and diverse.stages[-1].endswith("attribute_cosine)@50")


def test_unreachable_feature_store_degrades_to_no_history(tmp_path: Path) -> None:
    from serving.online import OnlineHistory

    online = OnlineHistory("recforge_x_h20", repo_path=tmp_path / "no-repo", home=tmp_path / "home")
    ok, detail = online.health()
    assert not ok and "feature_store.yaml" in detail  # /healthz reports 503 with this detail
    assert online.recent_items("u0") is None  # requests still get an answer (without history)


def test_a_namespace_that_was_never_built_is_unreachable_and_not_created(tmp_path: Path) -> None:
    from pipeline.config import REPO_ROOT
    from serving.online import OnlineHistory

    home = tmp_path / "home"
    online = OnlineHistory("recforge_never_built_h20", repo_path=REPO_ROOT / "feature_repo", home=home)
    ok, detail = online.health()
    assert not ok and "never built" in detail and "recforge_never_built_h20" in detail
    assert not (home / "feast").exists()  # a reader never writes


def test_whole_online_history_is_excluded_not_only_the_model_input(knn: Recommender) -> None:
    """A model reading the newest 2 items must still never recommend the older online items."""
    short = Recommender(knn.artifact, history_length=2)
    rec = short.recommend("new-user", history=["i5", "i6", "i7", "i8"], k=10, exclude_seen=True)
    assert rec.history_used == 2 and rec.strategy == "history"
    assert not {"i5", "i6", "i7", "i8"} & {i.item_id for i in rec.items}
    kept = short.recommend("new-user", history=["i5", "i6", "i7", "i8"], k=10, exclude_seen=False)
    assert {"i5", "i6"} & {i.item_id for i in kept.items}  # only exclusion removed them


# ---- the HTTP guard (serving.http_safety) ---------------------------------------------------------

KEY = "s3cret-key"


def _guarded_app(**options: object):
    """A Starlette app shaped like BentoML's (its error bodies included) behind ``ServingSafety``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.http_safety import ServingSafety

    async def recommend(request: Request) -> JSONResponse:
        body = await request.json()
        if "user_id" not in body:  # BentoML's shape for a pydantic error
            detail = [{"type": "missing", "loc": ["user_id"], "msg": "Field required"}]
            return JSONResponse({"error": "1 validation error for Input", "detail": detail}, status_code=400)
        if body["user_id"] == "boom":
            raise RuntimeError("model exploded")
        if body["user_id"] == "unknown":  # BentoML 1.4 wraps 4xx exception bodies in a list
            return JSONResponse([{"error": "unknown item_id 'x'"}], status_code=404)
        return JSONResponse({"user_id": body["user_id"], "bytes": len(await request.body())})

    async def docs(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "openapi": "3.0.2",
                "paths": {
                    "/recommend": {
                        "post": {
                            "requestBody": {"content": {"application/json": {"schema": {"title": "Input"}}}},
                            "responses": {
                                "200": {"description": "ok"},
                                "400": {
                                    "content": {
                                        "application/json": {"schema": {"$ref": "#/x/InvalidArgument"}}
                                    }
                                },
                            },
                        }
                    },
                    "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}},
                },
                "components": {"schemas": {"InvalidArgument": {}, "recommend__Input": {"type": "object"}}},
            }
        )

    app = Starlette(
        routes=[
            Route("/recommend", recommend, methods=["POST"]),
            Route("/docs.json", docs),
            Route("/readyz", lambda _: JSONResponse({})),
        ]
    )
    defaults = {
        "api_paths": ["/recommend"],
        "health": lambda: ({"status": "ok", "model_loaded": True}, 200),
        "health_schema": {"type": "object"},
        "max_body_bytes": 1024,
    }
    return ServingSafety(app, **{**defaults, **options})


@pytest.fixture
def guarded():
    from starlette.testclient import TestClient

    with TestClient(_guarded_app(api_key=KEY), raise_server_exceptions=False) as client:
        yield client


def _is_error(resp, status: int, needle: str = "") -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["type"]
    assert needle in body["error"]["message"], body


def test_api_key_is_required_except_on_probes(guarded) -> None:
    ok = {"user_id": "u1"}
    _is_error(guarded.post("/recommend", json=ok), 401, "API key")
    assert guarded.post("/recommend", json=ok).headers["www-authenticate"].startswith("Bearer")
    _is_error(guarded.post("/recommend", json=ok, headers={"X-API-Key": "wrong"}), 401)
    _is_error(guarded.get("/docs.json"), 401)
    assert guarded.post("/recommend", json=ok, headers={"X-API-Key": KEY}).status_code == 200
    assert guarded.post("/recommend", json=ok, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert guarded.get("/healthz").json() == {"status": "ok", "model_loaded": True}  # probes stay open
    assert guarded.get("/readyz").status_code == 200


def test_default_body_limit_holds_a_full_events_batch_at_the_longest_ids() -> None:
    """A client sending the documented batch size is never refused for size."""
    import json

    from ingestion.event_log import MAX_BATCH
    from ingestion.schema import MAX_ID_LENGTH
    from serving.http_safety import DEFAULT_MAX_BODY_BYTES

    event = {
        "user_id": "u" * MAX_ID_LENGTH,
        "item_id": "i" * MAX_ID_LENGTH,
        "timestamp": "2026-12-01T19:00:00.123456+00:00",
        "rating": 4.5,
    }
    body = json.dumps({"events": [event] * MAX_BATCH}, indent=1)
    assert len(body.encode()) <= DEFAULT_MAX_BODY_BYTES


def test_body_limits_content_type_and_error_shape(guarded) -> None:
    key = {"X-API-Key": KEY}
    big = b'{"user_id": "' + b"x" * 2000 + b'"}'
    _is_error(
        guarded.post("/recommend", content=big, headers={**key, "content-type": "application/json"}), 413
    )

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b" " * 400

    resp = guarded.post("/recommend", content=chunks(), headers={**key, "content-type": "application/json"})
    _is_error(resp, 413, "larger than 1024")
    _is_error(
        guarded.post("/recommend", content=b"user_id=1", headers={**key, "content-type": "text/plain"}), 415
    )
    form = guarded.post("/recommend", files={"f": b"x"}, headers=key)
    _is_error(form, 415, "multipart/form-data")
    resp = guarded.post("/recommend", json={"k": 1}, headers=key)
    _is_error(resp, 400, "user_id: Field required")
    assert resp.json()["error"]["details"] == [
        {"field": "user_id", "message": "Field required", "type": "missing"}
    ]
    _is_error(guarded.post("/recommend", json={"user_id": "unknown"}, headers=key), 404, "unknown item_id")
    _is_error(guarded.post("/recommend", json={"user_id": "boom"}, headers=key), 500)
    _is_error(guarded.post("/recommend", headers=key), 400, "request body is required")
    _is_error(
        guarded.post("/recommend", content=b"  ", headers={**key, "content-type": "application/json"}), 400
    )
    long_path = "/" + "p" * 5000
    resp = guarded.get(long_path, headers=key)
    _is_error(resp, 404, "no such endpoint")
    assert len(resp.text) < 400  # the path is clipped, never echoed whole


def test_client_errors_log_one_warning_line(guarded, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="recforge.serving.http"):
        guarded.post("/recommend", json={"k": 1}, headers={"X-API-Key": KEY})
    records = [r for r in caplog.records if r.name == "recforge.serving.http"]
    assert len(records) == 1 and records[0].levelname == "WARNING" and records[0].exc_info is None
    assert "POST /recommend -> 400 invalid_request: user_id: Field required" in records[0].getMessage()


def test_openapi_document_declares_the_error_shape(guarded) -> None:
    doc = guarded.get("/docs.json", headers={"X-API-Key": KEY}).json()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert "InvalidArgument" not in schemas and {"Error", "ErrorDetail", "Health"} <= set(schemas)
    post = doc["paths"]["/recommend"]["post"]
    assert {"200", "400", "401", "404", "413", "415", "500"} <= set(post["responses"])
    assert post["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert post["requestBody"]["required"] is True
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("recommend__Input")
    assert post["security"] and "ApiKeyHeader" in doc["components"]["securitySchemes"]
    health = doc["paths"]["/healthz"]["get"]
    assert "401" not in health["responses"] and "security" not in health
    assert health["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith("Health")


def test_union_errors_are_merged_per_field() -> None:
    from serving.http_safety import validation_details

    too_long = [
        {
            "type": "string_too_long",
            "loc": ["user_id", "constrained-str"],
            "msg": "String should have at most 256 characters",
        },
        {
            "type": "int_type",
            "loc": ["user_id", "function-before[...]"],
            "msg": "Input should be a valid integer",
        },
    ]
    assert validation_details(too_long) == [
        {
            "field": "user_id",
            "message": "String should have at most 256 characters",
            "type": "string_too_long",
        }
    ]
    wrong_type = [
        {"type": "string_type", "loc": ["user_id", "str"], "msg": "Input should be a valid string"},
        {"type": "int_type", "loc": ["user_id", "int"], "msg": "Input should be a valid integer"},
    ]
    assert validation_details(wrong_type)[0]["message"] == "Input should be a valid string or a valid integer"


def test_launcher_binds_loopback_unless_told_otherwise() -> None:
    from serving.__main__ import bind_args

    assert bind_args([], {}) == (["--host", "127.0.0.1", "--port", "3000"], "127.0.0.1", "3000")
    assert bind_args(["--port", "8080"], {})[1:] == ("127.0.0.1", "8080")
    assert bind_args(["--host", "0.0.0.0", "-p", "9"], {}) == (
        ["--host", "0.0.0.0", "-p", "9"],
        "0.0.0.0",
        "9",
    )
    assert bind_args(["--host=::1"], {})[1] == "::1"
    assert bind_args([], {"BENTOML_HOST": "10.0.0.5", "BENTOML_PORT": "1234"})[1:] == ("10.0.0.5", "1234")


def test_item_profile_model_adds_a_known_users_session_to_its_training_items(knn: Recommender) -> None:
    plain = knn.recommend("u0", None, k=3)
    with_session = knn.recommend("u0", None, k=3, session=["i5", "i6"])
    assert plain.strategy == "known_user" and plain.note is None
    assert with_session.strategy == "history+session" and with_session.note is None
    # The profile is u0's training items {1, 2, 3} plus the session {5, 6}: the session's neighbours
    # (i7, i8) now compete with the training items' (i4), and the session's own items are excluded.
    module = knn.artifact.module
    profile = torch.zeros(N_ITEMS + 1)
    profile[[1, 2, 3, 5, 6]] = 1.0
    expected = (profile @ module.similarity.to_dense().T)[[4, 7, 8]]
    assert {i.item_id: i.score for i in with_session.items} == pytest.approx(
        dict(zip(["i4", "i7", "i8"], expected.tolist(), strict=True))
    )
    assert _ids(with_session) != _ids(plain) and {"i7", "i8"} <= set(_ids(with_session))
