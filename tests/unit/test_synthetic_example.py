"""The synthetic scale-test log (ingestion.synthetic): sizes, determinism, ids and planted structure."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingestion.synthetic import (
    SESSION_GAP_S,
    SyntheticFiles,
    build_world,
    max_events_per_user,
    write_synthetic,
)
from pipeline.config import load_config
from pipeline.schema import DataSchema

SIZES = {"n_events": 20_000, "n_items": 1_200, "n_users": 800}
PIPELINE_SESSION_GAP_S = 30 * 60  # evaluation.session_gap_minutes' default


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


@functools.cache
def _write(root: str, name: str, seed: int = 7, chunk_events: int = 6_000) -> SyntheticFiles:
    # A chunk smaller than the log: several row groups, so the block boundaries are exercised too.
    return write_synthetic(Path(root) / name, seed=seed, chunk_events=chunk_events, **SIZES)


@functools.cache
def _tables(root: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    files = _write(root, "a")
    return (
        pd.read_parquet(files.events),
        pd.read_parquet(files.users),
        pd.read_parquet(files.items),
    )


def _sessions(events: pd.DataFrame) -> np.ndarray:
    """True where an event starts a session as the pipeline cuts them (its default gap)."""
    gap = events.groupby("user_id", sort=False)["timestamp"].diff()
    return (gap.isna() | (gap > PIPELINE_SESSION_GAP_S)).to_numpy()


def test_same_seed_same_files_other_seed_other_events(root: str) -> None:
    a, b, c = _write(root, "a"), _write(root, "b"), _write(root, "c", seed=8)
    for name in ("events", "users", "items"):
        left = pd.read_parquet(getattr(a, name))
        pd.testing.assert_frame_equal(left, pd.read_parquet(getattr(b, name)))
    assert not pd.read_parquet(a.events).equals(pd.read_parquet(c.events))


def test_requested_sizes_are_honoured(root: str) -> None:
    events, users, items = _tables(root)
    assert len(events) == SIZES["n_events"]
    assert len(users) == SIZES["n_users"] and len(items) == SIZES["n_items"]
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert events["rating"].isna().all()  # implicit feedback, as the shop
    span_days = (events["timestamp"].max() - events["timestamp"].min()) / 86_400
    assert 150 < span_days <= 180


def test_ids_are_unique_and_consistent_between_tables(root: str) -> None:
    events, users, items = _tables(root)
    assert users["user_id"].is_unique and items["item_id"].is_unique
    assert set(events["user_id"]) == set(users["user_id"])  # every user has events
    assert set(events["item_id"]) <= set(items["item_id"])
    assert not events.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert users[["region", "age_band"]].notna().all().all()
    assert items[["category", "brand", "price"]].notna().all().all()
    # a brand sells in one category
    assert (items.groupby("brand")["category"].nunique() == 1).all()


def test_item_popularity_is_skewed_and_user_activity_heavy_tailed(root: str) -> None:
    events, _, items = _tables(root)
    per_item = events["item_id"].value_counts()
    top = per_item.head(len(items) // 100).sum() / len(events)
    assert top > 0.10  # ten times what uniform popularity gives the top 1 % of items
    per_user = events["user_id"].value_counts()
    assert per_user.max() > 10 * per_user.median()
    flat = write_synthetic(Path(root) / "flat", item_skew=0.0, **SIZES)
    flat_top = pd.read_parquet(flat.events)["item_id"].value_counts().head(len(items) // 100).sum()
    assert flat_top / len(events) < top / 2


def test_sessions_follow_item_neighbourhoods(root: str) -> None:
    events, _, items = _tables(root)
    world = build_world(**SIZES, seed=7)
    user = events["user_id"].str[1:].astype(int).to_numpy()
    item = events["item_id"].str[1:].astype(int).to_numpy()
    starts = _sessions(events)
    inside = ~starts[1:] & (user[1:] == user[:-1])
    across = starts[1:] & (user[1:] == user[:-1])
    follows = (world.successors[item[:-1]] == item[1:, None]).any(axis=1)
    # within a session about p_next (0.6) of the steps go to a neighbour; across sessions, chance
    assert follows[inside].mean() > 0.5
    assert follows[across].mean() < 0.05
    category = items.set_index("item_id").loc[events["item_id"], "category"].to_numpy()
    same = category[1:] == category[:-1]
    assert same[inside].mean() > 2 * same[across].mean()


def test_planted_sessions_are_the_ones_the_pipeline_cuts(root: str) -> None:
    events, _, _ = _tables(root)
    gap = events.groupby("user_id", sort=False)["timestamp"].diff().dropna()
    # no gap between the pipeline's session gap and the planted one: every cut is unambiguous
    assert not ((gap > PIPELINE_SESSION_GAP_S) & (gap < SESSION_GAP_S)).any()
    assert (gap > 0).all()
    n_sessions = _sessions(events).sum()
    assert 2.5 < len(events) / n_sessions < 5


def test_user_attributes_predict_categories(root: str) -> None:
    events, users, items = _tables(root)
    joined = events.merge(users, on="user_id").merge(items[["item_id", "category"]], on="item_id")
    share = pd.crosstab(joined["age_band"], joined["category"], normalize="index")
    overall = joined["category"].value_counts(normalize=True)
    # each age band's top category is bought well above its overall share
    lift = (share.max(axis=1) / overall[share.idxmax(axis=1)].to_numpy()).to_numpy()
    assert np.median(lift) > 1.5


def test_written_schema_and_config_load(root: str) -> None:
    files = _write(root, "a")
    schema = DataSchema.load(files.schema)
    assert set(schema.user_features) == {"region", "age_band"}
    assert set(schema.item_features) == {"category", "brand", "price"}
    cfg = load_config(files.config)
    assert cfg.source.kind == "events" and Path(cfg.source.path) == files.events
    assert cfg.source.data_schema.name == "synthetic"


def test_too_many_events_for_the_users_is_refused() -> None:
    cap = max_events_per_user(10)
    with pytest.raises(ValueError, match="need more than"):
        build_world(n_events=cap * 3 + 1, n_items=100, n_users=3, days=10)
    world = build_world(n_events=cap * 3, n_items=100, n_users=3, days=10)
    assert (world.counts == cap).all()


def test_the_cli_writes_it_and_keeps_synthetic_options_off_the_shop(tmp_path: Path, capsys) -> None:
    from orchestration.cli import run_cli

    argv = ["example", "synthetic", "--events", "3000", "--users", "200", "--items", "400"]
    code = run_cli([*argv, "--item-skew", "0.8", "--days", "30", str(tmp_path / "s")])
    assert code == 0
    assert "run bpr" in capsys.readouterr().out
    events = pd.read_parquet(tmp_path / "s" / "events.parquet")
    assert len(events) == 3000 and events["timestamp"].max() - events["timestamp"].min() <= 30 * 86_400
    assert run_cli(["example", "shop", "--days", "30", str(tmp_path / "shop")]) == 2
    assert "synthetic only" in capsys.readouterr().err
    assert run_cli([*argv[:3], "100", str(tmp_path / "few")]) == 2  # fewer events than users
    assert "n_events >= n_users" in capsys.readouterr().err
    assert not (tmp_path / "shop").exists()
