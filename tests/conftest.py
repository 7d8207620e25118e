"""Shared fixtures: synthetic data in the pipeline's schemas, small enough for fast unit tests.

``synthetic_examples(n_users, n_items, n_events, seed)`` builds an examples frame with the columns of
``FeatureSet.examples`` (docs/architecture.md): point-in-time ``recent_items`` (events strictly before,
in (time, event_id) order), ``user_interaction_count`` and ``item_interaction_count`` before the event.
User behaviour has structure (each user prefers one item cluster and tends to move to the next item
id), so models can learn something and tests can assert that they do. Profile attributes carry the same
structure: a user's age and occupation and an item's genre, release year and title word name their
cluster, so feature-aware models can score users and items from attributes alone.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.duckdb_exit import close_default_duckdb_connection

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.tier_guard"]


def synthetic_examples(
    n_users: int = 40, n_items: int = 60, n_events: int = 1200, seed: int = 0, history_length: int = 50
) -> pd.DataFrame:
    """An examples frame (one row per interaction) with structured, reproducible behaviour."""
    rng = np.random.default_rng(seed)
    n_clusters = 4
    user_cluster = rng.integers(0, n_clusters, size=n_users)
    events_per_user = rng.multinomial(n_events - 3 * n_users, np.full(n_users, 1 / n_users)) + 3
    rows = []
    start = pd.Timestamp("2024-01-01", tz="UTC")
    for user in range(n_users):
        cluster_items = np.arange(user_cluster[user], n_items, n_clusters)
        item = int(rng.choice(cluster_items))
        t = start + pd.Timedelta(minutes=int(rng.integers(0, 10_000)))
        for _ in range(events_per_user[user]):
            rows.append((f"u{user:04d}", f"i{item:04d}", t, float(rng.integers(1, 6))))
            # Mostly the next item of the user's cluster, sometimes a random item.
            nxt = item + n_clusters if rng.random() < 0.8 else int(rng.integers(0, n_items))
            item = nxt % n_items
            t = t + pd.Timedelta(minutes=int(rng.integers(1, 600)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp", "rating"])
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # input order != time order
    frame.insert(0, "event_id", np.arange(len(frame), dtype=np.int64))
    ordered = frame.sort_values(["user_id", "event_timestamp", "event_id"])
    recent: dict[int, list[str]] = {}
    for _, group in ordered.groupby("user_id", sort=False):
        items = group["item_id"].tolist()
        for j, event_id in enumerate(group["event_id"].tolist()):
            recent[event_id] = items[max(0, j - history_length) : j]
    frame["recent_items"] = frame["event_id"].map(recent)
    frame["user_interaction_count"] = frame["recent_items"].map(len).astype("int64")
    by_time = frame.sort_values(["event_timestamp", "event_id"])
    frame["item_interaction_count"] = (
        by_time.groupby("item_id").cumcount().reindex(frame.index).astype("int64")
    )
    user_no = frame["user_id"].str[1:].astype(int).to_numpy()
    item_no = frame["item_id"].str[1:].astype(int).to_numpy()
    cluster_of_user = user_cluster[user_no]
    cluster_of_item = item_no % n_clusters
    words = np.array(["alpha", "bravo", "charlie", "delta"])
    frame["age"] = (15 + 12 * cluster_of_user).astype("int64")
    frame["gender"] = np.where(user_no % 2 == 0, "F", "M")
    frame["occupation"] = np.char.add("occupation", cluster_of_user.astype(str))
    frame["title"] = [
        f"{words[c].title()} Story {i} (199{c})" for c, i in zip(cluster_of_item, item_no, strict=True)
    ]
    frame["release_year"] = (1990 + 5 * cluster_of_item).astype("int64")
    frame["genres"] = [
        [f"genre{c}", "Drama"] if i % 3 == 0 else [f"genre{c}"]
        for c, i in zip(cluster_of_item, item_no, strict=True)
    ]
    return frame


@pytest.fixture
def make_examples() -> Callable[..., pd.DataFrame]:
    """The ``synthetic_examples`` factory, for tests that need several sizes or seeds."""
    return synthetic_examples


@pytest.fixture
def examples_parquet(tmp_path: Path) -> Path:
    """A small examples Parquet file (40 users, 60 items, 1200 events)."""
    path = tmp_path / "examples.parquet"
    synthetic_examples().to_parquet(path, index=False)
    return path


def feature_set_of(examples: Path, feature_repo: Path, data_version: str = "synthetic-v1"):
    """A ``FeatureSet`` manifest pointing at an examples Parquet file (no Feast involved)."""
    from pipeline.artifacts import FeatureSet

    return FeatureSet(
        data_version=data_version,
        feature_repo=feature_repo,
        examples=examples,
        feature_views=[],
        feature_service="recsys_training",
        materialized_until="2024-12-31T00:00:00+00:00",
    )


@pytest.fixture
def feature_set(examples_parquet: Path, tmp_path: Path):
    """A ``FeatureSet`` manifest pointing at ``examples_parquet`` (no Feast involved)."""
    return feature_set_of(examples_parquet, tmp_path / "feature_repo")


@pytest.fixture
def layout(tmp_path: Path):
    from pipeline.layout import Layout

    return Layout(home=tmp_path / "home")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Read, before any test runs, the per-process facts whose first read starts a subprocess.

    The code's commit (``pipeline.provenance.code_commit``: ``git``), stamped by packaging and run
    records, and the processor name (``platform.uname().processor``: ``uname -p``), stamped by
    BentoML on every stored model. Both are cached for the life of the process, as in a service;
    reading them here keeps those subprocesses out of the fast tier's tests (tests/tier_guard.py).
    """
    from pipeline.provenance import code_commit

    code_commit()
    _ = platform.uname().processor


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the DuckDB connection that outlives the tests, so the interpreter exits quietly.

    Done after every test and fixture has finished; why it is needed is in ``features.duckdb_exit``
    (the CLI does the same before it exits).
    """
    close_default_duckdb_connection()


@pytest.fixture(scope="session")
def leaderboard():
    """bench/leaderboard.py as a module (bench/ is scripts, not a package), for the leaderboard tests."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "leaderboard.py"
    spec = importlib.util.spec_from_file_location("leaderboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def model_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configs/ directory of our own, so tests can write model YAMLs (``tuning_grid``, ``search_space``)."""
    import pipeline.config as config

    root = tmp_path / "configs"
    (root / "models").mkdir(parents=True)
    monkeypatch.setattr(config, "CONFIG_DIR", root)
    return root / "models"
