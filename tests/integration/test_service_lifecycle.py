"""A live service follows its deployment's champion, refuses what it cannot serve, and stops cleanly.

Everything runs against the real stack: one home built by the real features stage (Feast), models
packaged with ``package_model`` and made champion in the home's run index (``publish``) or rolled back
(``serving.package.rollback``), and one server started as users start it (``python -m serving``, so
the preflight and the default bind address are exercised too) with an API key and a 0.5 s poll.

In order (one server for the module; the last test kills it):
- the launcher binds 127.0.0.1 and says so; the API key is required everywhere but the probes;
- hot swap under load: 8 client threads POST /recommend for ~12 s while a second model is promoted
  and later rolled back: no failed request, only those two model tags, each swap visible within a bound,
  and after a swap no request answered by the old model;
- a champion change of ANOTHER deployment is not followed; a swap to a model with a truncated file is
  refused (the old model keeps serving, /healthz shows the pending error, one ERROR line in the log);
- SIGKILL of the ``bentoml serve`` supervisor frees the port within seconds (no orphan worker);
- a model whose weights are truncated when the server starts ends the server with status 1 and one
  line naming ``weights.pt``, with ``python -m serving`` (preflight) and with plain ``bentoml serve``
  (the worker stops the supervisor), and a request sent meanwhile does not hang.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from pipeline.artifacts import GateDecision
from pipeline.config import REPO_ROOT
from pipeline.layout import Layout
from pipeline.run_index import RunIndex
from serving.package import ARTIFACT_SUBDIR, bento_env, rollback, stored_model_dir
from tests.serving_fixtures import (
    ServerProcess,
    ServingHome,
    build_serving_home,
    package_candidate,
    promote,
    serve,
)

pytestmark = pytest.mark.integration

API_KEY = "lifecycle-test-key"
KEY = {"X-API-Key": API_KEY}
POLL_S = 0.5
SWAP_VISIBLE_BOUND_S = 15.0  # promotion -> first answer from the new model (poll + load + Feast check)
CLIENTS = 8


@dataclasses.dataclass(frozen=True)
class Candidates:
    better: tuple[GateDecision, Path]  # popularity, packaged: promoted during the load test
    broken: tuple[GateDecision, Path]  # itemknn again, then its weights.pt truncated


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    return build_serving_home(tmp_path_factory.mktemp("lifecycle") / "home")


@pytest.fixture(scope="module")
def started(home: ServingHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server, started (not yet ready) the way users start it: ``python -m serving``, no --host."""
    env = {"RECFORGE_API_KEY": API_KEY, "RECFORGE_SWAP_POLL_S": str(POLL_S), "RECFORGE_SWAP_RETRY_S": "60"}
    log_path = tmp_path_factory.mktemp("lifecycle-server") / "server.log"
    with serve(home.layout, log_path, env=env, launcher=True) as process:
        yield process


@pytest.fixture(scope="module")
def candidates(home: ServingHome, started: ServerProcess) -> Candidates:
    """Packaged while the server starts."""
    better = package_candidate(home, "popularity", "lifecycle-better", 0.3)
    broken = package_candidate(home, "itemknn", "lifecycle-broken", 0.4)
    weights = stored_model_dir(home.layout, broken[0].bento_tag) / ARTIFACT_SUBDIR / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    return Candidates(better, broken)


@pytest.fixture(scope="module")
def server(started: ServerProcess, candidates: Candidates) -> ServerProcess:
    started.wait_ready()
    return started


def _tag(server: ServerProcess) -> str:
    return httpx.get(f"{server.url}/healthz", timeout=10).json()["model_tag"]


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def test_launcher_binds_loopback_and_requires_the_key(server: ServerProcess, home: ServingHome) -> None:
    assert f"Listening on 127.0.0.1:{server.port}" in server.log()
    listening = [
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
    ]
    assert listening and set(listening) == {"127.0.0.1"}, listening

    payload = {"user_id": home.user_ids[0], "k": 3}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        refused = http.post("/recommend", json=payload)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
        assert http.post("/recommend", json=payload, headers={"X-API-Key": "nope"}).status_code == 401
        assert http.post("/recommend", json=payload, headers=KEY).status_code == 200
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        assert http.post("/recommend", json=payload, headers=bearer).status_code == 200
        for path in ("/metadata", "/metrics", "/docs.json"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers=KEY).status_code == 200, path
        for probe in ("/healthz", "/readyz", "/livez"):
            assert http.get(probe).status_code == 200, probe


def test_hot_swap_under_load(server: ServerProcess, home: ServingHome, candidates: Candidates) -> None:
    """Promote, then roll back, while 8 clients keep asking: no failures, two tags, bounded switch time."""
    old, (better, better_run) = home.decision.bento_tag, candidates.better
    new = better.bento_tag
    records: list[tuple[float, float, int, str | None]] = []  # (start, end, status, model tag or error)
    lock, stop = threading.Lock(), threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, headers=KEY, timeout=30) as http:
            while not stop.is_set():
                payload = {"user_id": rng.choice(home.user_ids), "k": 5}
                t0 = time.monotonic()
                try:
                    resp = http.post("/recommend", json=payload)
                    status = resp.status_code
                    tag = resp.json().get("model_tag") if status == 200 else resp.text[:200]
                except httpx.HTTPError as exc:
                    status, tag = -1, repr(exc)
                with lock:
                    records.append((t0, time.monotonic(), status, tag))

    def first_answer(tag: str, after: float) -> float | None:
        with lock:
            ends = [end for start, end, _, got in records if got == tag and start >= after]
        return min(ends) if ends else None

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        promoted_at = time.monotonic()
        promote(home, better, better_run)
        _wait_for(lambda: first_answer(new, promoted_at) is not None, 30, f"an answer from {new}")
        time.sleep(4)
        rolled_back_at = time.monotonic()
        event = rollback(RunIndex.for_layout(home.layout), home.layout, "default")
        assert event.model_tag == old and event.action == "rollback"
        _wait_for(lambda: first_answer(old, rolled_back_at) is not None, 30, f"an answer from {old} again")
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    failed = [r for r in records if r[2] != 200]
    assert not failed, failed[:5]
    assert {r[3] for r in records} == {old, new}
    promote_visible = first_answer(new, promoted_at) - promoted_at
    rollback_visible = first_answer(old, rolled_back_at) - rolled_back_at
    assert promote_visible < SWAP_VISIBLE_BOUND_S and rollback_visible < SWAP_VISIBLE_BOUND_S
    # Once a worker answered from the new model, every later request gets the new model (no flapping).
    switched, back = first_answer(new, promoted_at), first_answer(old, rolled_back_at)
    assert all(tag == new for start, _, _, tag in records if switched < start < rolled_back_at)
    assert all(tag == old for start, _, _, tag in records if start > back)
    ms = sorted((end - start) * 1000 for start, end, _, _ in records)
    print(
        f"{len(records)} requests by {CLIENTS} clients, 0 failed; promotion visible after {promote_visible:.2f}s, "
        f"rollback after {rollback_visible:.2f}s; p50 {statistics.median(ms):.1f} ms, "
        f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms"
    )
    assert "Traceback" not in server.log()


def test_another_deployments_champion_is_not_followed(
    server: ServerProcess, home: ServingHome, candidates: Candidates
) -> None:
    before = _tag(server)
    better, better_run = candidates.better
    promote(home, better, better_run, deployment="other")
    assert RunIndex.for_layout(home.layout).champion("other").model_tag == better.bento_tag
    time.sleep(4 * POLL_S)
    health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    assert health["model_tag"] == before == home.decision.bento_tag and health["deployment"] == "default"
    assert health["pending"] is None


def test_swap_to_a_corrupt_model_is_refused(
    server: ServerProcess, home: ServingHome, candidates: Candidates
) -> None:
    good = _tag(server)
    broken, broken_run = candidates.broken
    promote(home, broken, broken_run)

    def pending() -> dict | None:
        return httpx.get(f"{server.url}/healthz", timeout=10).json()["pending"]

    _wait_for(lambda: pending() is not None, SWAP_VISIBLE_BOUND_S, "the refused swap in /healthz")
    time.sleep(6 * POLL_S)  # several more polls: still one ERROR line, not one per poll
    health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert health.status_code == 200  # still serving, so still ready
    body = health.json()
    assert body["model_tag"] == good and body["pending"]["model_tag"] == broken.bento_tag
    assert "weights.pt" in body["pending"]["error"]
    answer = httpx.post(
        f"{server.url}/recommend", json={"user_id": home.user_ids[0]}, headers=KEY, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["model_tag"] == good
    errors = [line for line in server.log().splitlines() if "[ERROR]" in line and broken.bento_tag in line]
    assert len(errors) == 1 and "weights.pt" in errors[0], errors

    rollback(RunIndex.for_layout(home.layout), home.layout, "default")  # back to the good model
    _wait_for(lambda: pending() is None, SWAP_VISIBLE_BOUND_S, "pending cleared after the rollback")
    assert _tag(server) == good


def test_sigkill_of_the_supervisor_frees_the_port(server: ServerProcess) -> None:
    supervisor = psutil.Process(server.proc.pid)
    workers = supervisor.children(recursive=True)
    assert workers, "no worker processes"
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)

    def port_free() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", server.port)) != 0

    freed = _wait_for(port_free, 10, f"port {server.port} free after SIGKILL of the supervisor")
    _wait_for(lambda: not any(_alive(w) for w in workers), 10, "workers gone")
    print(f"port free {freed:.2f}s after SIGKILL of the supervisor")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_truncated_weights_at_start_end_the_server(home: ServingHome, tmp_path: Path) -> None:
    """A home whose champion has a truncated weights.pt: both ways of starting exit 1 with one line."""
    broken = Layout(tmp_path / "broken-home")
    tag = home.decision.bento_tag
    shutil.copytree(stored_model_dir(home.layout, tag), stored_model_dir(broken, tag))
    weights = stored_model_dir(broken, tag) / ARTIFACT_SUBDIR / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    event = RunIndex.for_layout(home.layout).history("default")[0]
    RunIndex.for_layout(broken).append_event(dataclasses.replace(event, id=None), expected_tag=None)
    env = bento_env(broken)
    env.pop("RECFORGE_MODEL_TAG", None)

    # 1. python -m serving: the preflight refuses before anything listens.
    port = _free_port()
    launched = subprocess.run(
        [sys.executable, "-m", "serving", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launched.returncode == 1
    assert launched.stdout == "" and len(launched.stderr.strip().splitlines()) == 1, launched.stderr
    assert "weights.pt" in launched.stderr and "Traceback" not in launched.stderr

    # 2. plain bentoml serve: the worker stops the supervisor; a request sent meanwhile fails fast.
    port = _free_port()
    log_path = tmp_path / "bentoml.log"
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:Recommender"]
    cmd += ["--port", str(port), "--host", "127.0.0.1"]
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0 or proc.poll() is not None

        _wait_for(listening, 60, "the port opened")
        request_ended: list[float] = []

        def early_request() -> None:
            try:
                httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "u1"}, timeout=60)
            except httpx.HTTPError:
                pass
            request_ended.append(time.monotonic())

        client = threading.Thread(target=early_request, daemon=True)
        client.start()
        returncode = proc.wait(timeout=90)
        exited = time.monotonic()
        client.join(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    output = log_path.read_text()
    assert returncode == 1, output[-3000:]
    lines = [line for line in output.splitlines() if "weights.pt" in line]
    assert len(lines) == 1 and "[ERROR]" in lines[0] and "checksum" in lines[0], output[-3000:]
    assert "Traceback" not in output
    assert request_ended and request_ended[0] - exited < 10  # the early request did not hang
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    print(
        f"bentoml serve with a truncated model exited 1 after {exited - started:.1f}s: {json.dumps(lines[0])}"
    )
