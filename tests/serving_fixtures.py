"""A small but real RECFORGE_HOME for serving tests and the serving benchmark.

``build_serving_home`` writes a synthetic snapshot (clustered users/items, titles), runs the real
features stage (Feast apply + materialise into the SQLite online store), fits a baseline model on all
but the last two events of each user (so the online history holds items newer than training, as in
production), writes the model artifact, and packages it with ``serving.package.package_model``.
Nothing is faked: the server started on this home reads real Feast and BentoML stores.
``package_candidate``/``promote`` add more models to such a home; ``serve`` starts a real
``bentoml serve`` (or ``python -m serving``) on it in a process group of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.artifacts import DeploymentEvent, Evaluation, GateDecision, TrainResult
from pipeline.config import REPO_ROOT, FeatureConfig
from pipeline.layout import Layout
from pipeline.run_index import RunIndex, now_iso
from serving.package import ARTIFACT_SUBDIR, bento_env, package_model, stored_model_dir
from tests.features_fixtures import T0, write_snapshot
from training.artifact import save_model_artifact
from training.models import build_model

HELD_OUT_USERS = 2  # the last users never reach training: unknown to the model, known to Feast


@dataclass(frozen=True)
class ServingHome:
    layout: Layout
    decision: GateDecision
    user_ids: list[str]  # users known to the model
    new_users: list[str]  # users with an online history but unknown to the model
    item_ids: list[str]
    seen: dict[str, set[str]]  # training items per known user
    history: dict[str, list[str]]  # full event order per user (what Feast holds, newest last)


def synthetic_events(n_users: int, n_items: int, per_user: int, seed: int = 7) -> pd.DataFrame:
    """Users in two taste clusters, each drawing ``per_user`` distinct items mostly from its cluster."""
    rng = np.random.default_rng(seed)
    rows = []
    half = n_items // 2
    for u in range(n_users):
        own = np.arange(1, half + 1) if u % 2 == 0 else np.arange(half + 1, n_items + 1)
        p = np.ones(n_items)
        p[own - 1] = 8.0
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False, p=p / p.sum())
        for t, item in enumerate(items):
            rows.append((f"u{u}", f"i{item}", u * 1000 + t, float(rng.integers(1, 6))))
    rows.sort(key=lambda r: r[2])
    return pd.DataFrame(
        {
            "event_id": pd.Series(range(len(rows)), dtype="int64"),
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": pd.to_datetime([T0 + pd.Timedelta(minutes=r[2]) for r in rows], utc=True).as_unit(
                "us"
            ),
            "rating": [r[3] for r in rows],
        }
    )


def build_serving_home(
    home: Path,
    model: str = "itemknn",
    n_users: int = 40,
    n_items: int = 60,
    per_user: int = 12,
    build_bento: bool = False,
    ann_min_items: int | None = None,
) -> ServingHome:
    """``ann_min_items``: packaging's ANN threshold (None: the pipeline default)."""
    layout = Layout(Path(home).resolve())
    snapshot, feature_set, events = _write_home_data(layout, n_users, n_items, per_user)

    # Training data: all but the last two events of each known user.
    history = {u: list(g["item_id"]) for u, g in events.groupby("user_id", sort=False)}
    known = [f"u{u}" for u in range(n_users - HELD_OUT_USERS)]
    new_users = [f"u{u}" for u in range(n_users - HELD_OUT_USERS, n_users)]
    item_ids = [f"i{j}" for j in range(1, n_items + 1)]
    item_index = {item: j + 1 for j, item in enumerate(item_ids)}
    seen = {u: set(history[u][:-2]) for u in known}
    rows = [(ui, item_index[i]) for ui, u in enumerate(known) for i in seen[u]]
    train = sp.csr_matrix(
        (np.ones(len(rows), np.float32), tuple(np.array(rows).T)), shape=(len(known), n_items + 1)
    )
    module = build_model(model, len(known), n_items)
    if hasattr(module, "fit"):
        module.fit(train)
    run_dir = layout.run(model, "serving-test")
    meta = {"data_version": snapshot.data_version, "protocol": "leave_last_out"}
    artifact = save_model_artifact(run_dir / "model", model, module, {}, item_ids, known, train, meta=meta)
    (run_dir / "metrics.json").write_text(json.dumps({"ndcg@10": 0.2}))

    train_result = TrainResult(
        model=model,
        run_dir=run_dir,
        checkpoint=artifact / "weights.pt",
        hparams={},
        epochs=0,
        epoch_seconds=0.0,
        interactions_per_second=0.0,
        best_valid_ndcg10=0.2,
        peak_rss_mb=0.0,
    )
    evaluation = Evaluation(
        model=model,
        metrics_path=run_dir / "metrics.json",
        leaderboard_path=run_dir / "leaderboard.md",
        metrics={"ndcg@10": 0.2, "recall@10": 0.3},
        baselines={"popularity": {"ndcg@10": 0.1}},
        protocol="leave_last_out",
        data_version=snapshot.data_version,
    )
    ann = {} if ann_min_items is None else {"ann_min_items": ann_min_items}
    decision = package_model(train_result, evaluation, passed(model), layout, build_bento=build_bento, **ann)
    publish(layout, decision, feature_set.namespace, snapshot.data_version, run_dir)
    return ServingHome(layout, decision, known, new_users, item_ids, seen, history)


def passed(model: str, value: float = 0.2, deployment: str = "default") -> GateDecision:
    """A gate decision that let ``model`` through (the gate itself is tested in test_gate.py)."""
    return GateDecision(
        model=model,
        deployment=deployment,
        eligible=True,
        promoted=True,
        reason="beats popularity (test)",
        metric="ndcg@10",
        candidate_value=value,
        popularity_value=0.1,
    )


def publish(
    layout: Layout,
    decision: GateDecision,
    namespace: str,
    data_version: str,
    run_dir: Path,
    deployment: str = "default",
) -> DeploymentEvent:
    """Make the packaged ``decision`` the deployment's champion, as the promote stage would."""
    index = RunIndex.for_layout(layout)
    current = index.champion(deployment)
    assert decision.bento_tag
    event = DeploymentEvent(
        deployment=deployment,
        action="promote",
        at=now_iso(),
        run_uid=f"{decision.model}/{Path(run_dir).name}",
        model=decision.model,
        model_tag=decision.bento_tag,
        feature_namespace=namespace,
        data_version=data_version,
        protocol="leave_last_out",
        split_dir="",
        artifact_dir=str(stored_model_dir(layout, decision.bento_tag) / ARTIFACT_SUBDIR),
        metric=decision.metric,
        value=float(decision.candidate_value or 0.0),
        reason=decision.reason,
        bento=decision.bento,
    )
    return index.append_event(event, expected_tag=current.model_tag if current else None)


def _write_home_data(layout: Layout, n_users: int, n_items: int, per_user: int):
    """Snapshot + the real features stage (Feast apply, materialise, point-in-time examples)."""
    from features.store import build_features

    events = synthetic_events(n_users, n_items, per_user)
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "age": pd.array([20 + u % 40 for u in range(n_users)], dtype="Int64"),
            "gender": ["F" if u % 2 else "M" for u in range(n_users)],
            # Like gender, the occupation names the user's taste cluster (u % 2): attributes carry signal.
            "occupation": ["artist" if u % 2 else "engineer" for u in range(n_users)],
            "zip_code": ["00000"] * n_users,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(1, n_items + 1)],
            "title": [f"Title {j}" for j in range(1, n_items + 1)],
            "release_year": pd.array([1990 + j % 30 for j in range(1, n_items + 1)], dtype="Int64"),
            "genres": [["Drama"] if j % 2 else ["Comedy"] for j in range(1, n_items + 1)],
        }
    )
    probe = write_snapshot(layout.home / "probe-snapshot", events, users, items)
    snapshot = write_snapshot(layout.snapshot(probe.data_version), events, users, items)
    feature_set = build_features(snapshot, FeatureConfig(history_length=20), layout)
    return snapshot, feature_set, events


RANKER_HPARAMS = {
    "twotower": {
        "embedding_size": 16,
        "attribute_size": 8,
        "hidden_sizes": [32],
        "user_id_dropout": 0.5,
        "lr": 0.01,
        "num_negatives": 4,
        "history_length": 20,
        "batch_size": 128,
    },
    "din": {
        "embedding_size": 8,
        "attribute_size": 4,
        "attention_size": 8,
        "mlp_sizes": [16],
        "history_length": 10,
        "lr": 0.01,
        "num_negatives": 4,
        "batch_size": 128,
    },
}


def build_ranker_serving_home(
    home: Path,
    ranker: str = "din",
    retriever: str = "twotower",
    n_users: int = 40,
    n_items: int = 60,
    per_user: int = 12,
    max_epochs: int = 2,
) -> ServingHome:
    """A home whose champion is a ranker packaged with a retriever, both trained by ``train_model``.

    The real pipeline path: features stage -> leave-last-out split -> train both on it (the retriever
    first, so packaging finds its run on the same split) -> ``package_model`` of the ranker. The last
    ``HELD_OUT_USERS`` users are removed from the examples before splitting: unknown to the models,
    but their profile and history are in Feast (the cold-start-from-attributes path).
    """
    from pipeline.config import SplitConfig, TrainerConfig
    from training.split import SplitIndex, make_split
    from training.train import train_model

    layout = Layout(Path(home).resolve())
    snapshot, feature_set, events = _write_home_data(layout, n_users, n_items, per_user)
    new_users = [f"u{u}" for u in range(n_users - HELD_OUT_USERS, n_users)]
    examples = pd.read_parquet(feature_set.examples)
    known_examples = layout.home / "examples-known-users.parquet"
    examples[~examples["user_id"].isin(new_users)].to_parquet(known_examples, index=False)
    split = make_split(
        dataclasses.replace(feature_set, examples=known_examples),
        SplitConfig(protocol="leave_last_out"),
        layout,
    )
    cfg = TrainerConfig(max_epochs=max_epochs, patience=max_epochs, num_threads=1)
    for model in (retriever, ranker):
        result = train_model(model, split, RANKER_HPARAMS[model], cfg, layout.run(model, "serving-test"))
    evaluation = Evaluation(
        model=ranker,
        metrics_path=result.run_dir / "metrics.json",
        leaderboard_path=result.run_dir / "leaderboard.md",
        metrics={"ndcg@10": 0.2},
        baselines={"popularity": {"ndcg@10": 0.1}},
        protocol="leave_last_out",
        data_version=snapshot.data_version,
    )
    decision = package_model(result, evaluation, passed(ranker), layout, build_bento=False)
    publish(layout, decision, feature_set.namespace, snapshot.data_version, result.run_dir)
    index = SplitIndex.load(split)
    train = pd.read_parquet(split.train, columns=["user_id", "item_id"]).astype(str)
    seen = {u: set(g["item_id"]) for u, g in train.groupby("user_id")}
    history = {u: list(g["item_id"]) for u, g in events.groupby("user_id", sort=False)}
    return ServingHome(layout, decision, list(index.user_ids), new_users, list(index.item_ids), seen, history)


# ---------------------------------------------------------------- candidates and real servers


def package_candidate(home: ServingHome, model: str, run_id: str, value: float) -> tuple[GateDecision, Path]:
    """Fit ``model`` on the home's training data and package it (stored, NOT promoted)."""
    layout = home.layout
    item_index = {item: j + 1 for j, item in enumerate(home.item_ids)}
    rows = [(u, item_index[i]) for u, user in enumerate(home.user_ids) for i in home.seen[user]]
    train = sp.csr_matrix(
        (np.ones(len(rows), np.float32), tuple(np.array(rows).T)),
        shape=(len(home.user_ids), len(home.item_ids) + 1),
    )
    module = build_model(model, len(home.user_ids), len(home.item_ids))
    if hasattr(module, "fit"):
        module.fit(train)
    run_dir = layout.run(model, run_id)
    champion = RunIndex.for_layout(layout).champion("default")
    assert champion is not None
    meta = {"data_version": champion.data_version, "protocol": "leave_last_out"}
    artifact = save_model_artifact(
        run_dir / "model", model, module, {}, home.item_ids, home.user_ids, train, meta=meta
    )
    result = TrainResult(model, run_dir, artifact / "weights.pt", {}, 0, 0.0, 0.0, value, 0.0)
    evaluation = Evaluation(
        model,
        run_dir / "metrics.json",
        run_dir / "leaderboard.md",
        {"ndcg@10": value},
        {"popularity": {"ndcg@10": 0.1}},
        "leave_last_out",
        champion.data_version,
    )
    return package_model(result, evaluation, passed(model, value), layout, build_bento=False), run_dir


def promote(home: ServingHome, decision: GateDecision, run_dir: Path, deployment: str = "default") -> None:
    """Make a packaged candidate the champion of ``deployment``, on the champion's Feast namespace."""
    champion = RunIndex.for_layout(home.layout).champion("default")
    assert champion is not None
    publish(home.layout, decision, champion.feature_namespace, champion.data_version, run_dir, deployment)


STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class ServerProcess:
    """A running server: its URL, port, process (the ``bentoml serve`` supervisor) and log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Until ``/readyz`` answers 200 (model loaded, feature store up); fails if the server exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout_s}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """Stop the server's process group (the supervisor and its workers, nothing else)."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def serve(
    layout: Layout, log_path: Path, env: dict[str, str] | None = None, launcher: bool = False
) -> Iterator[ServerProcess]:
    """A server on ``layout``'s champion in its own process group; stopped (group only) on exit.

    ``launcher``: start it as users do, ``python -m serving`` (preflight, default bind address),
    else ``bentoml serve serving.service:Recommender --host 127.0.0.1``.
    """
    port = _free_port()
    full_env = bento_env(layout)  # RECFORGE_HOME, BENTOML_HOME, OMP_WAIT_POLICY=PASSIVE
    full_env.pop("RECFORGE_MODEL_TAG", None)  # the service must follow the deployment's champion
    full_env.update(env or {})
    if launcher:
        cmd = [sys.executable, "-m", "serving", "--port", str(port)]
    else:
        cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:Recommender"]
        cmd += ["-p", str(port), "--host", "127.0.0.1"]
    with open(log_path, "w") as log:
        # Own process group: the server forks workers, and teardown must stop exactly those.
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    process = ServerProcess(f"http://127.0.0.1:{port}", port, proc, log_path)
    try:
        yield process
    finally:
        process.stop()
