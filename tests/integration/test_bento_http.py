"""The packaged champion served by a REAL ``bentoml serve`` subprocess, over HTTP, with a real Feast store.

One module-scoped server (startup dominates the cost): a synthetic home is built by the real features
stage (Feast apply + materialise into SQLite), an ItemKNN artifact is packaged with ``package_model``,
and ``bentoml serve serving.service:Recommender`` runs against that RECFORGE_HOME/BENTOML_HOME. While the
server starts, the test process exercises the packaging contract itself (Bento build + Dockerfile,
champion swap, a rejected candidate leaving the champion alone).

A second server serves a two-stage champion: DIN packaged with a TwoTower retriever, both trained by
``train_model`` on the home's split (``build_ranker_serving_home``), for retrieve-then-rank,
explanations and cold users scored from Feast or request attributes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.artifacts import Evaluation, GateDecision, TrainResult
from pipeline.config import REPO_ROOT
from pipeline.layout import Layout
from serving.package import bento_env, package_model
from tests.serving_fixtures import ServingHome, build_ranker_serving_home, build_serving_home

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    return build_serving_home(tmp_path_factory.mktemp("serving") / "home")


@pytest.fixture(scope="module")
def server(home: ServingHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serve(home, tmp_path_factory.mktemp("server") / "bentoml.log") as url:
        yield url


@contextlib.contextmanager
def _serve(home: ServingHome, log_path: Path) -> Iterator[str]:
    """``bentoml serve`` on ``home``'s champion in its own process group; stopped (group only) on exit."""
    port = _free_port()
    env = bento_env(home.layout)  # RECFORGE_HOME, BENTOML_HOME, OMP_WAIT_POLICY=PASSIVE
    env.pop("RECFORGE_MODEL_TAG", None)  # the service must find the model through the champion file
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:Recommender"]
    cmd += ["-p", str(port), "--host", "127.0.0.1"]
    with open(log_path, "w") as log:
        # Own process group: the server forks workers, and teardown must stop exactly those.
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server: str, home: ServingHome) -> Iterator[httpx.Client]:
    """Waits for readiness (the server's /readyz needs the model and Feast); packaging tests run first."""
    import bentoml

    with bentoml.SyncHTTPClient(server, server_ready_timeout=STARTUP_TIMEOUT_S) as ready:
        assert ready.is_ready()
    with httpx.Client(base_url=server, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def ranker_home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    """Champion = DIN packaged with TwoTower (both trained on the home's split) as its retriever."""
    return build_ranker_serving_home(tmp_path_factory.mktemp("ranker") / "home")


@pytest.fixture(scope="module")
def ranker_client(
    ranker_home: ServingHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    import bentoml

    with _serve(ranker_home, tmp_path_factory.mktemp("ranker-server") / "bentoml.log") as url:
        with bentoml.SyncHTTPClient(url, server_ready_timeout=STARTUP_TIMEOUT_S) as ready:
            assert ready.is_ready()
        with httpx.Client(base_url=url, timeout=30) as http:
            yield http


def _manifests(home: ServingHome, promoted: bool) -> tuple[TrainResult, Evaluation, GateDecision]:
    run_dir = home.layout.run("itemknn", "serving-test")
    train = TrainResult("itemknn", run_dir, run_dir / "model" / "weights.pt", {}, 0, 0.0, 0.0, 0.1, 0.0)
    evaluation = Evaluation(
        "itemknn",
        run_dir / "metrics.json",
        run_dir / "leaderboard.md",
        {"ndcg@10": 0.1},
        {},
        "leave_last_out",
        "dv",
    )
    decision = GateDecision("itemknn", promoted, "test", 0.1, 0.1, 0.2)
    return train, evaluation, decision


def test_package_promoted_builds_bento_with_dockerfile(home: ServingHome, server: str) -> None:
    """Runs while the server starts, on a second home (the server's champion file must not move under it)."""
    layout = Layout(home.layout.home.parent / "second-home")
    assert not layout.champion.exists()
    rejected = package_model(*_manifests(home, promoted=False), layout, build_bento=True)
    assert rejected.bento_tag and not layout.champion.exists()  # stored as a model, not promoted

    started = time.perf_counter()
    decision = package_model(*_manifests(home, promoted=True), layout, build_bento=True)
    build_s = time.perf_counter() - started
    champion = json.loads(layout.champion.read_text())
    assert {"model", "bento_tag", "metrics", "data_version", "protocol", "promoted_at", "reason"} <= set(
        champion
    )
    assert champion["bento_tag"] == decision.bento_tag != rejected.bento_tag
    name, version = champion["bento"].split(":")
    dockerfile = layout.bentoml_home / "bentos" / name / version / "env" / "docker" / "Dockerfile"
    assert dockerfile.is_file()
    assert f"RECFORGE_MODEL_TAG={decision.bento_tag}" in dockerfile.read_text()  # the Bento pins its model

    # A later rejected candidate leaves the champion file and the Bento alone.
    package_model(*_manifests(home, promoted=False), layout, build_bento=True)
    assert json.loads(layout.champion.read_text()) == champion
    assert [p.parent.name for p in (layout.bentoml_home / "bentos" / name).glob("*/bento.yaml")] == [version]
    print(f"package + bentoml build took {build_s:.1f}s")


def test_healthz_and_metadata(client: httpx.Client, home: ServingHome) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["model_loaded"] and body["feature_store"]["reachable"]
    assert body["model_tag"] == home.decision.bento_tag  # the server started on the first champion

    meta = client.get("/metadata").json()
    assert meta["model"] == "itemknn" and meta["model_tag"] == home.decision.bento_tag
    assert meta["metrics"]["ndcg@10"] == pytest.approx(0.2)
    assert meta["protocol"] == "leave_last_out" and meta["data_version"]
    assert "user_activity" in meta["feature_views"]


def test_recommend_known_user_excludes_seen_and_online_history(
    client: httpx.Client, home: ServingHome
) -> None:
    user = home.user_ids[1]
    resp = client.post("/recommend", json={"user_id": user, "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["user_id"] == user and body["fallback"] is False and body["model"] == "itemknn"
    assert body["strategy"] == "known_user" and body["stages"] == ["full_ranking:itemknn"]
    assert all(i["because_you_interacted_with"] is None for i in body["items"])  # no explain() in ItemKNN
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 5 and len(set(ids)) == 5
    # Neither training items nor the two newest events (only in Feast's online history) come back.
    assert not set(ids) & home.seen[user]
    assert not set(ids) & set(home.history[user])
    assert all(i["title"] for i in body["items"])
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)

    # exclude_seen=false may return training items; integer user ids are accepted.
    resp = client.post("/recommend", json={"user_id": int(user[1:]), "k": 3, "exclude_seen": False})
    assert resp.status_code == 200 and resp.json()["user_id"] == user[1:]


def test_recommend_unknown_users(client: httpx.Client, home: ServingHome) -> None:
    # Unknown to the model but with a Feast history: ItemKNN scores from the history, no fallback.
    new_user = home.new_users[0]
    body = client.post("/recommend", json={"user_id": new_user, "k": 4}).json()
    assert body["fallback"] is False and body["strategy"] == "history" and len(body["items"]) == 4
    assert not {i["item_id"] for i in body["items"]} & set(home.history[new_user])
    # Unknown everywhere: popularity fallback, flagged. ItemKNN has no attribute path: features are ignored.
    payload = {"user_id": "nobody-at-all", "k": 4, "user_features": {"age": 30, "gender": "F"}}
    body = client.post("/recommend", json=payload).json()
    assert body["fallback"] is True and body["fallback_reason"] and len(body["items"]) == 4
    assert body["strategy"] == "popularity" and body["attributes_source"] is None


@pytest.mark.parametrize(
    ("path", "payload", "needle"),
    [
        ("/recommend", {"user_id": "u1", "k": 0}, "greater than or equal to 1"),
        ("/recommend", {"user_id": "u1", "k": 5000}, "less than or equal to 1000"),
        ("/recommend", {"k": 3}, "user_id"),
        ("/recommend", {"user_id": "u1", "k": "ten"}, "valid integer"),
        ("/recommend", {"user_id": ["u1"]}, "user_id"),
        ("/recommend", {"user_id": ""}, "non-empty"),
        ("/similar_items", {"item_id": "no-such-item", "k": 3}, "unknown item_id"),
        ("/recommend", {"user_id": "u1", "user_features": {"age": "old"}}, "valid integer"),
        ("/recommend", {"user_id": "u1", "user_features": {"age": -3}}, "greater than or equal to 0"),
        ("/recommend", {"user_id": "u1", "user_features": {"gender": 1}}, "valid string"),
        ("/recommend", {"user_id": "u1", "user_features": {"height": 180}}, "Extra inputs are not permitted"),
        ("/recommend", {"user_id": "u1", "user_features": "F"}, "user_features"),
        ("/recommend", {"user_id": "u1", "candidates": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_requests_are_4xx_with_a_message(
    client: httpx.Client, path: str, payload: dict, needle: str
) -> None:
    resp = client.post(path, json=payload)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    assert needle in resp.text, resp.text
    if "user_features" in payload:
        assert resp.status_code == 400 and "user_features" in resp.text  # names the field at fault


def test_similar_items(client: httpx.Client, home: ServingHome) -> None:
    item = home.item_ids[0]
    resp = client.post("/similar_items", json={"item_id": item, "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids = [i["item_id"] for i in body["items"]]
    assert 0 < len(ids) <= 5 and item not in ids and body["method"] == "item_similarity"


def test_two_stage_ranker_serves_known_and_cold_users(
    ranker_client: httpx.Client, ranker_home: ServingHome
) -> None:
    """DIN champion: TwoTower retrieves, DIN ranks and explains; cold users from Feast or request attributes."""
    meta = ranker_client.get("/metadata").json()
    assert meta["model"] == "din" and meta["serving"]["two_stage"] and meta["serving"]["explanations"]
    assert [(s["stage"], s["model"]) for s in meta["serving"]["stages"]] == [
        ("retrieve", "twotower"),
        ("rank", "din"),
    ]
    assert meta["serving"]["packaging"]["retriever"]["model"] == "twotower"
    assert meta["serving"]["cold_start"] == ["attributes", "history", "popularity"]

    user = ranker_home.user_ids[1]
    body = ranker_client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert body["strategy"] == "known_user" and body["stages"] == ["retrieve:twotower@200", "rank:din"]
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 5 and not set(ids) & (ranker_home.seen[user] | set(ranker_home.history[user]))
    for item in body["items"]:  # DIN's attention picks: items of the user's Feast history
        assert item["because_you_interacted_with"]
        assert set(item["because_you_interacted_with"]) <= set(ranker_home.history[user])
    shallow = ranker_client.post("/recommend", json={"user_id": user, "k": 5, "candidates": 7}).json()
    assert shallow["stages"] == ["retrieve:twotower@7", "rank:din"]

    # In Feast (profile + history) but unknown to the models: scored from the Feast profile and history.
    new_user = ranker_home.new_users[0]
    body = ranker_client.post("/recommend", json={"user_id": new_user, "k": 5}).json()
    assert (
        body["fallback"] is False
        and body["strategy"] == "attributes"
        and body["attributes_source"] == "feast"
    )
    assert body["stages"][-1] == "rank:din" and body["history_used"] > 0
    assert not {i["item_id"] for i in body["items"]} & set(ranker_home.history[new_user])
    # Brand-new everywhere: the request's attributes; without them, the popularity fallback.
    payload = {
        "user_id": "signed-up-now",
        "k": 5,
        "user_features": {"age": 33, "gender": "F", "occupation": "artist"},
    }
    body = ranker_client.post("/recommend", json=payload).json()
    assert (
        body["fallback"] is False
        and body["strategy"] == "attributes"
        and body["attributes_source"] == "request"
    )
    assert len(body["items"]) == 5
    body = ranker_client.post("/recommend", json={"user_id": "signed-up-now", "k": 5}).json()
    assert body["fallback"] is True and body["strategy"] == "popularity" and len(body["items"]) == 5
