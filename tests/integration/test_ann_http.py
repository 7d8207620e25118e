"""A dot-product model packaged with an ANN index, served by a REAL ``bentoml serve`` over HTTP.

The home of tests/integration/test_bento_http.py (real Feast store, ``package_model``), with BPR as the
model and packaging's ANN threshold at 1 item, so the catalogue gets an index and the service answers
from it. Its answers must equal exact scoring of the same artifact in-process (the catalogue is smaller
than the index's search effort, so the search is exhaustive), and say which path answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serving.package import ANN_SUBDIR, ARTIFACT_SUBDIR, stored_model_dir
from serving.recommender import Recommender, load_recommender
from tests.serving_fixtures import STARTUP_TIMEOUT_S, ServingHome, build_serving_home, serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    return build_serving_home(tmp_path_factory.mktemp("ann") / "home", model="bpr", ann_min_items=1)


@pytest.fixture(scope="module")
def exact(home: ServingHome) -> Recommender:
    """The packaged artifact scored exactly (no index), in-process."""
    model_dir = stored_model_dir(home.layout, home.decision.bento_tag)
    assert (model_dir / ANN_SUBDIR / "index.faiss").is_file()  # packaging built the index
    return load_recommender(model_dir / ARTIFACT_SUBDIR)


@pytest.fixture(scope="module")
def client(home: ServingHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    import bentoml

    with serve(home.layout, tmp_path_factory.mktemp("ann-server") / "bentoml.log") as process:
        with bentoml.SyncHTTPClient(process.url, server_ready_timeout=STARTUP_TIMEOUT_S) as ready:
            assert ready.is_ready()
        with httpx.Client(base_url=process.url, timeout=30) as http:
            yield http


def test_known_users_are_answered_by_the_index_as_exact_scoring_would(
    client: httpx.Client, home: ServingHome, exact: Recommender
) -> None:
    for user in home.user_ids[:3]:
        resp = client.post("/recommend", json={"user_id": user, "k": 8})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["strategy"] == "known_user" and len(body["stages"]) == 1
        assert body["stages"][0].startswith("ann:bpr@"), body["stages"]
        # The service excluded the training items and Feast's online history (the whole event log here).
        want = exact.recommend(user, home.history[user], k=8)
        assert want.stages == ["full_ranking:bpr"]
        assert [i["item_id"] for i in body["items"]] == [i.item_id for i in want.items]
        for got, expected in zip(body["items"], want.items, strict=True):
            assert got["score"] == pytest.approx(expected.score, rel=1e-4, abs=1e-4)
        assert not {i["item_id"] for i in body["items"]} & (home.seen[user] | set(home.history[user]))


def test_unknown_user_with_history_and_metadata(
    client: httpx.Client, home: ServingHome, exact: Recommender
) -> None:
    user = home.new_users[0]
    body = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert body["strategy"] == "history" and body["stages"][0].startswith("ann:bpr@")
    want = exact.recommend(user, home.history[user], k=5)
    assert [i["item_id"] for i in body["items"]] == [i.item_id for i in want.items]
    stages = client.get("/metadata").json()["serving"]["stages"]
    assert stages[0]["stage"] == "ann" and stages[0]["n_items"] == len(home.item_ids)
