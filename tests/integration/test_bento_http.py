"""The deployment's champion served by a REAL ``bentoml serve`` subprocess, over HTTP, with a real Feast store.

One module-scoped server (startup dominates the cost): a synthetic home is built by the real features
stage (Feast apply + materialise into SQLite), an ItemKNN artifact is packaged with ``package_model``
and published as champion of deployment "default" in the home's run index, and
``bentoml serve serving.service:Recommender`` runs against that RECFORGE_HOME/BENTOML_HOME. While the
server starts, the test process exercises the packaging contract itself (Bento build + Dockerfile
pinning the model; packaging never changes a deployment's champion). The HTTP guard is checked on the
same server: the one error body shape, body/content-type/id-length limits, one WARNING line per
client error and no traceback.

A second server serves a two-stage champion: DIN packaged with a TwoTower retriever, both trained by
``train_model`` on the home's split (``build_ranker_serving_home``), for retrieve-then-rank,
explanations and cold users scored from Feast or request attributes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import httpx
import pytest

from pipeline.artifacts import Evaluation, GateDecision, TrainResult
from pipeline.layout import Layout
from pipeline.run_index import RunIndex
from serving.http_safety import DEFAULT_MAX_BODY_BYTES
from serving.package import package_model
from tests.serving_fixtures import (
    STARTUP_TIMEOUT_S,
    ServerProcess,
    ServingHome,
    build_ranker_serving_home,
    build_serving_home,
    passed,
    serve,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    return build_serving_home(tmp_path_factory.mktemp("serving") / "home")


@pytest.fixture(scope="module")
def server_process(home: ServingHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(home.layout, tmp_path_factory.mktemp("server") / "bentoml.log") as process:
        yield process


@pytest.fixture(scope="module")
def server(server_process: ServerProcess) -> str:
    return server_process.url


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

    with serve(ranker_home.layout, tmp_path_factory.mktemp("ranker-server") / "bentoml.log") as process:
        with bentoml.SyncHTTPClient(process.url, server_ready_timeout=STARTUP_TIMEOUT_S) as ready:
            assert ready.is_ready()
        with httpx.Client(base_url=process.url, timeout=30) as http:
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
    decision = passed("itemknn", 0.1)
    return train, evaluation, decision if promoted else dataclasses.replace(decision, promoted=False)


def test_package_promoted_builds_bento_with_dockerfile(home: ServingHome, server: str) -> None:
    """Runs while the server starts, on a second home: packaging stores and builds, it never promotes;
    leftovers of an interrupted build are cleaned."""
    layout = Layout(home.layout.home.parent / "second-home")
    index = RunIndex.for_layout(layout)
    rejected = package_model(*_manifests(home, promoted=False), layout, build_bento=True)
    assert rejected.bento_tag and rejected.bento is None  # stored as a model, no Bento

    # What a killed `bentoml build` leaves in BentoML's staging directory is removed by the next build.
    leftover = layout.bentoml_home / "tmp" / "bentoml_bento_recforge_recommender_interrupted"
    leftover.mkdir(parents=True)
    (leftover / "half-written.py").write_text("# interrupted\n")
    started = time.perf_counter()
    decision = package_model(*_manifests(home, promoted=True), layout, build_bento=True)
    build_s = time.perf_counter() - started
    assert not leftover.exists()
    assert decision.bento_tag != rejected.bento_tag and decision.bento
    name, version = decision.bento.split(":")
    dockerfile = layout.bentoml_home / "bentos" / name / version / "env" / "docker" / "Dockerfile"
    assert dockerfile.is_file()
    assert f"RECFORGE_MODEL_TAG={decision.bento_tag}" in dockerfile.read_text()  # the Bento pins its model
    assert index.champion("default") is None  # promotion is promote_candidate's job, not packaging's

    # A later rejected candidate builds no Bento.
    package_model(*_manifests(home, promoted=False), layout, build_bento=True)
    assert [p.parent.name for p in (layout.bentoml_home / "bentos" / name).glob("*/bento.yaml")] == [version]
    print(f"package + bentoml build took {build_s:.1f}s")


def test_healthz_and_metadata(client: httpx.Client, home: ServingHome) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["model_loaded"] and body["feature_store"]["reachable"]
    assert body["model_tag"] == home.decision.bento_tag  # the deployment's champion
    assert body["deployment"] == "default" and body["mode"] == "following" and body["pending"] is None

    meta = client.get("/metadata").json()
    assert meta["model"] == "itemknn" and meta["model_tag"] == home.decision.bento_tag
    assert meta["deployment"] == "default" and meta["deployment_event"]["action"] == "promote"
    assert meta["feature_namespace"] == body["feature_namespace"] != ""
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
    assert body["model_tag"] == home.decision.bento_tag and body["deployment"] == "default"
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


def test_recommend_anonymous_session_and_diversity(client: httpx.Client, home: ServingHome) -> None:
    visited = home.history[home.new_users[0]][-3:]
    payload = {"session": [*visited, "not-in-catalogue"], "k": 4}
    body = client.post("/recommend", json=payload).json()
    assert body["user_id"] is None and body["strategy"] == "session" and body["fallback"] is False
    assert body["unknown_session_items"] == ["not-in-catalogue"] and body["history_used"] == 3
    assert len(body["items"]) == 4 and not {i["item_id"] for i in body["items"]} & set(visited)
    diverse = client.post("/recommend", json={**payload, "diversity": 0.5}).json()
    assert diverse["stages"][-1].startswith("rerank:mmr(diversity=0.5,")
    # Neither user_id nor session: the most popular items, flagged.
    nothing = client.post("/recommend", json={"k": 3}).json()
    assert (
        nothing["fallback"] is True
        and nothing["fallback_reason"] == "anonymous visitor without a known session item"
    )
    # ItemKNN adds a known user's session to its training items, and excludes the session's items.
    known = client.post("/recommend", json={"user_id": home.user_ids[0], "session": visited, "k": 4}).json()
    assert known["strategy"] == "history+session" and known["note"] is None
    assert not {i["item_id"] for i in known["items"]} & set(visited)


@pytest.mark.parametrize(
    ("path", "payload", "needle"),
    [
        ("/recommend", {"user_id": "u1", "k": 0}, "greater than or equal to 1"),
        ("/recommend", {"user_id": "u1", "k": 5000}, "less than or equal to 1000"),
        ("/recommend", {"user_id": "u1", "k": "ten"}, "valid integer"),
        ("/recommend", {"user_id": ["u1"]}, "user_id"),
        ("/recommend", {"user_id": ""}, "at least 1 character"),
        ("/recommend", {"user_id": "   "}, "should match pattern"),
        ("/recommend", {"user_id": "u" * 257}, "at most 256 characters"),
        ("/similar_items", {"item_id": "i" * 300, "k": 3}, "at most 256 characters"),
        ("/recommend", {"user_id": 2**70}, "less than or equal to 9223372036854775807"),
        ("/recommend", {"user_id": "u1", "k": True}, "valid integer"),
        ("/recommend", {"user_id": "u1", "k": "3"}, "valid integer"),
        ("/similar_items", {"item_id": "no-such-item", "k": 3}, "unknown item_id"),
        ("/recommend", {"user_id": "u1", "user_features": {"age": "old"}}, "valid number"),
        ("/recommend", {"user_id": "u1", "user_features": {"age": -3}}, "greater than or equal to 1"),
        ("/recommend", {"user_id": "u1", "user_features": {"gender": 1}}, "valid string"),
        ("/recommend", {"user_id": "u1", "user_features": {"height": 180}}, "Extra inputs are not permitted"),
        ("/recommend", {"user_id": "u1", "user_features": "F"}, "user_features"),
        ("/recommend", {"user_id": "u1", "candidates": 0}, "greater than or equal to 1"),
        ("/recommend", {"session": ["i1"] * 51}, "at most 50 items"),
        ("/recommend", {"user_id": "u1", "diversity": 2}, "less than or equal to 1"),
    ],
)
def test_invalid_requests_are_4xx_with_a_message(
    client: httpx.Client, path: str, payload: dict, needle: str
) -> None:
    resp = client.post(path, json=payload)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    error = resp.json()["error"]  # the one error shape
    assert error["status"] == resp.status_code and error["type"] in ("invalid_request", "not_found")
    assert needle in error["message"], error
    assert len(resp.text) < 1500  # a long input is never echoed back
    if "user_features" in payload:
        assert resp.status_code == 400 and "user_features" in error["message"]  # names the field at fault


def test_integral_floats_are_integers_and_ids_are_stripped(client: httpx.Client, home: ServingHome) -> None:
    body = client.post("/recommend", json={"user_id": f"  {home.user_ids[1]} ", "k": 3.0}).json()
    assert body["user_id"] == home.user_ids[1] and len(body["items"]) == 3


def test_limits_and_error_shape(client: httpx.Client, server_process: ServerProcess) -> None:
    """413 (declared or chunked), 415, 404/405 in the one shape; one WARNING line each, no traceback."""
    before = len(server_process.log().splitlines())
    huge = '{"user_id": "' + "x" * (DEFAULT_MAX_BODY_BYTES + 1) + '"}'
    declared = client.post("/recommend", content=huge, headers={"content-type": "application/json"})

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds as the body arrives
        yield huge.encode()

    streamed = client.post("/recommend", content=chunked(), headers={"content-type": "application/json"})
    form = client.post("/recommend", data={"user_id": "u1"})  # curl -d's default content type
    unknown = client.get("/no/such/" + "p" * 3000)
    wrong_method = client.get("/recommend")
    for resp, status, kind in [
        (declared, 413, "payload_too_large"),
        (streamed, 413, "payload_too_large"),
        (form, 415, "unsupported_media_type"),
        (unknown, 404, "not_found"),
        (wrong_method, 405, "method_not_allowed"),
    ]:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["type"] == kind and resp.json()["error"]["status"] == status
        assert len(resp.text) < 600
    assert "x" * 200 not in streamed.text and "p" * 200 not in unknown.text

    time.sleep(0.5)  # the worker's log lines reach the file
    new = server_process.log().splitlines()[before:]
    assert "Traceback" not in "\n".join(new)
    warnings = [line for line in new if "[WARNING]" in line]
    assert len([w for w in warnings if "-> 413" in w]) == 2 and any("-> 415" in w for w in warnings)
    assert all(len(w) < 1000 for w in warnings)  # clipped: no 70 kB line in the log
    assert not [line for line in new if "[ERROR]" in line]


def test_similar_items(client: httpx.Client, home: ServingHome) -> None:
    item = home.item_ids[0]
    resp = client.post("/similar_items", json={"item_id": item, "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids = [i["item_id"] for i in body["items"]]
    assert 0 < len(ids) <= 5 and item not in ids and body["method"] == "item_similarity"
    # A product outside the catalogue, described by attributes: ItemKNN cannot place it, and says so.
    resp = client.post("/similar_items", json={"item_id": "new-item", "item_features": {"genres": ["Drama"]}})
    assert resp.status_code == 404 and "cannot place an item" in resp.text, resp.text
    resp = client.post("/similar_items", json={"item_id": "new-item"})
    assert resp.status_code == 404 and "unknown item_id" in resp.text


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


def test_pushed_events_reach_the_next_recommendation_and_the_event_log(
    client: httpx.Client, home: ServingHome
) -> None:
    from ingestion.event_log import EventLog

    log = EventLog(home.layout.event_log)
    before = len(log.read())
    visitor = "visitor-pushing-events"
    first = client.post("/recommend", json={"user_id": visitor, "k": 5}).json()
    assert first["strategy"] == "popularity" and first["history_used"] == 0

    now = int(time.time())
    clicked = home.item_ids[:2]
    batch = [
        {"user_id": visitor, "item_id": item, "timestamp": now - 60 + i} for i, item in enumerate(clicked)
    ]
    resp = client.post("/events", json={"events": batch})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["received"], body["appended"], body["duplicates"], body["users"]) == (2, 2, 0, 1)
    assert body["history_updated"] is True, body

    after = client.post("/recommend", json={"user_id": visitor, "k": 5}).json()
    assert after["strategy"] == "history" and after["history_used"] == 2 and not after["fallback"], after
    assert not {i["item_id"] for i in after["items"]} & set(clicked)  # what they just saw is excluded
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in first["items"]]

    # A retried push (ISO-8601 this time) appends nothing; the log holds each event once.
    iso = [
        {**e, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["timestamp"]))} for e in batch
    ]
    again = client.post("/events", json={"events": iso}).json()
    assert (again["appended"], again["duplicates"]) == (0, 2) and "already logged" in again["note"]
    assert len(log.read()) == before + 2

    # A known user's next recommendation reads the longer history.
    user = home.user_ids[2]
    known_before = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    unseen = next(i for i in home.item_ids if i not in home.seen[user] and i not in home.history[user])
    client.post(
        "/events", json={"events": [{"user_id": user, "item_id": unseen, "timestamp": now, "rating": 4}]}
    )
    known_after = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert known_after["history_used"] == known_before["history_used"] + 1
    assert unseen not in {i["item_id"] for i in known_after["items"]}


def test_an_invalid_event_batch_is_refused_whole_naming_each_row(
    client: httpx.Client, home: ServingHome
) -> None:
    from ingestion.event_log import EventLog

    log = EventLog(home.layout.event_log)
    before = len(log.read())
    now = int(time.time())
    batch = [
        {"user_id": "u-ok", "item_id": home.item_ids[0], "timestamp": now},
        {"user_id": "u-ok", "item_id": "no-such-item", "timestamp": now},
        {"user_id": "u-ok", "item_id": home.item_ids[1], "timestamp": now + 10 * 86400},
        {"user_id": "u-ok", "item_id": home.item_ids[2], "timestamp": "last tuesday"},
    ]
    resp = client.post("/events", json={"events": batch})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["message"] == "3 of 4 events are invalid; nothing was applied"
    assert [(d["field"], d["type"]) for d in error["details"]] == [
        ("events[1]", "unknown_item"),
        ("events[2]", "future_timestamp"),
        ("events[3]", "unparseable_timestamp"),
    ]
    assert len(log.read()) == before  # nothing half-applied
    assert client.post("/recommend", json={"user_id": "u-ok", "k": 3}).json()["history_used"] == 0
    for payload, needle in (
        ({"events": []}, "at least 1 item"),
        ({"events": [{"user_id": "a", "item_id": "b"}]}, "timestamp"),
        ({"events": [{"user_id": "a", "item_id": "b", "timestamp": 1, "colour": "red"}]}, "Extra inputs"),
    ):
        resp = client.post("/events", json=payload)
        assert resp.status_code == 400 and needle in resp.text, resp.text


def test_push_events_cli_sends_a_file_and_names_bad_lines(
    server: str, client: httpx.Client, home: ServingHome, tmp_path
) -> None:
    import subprocess
    import sys

    from pipeline.config import REPO_ROOT

    now = int(time.time())
    good = tmp_path / "clicks.csv"
    good.write_text(
        "user_id,item_id,timestamp,rating\n"
        + "".join(f"cli-visitor,{item},{now - 30 + i},\n" for i, item in enumerate(home.item_ids[3:6]))
    )

    def push(path):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestration.cli",
                "push-events",
                str(path),
                "--url",
                server,
                "--batch-size",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )

    result = push(good)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pushed 3 events in 2 batches: 3 appended, 0 already logged" in result.stdout, result.stdout
    assert client.post("/recommend", json={"user_id": "cli-visitor", "k": 3}).json()["history_used"] == 3
    assert "0 appended, 3 already logged" in push(good).stdout  # pushing the file again is harmless

    bad = tmp_path / "bad.csv"
    bad.write_text(f"user_id,item_id,timestamp\ncli-2,{home.item_ids[0]},{now}\ncli-2,no-such-item,{now}\n")
    result = push(bad)
    assert result.returncode == 1 and "STOPPED" in result.stdout and "line 3: unknown_item" in result.stdout


def test_every_answer_is_logged_with_its_request_id(client: httpx.Client, home: ServingHome) -> None:
    from serving.served_log import read_served

    answers = [client.post("/recommend", json={"user_id": user, "k": 4}).json() for user in home.user_ids[:3]]
    wanted = {a["request_id"]: a for a in answers}
    assert len(wanted) == 3
    deadline = time.monotonic() + 30  # the writer flushes every few seconds
    while time.monotonic() < deadline:
        logged = read_served(home.layout.served_log)
        logged = logged[logged["request_id"].isin(list(wanted))]
        if len(logged) == 3:
            break
        time.sleep(0.5)
    assert len(logged) == 3, logged
    for row in logged.itertuples():
        answer = wanted[row.request_id]
        assert list(row.items) == [i["item_id"] for i in answer["items"]]
        assert (row.user_id, row.strategy, row.model_tag, row.deployment, row.k) == (
            answer["user_id"],
            answer["strategy"],
            answer["model_tag"],
            "default",
            4,
        )
    health = client.get("/healthz").json()
    assert health["served_log"]["written"] >= 3 and health["served_log"]["dropped"] == 0


def test_status_scores_the_served_lists_by_the_events_that_followed(
    client: httpx.Client, home: ServingHome
) -> None:
    import math
    import os
    import subprocess
    import sys
    from datetime import timedelta

    from ingestion.event_log import EventLog
    from monitoring.online_quality import score_lists
    from pipeline.config import REPO_ROOT
    from serving.served_log import read_served

    visitor = "status-visitor"
    answer = client.post("/recommend", json={"user_id": visitor, "k": 5}).json()
    picked = answer["items"][1]["item_id"]  # the visitor then takes the second item of the list
    event = {"user_id": visitor, "item_id": picked, "timestamp": time.time()}
    assert client.post("/events", json={"events": [event]}).json()["appended"] == 1
    horizon = timedelta(seconds=5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        served = read_served(home.layout.served_log)
        if answer["request_id"] in set(served["request_id"]):
            break
        time.sleep(0.5)
    time.sleep(horizon.total_seconds())  # the list's horizon is over: it is scored, not pending
    lists = score_lists(served, EventLog(home.layout.event_log).read(), 5, horizon).set_index("request_id")
    mine = lists.loc[answer["request_id"]]
    assert mine["scored"] and mine["hit"] == 1.0 and mine["ndcg"] == pytest.approx(1 / math.log2(3))

    env = {**os.environ, "RECFORGE_HOME": str(home.layout.home)}
    result = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "status", "--k", "5", "--horizon-hours", "0.0014"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"deployment 'default': itemknn {answer['model_tag']}" in result.stdout, result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(answer["model_tag"]))
    assert float(row.split()[-2]) > 0.0, result.stdout  # some served list was followed by a click
    assert "online quality in the Evidently workspace" in result.stdout
    assert (home.layout.evidently_workspace / "online_quality_runs.json").is_file()
