"""Split protocols: disjoint, complete, per-protocol invariants, determinism, idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.artifacts import FeatureSet, Split
from pipeline.config import SplitConfig
from pipeline.layout import Layout
from training.split import SplitIndex, make_split, train_matrix

PROTOCOLS = ["temporal", "leave_last_out", "random_holdout"]


def _parts(split: Split) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(getattr(split, name)) for name in ("train", "valid", "test")}


def _key(frame: pd.DataFrame) -> pd.Series:
    return list(zip(frame["event_timestamp"], frame["event_id"], strict=True))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parts_are_disjoint_and_complete(protocol: str, feature_set: FeatureSet, layout: Layout) -> None:
    split = make_split(feature_set, SplitConfig(protocol=protocol), layout)
    parts = _parts(split)
    ids = {name: set(frame["event_id"]) for name, frame in parts.items()}
    assert (
        not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    )
    examples = pd.read_parquet(feature_set.examples)
    assert ids["train"] | ids["valid"] | ids["test"] == set(examples["event_id"])
    assert all(len(parts[name]) > 0 for name in parts)
    assert split.counts["events"] == len(examples)
    assert sum(split.counts[name] for name in parts) == len(examples)
    assert list(parts["train"].columns) == list(examples.columns)
    assert split.dir == layout.split("synthetic-v1", f"{protocol}-seed2026-valid0.1-test0.1")


def test_temporal_is_one_global_time_cut(feature_set: FeatureSet, layout: Layout) -> None:
    split = make_split(feature_set, SplitConfig(protocol="temporal", valid_share=0.1, test_share=0.2), layout)
    parts = _parts(split)
    assert max(_key(parts["train"])) < min(_key(parts["valid"]))
    assert max(_key(parts["valid"])) < min(_key(parts["test"]))
    total = split.counts["events"]
    assert split.counts["test"] == round(total * 0.2)
    assert split.counts["valid"] == round(total * 0.1)


def test_leave_last_out_takes_each_users_last_two_events(make_examples, tmp_path: Path) -> None:
    examples = make_examples(n_users=30, n_items=40, n_events=600, seed=3)
    # Give two users fewer than 3 events: they must stay entirely in train.
    short = examples[examples["user_id"] == "u0001"].head(2)
    single = examples[examples["user_id"] == "u0002"].head(1)
    examples = pd.concat([examples[~examples["user_id"].isin(["u0001", "u0002"])], short, single])
    path = tmp_path / "ex.parquet"
    examples.to_parquet(path, index=False)
    fs = FeatureSet("v", tmp_path, path, [], "s", "")
    split = make_split(fs, SplitConfig(protocol="leave_last_out"), Layout(tmp_path / "home"))
    parts = _parts(split)
    for user, events in examples.groupby("user_id"):
        ordered = events.sort_values(["event_timestamp", "event_id"])["event_id"].tolist()
        test = parts["test"].loc[parts["test"]["user_id"] == user, "event_id"].tolist()
        valid = parts["valid"].loc[parts["valid"]["user_id"] == user, "event_id"].tolist()
        if len(ordered) < 3:
            assert test == [] and valid == []
        else:
            assert test == [ordered[-1]] and valid == [ordered[-2]]
    assert split.counts["test_users"] == examples["user_id"].nunique() - 2


def test_random_holdout_is_per_user_and_seeded(feature_set: FeatureSet, tmp_path: Path) -> None:
    first = make_split(feature_set, SplitConfig(protocol="random_holdout", seed=1), Layout(tmp_path / "a"))
    parts = _parts(first)
    sizes = pd.read_parquet(feature_set.examples).groupby("user_id").size()
    for user, size in sizes.items():
        n_test = (parts["test"]["user_id"] == user).sum()
        n_valid = (parts["valid"]["user_id"] == user).sum()
        assert n_test == max(1, int(size * 0.1 + 0.5)) and n_valid == max(1, int(size * 0.1 + 0.5))
    again = make_split(feature_set, SplitConfig(protocol="random_holdout", seed=1), Layout(tmp_path / "b"))
    other = make_split(feature_set, SplitConfig(protocol="random_holdout", seed=2), Layout(tmp_path / "c"))
    assert set(_parts(again)["test"]["event_id"]) == set(parts["test"]["event_id"])
    assert set(_parts(other)["test"]["event_id"]) != set(parts["test"]["event_id"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deterministic_regardless_of_input_row_order(protocol: str, make_examples, tmp_path: Path) -> None:
    examples = make_examples(seed=5)
    results = []
    for name, frame in (("a", examples), ("b", examples.sample(frac=1.0, random_state=9))):
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        split = make_split(
            FeatureSet("v", tmp_path, path, [], "s", ""),
            SplitConfig(protocol=protocol),
            Layout(tmp_path / name),
        )
        results.append({part: sorted(f["event_id"]) for part, f in _parts(split).items()})
    assert results[0] == results[1]


def test_idempotent_reuses_existing_split(feature_set: FeatureSet, layout: Layout) -> None:
    cfg = SplitConfig(protocol="leave_last_out")
    first = make_split(feature_set, cfg, layout)
    stamp = Path(first.train).stat().st_mtime_ns
    second = make_split(feature_set, cfg, layout)
    assert second == first
    assert Path(second.train).stat().st_mtime_ns == stamp
    assert Split.load(first.dir / "split.json") == first


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_part_keeps_only_history_entries_of_the_parts_it_may_see(
    protocol: str, feature_set: FeatureSet, layout: Layout
) -> None:
    """A train or valid row's list names only train events, a test row's only train and valid ones;
    in time order, as served, with the hidden entries cut out (the served list is the user's last
    events before the row)."""
    split = make_split(feature_set, SplitConfig(protocol=protocol), layout)
    parts = {name: frame.assign(part=name) for name, frame in _parts(split).items()}
    events = pd.concat(parts.values()).sort_values(["event_timestamp", "event_id"])
    served = pd.read_parquet(feature_set.examples).set_index("event_id")["recent_items"]
    visible = {"train": {"train"}, "valid": {"train"}, "test": {"train", "valid"}}
    cut = 0
    for name, frame in parts.items():
        for row in frame.itertuples():
            mine = events[
                (events["user_id"] == row.user_id) & (events["event_timestamp"] < row.event_timestamp)
            ]
            window = mine.tail(len(served[row.event_id]))
            assert window["item_id"].tolist() == list(served[row.event_id])
            expected = window.loc[window["part"].isin(visible[name]), "item_id"].tolist()
            assert list(row.recent_items) == expected, (name, row.event_id)
            cut += len(window) - len(expected)
    assert (cut > 0) == (protocol != "leave_last_out")  # the synthetic data has hidden entries to cut


def test_a_split_from_before_per_part_histories_is_cut_again_and_refused_by_training(
    feature_set: FeatureSet, layout: Layout
) -> None:
    from training.data import build_eval_inputs, build_example_set

    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    manifest = json.loads((split.dir / "split.json").read_text())
    del manifest["visible_histories"]
    (split.dir / "split.json").write_text(json.dumps(manifest))
    old = Split.load(split.dir / "split.json")
    assert not old.visible_histories
    with pytest.raises(ValueError, match="predates per-part histories"):
        build_eval_inputs(old, "valid")
    with pytest.raises(ValueError, match="predates per-part histories"):
        build_example_set(old, "train")
    again = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    assert again.visible_histories and again == split


def test_a_split_writes_attribute_tables_when_the_features_have_none(
    feature_set: FeatureSet, layout: Layout
) -> None:
    split = make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)
    examples = pd.read_parquet(feature_set.examples)
    assert feature_set.users is None and split.users is not None and split.items is not None
    users = pd.read_parquet(split.users)
    assert sorted(users["user_id"]) == sorted(examples["user_id"].astype(str).unique())
    assert users["user_id"].is_unique and {"age", "gender"} <= set(users.columns)
    assert pd.read_parquet(split.items)["item_id"].is_unique


def test_index_space_and_train_matrix(feature_set: FeatureSet, layout: Layout) -> None:
    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    examples = pd.read_parquet(feature_set.examples)
    item_ids = json.loads(Path(split.item_ids).read_text())
    assert item_ids == sorted(set(examples["item_id"]))
    index = SplitIndex.load(split)
    matrix = train_matrix(split)
    assert matrix.shape == (index.n_users, index.n_items + 1)
    assert matrix[:, 0].nnz == 0
    train = pd.read_parquet(split.train)
    pairs = set(zip(train["user_id"], train["item_id"], strict=True))
    assert matrix.nnz == len(pairs)
    user, item = next(iter(pairs))
    assert matrix[index.user_index[user], index.item_index[item]] == 1.0


def test_missing_columns_name_the_file(tmp_path: Path, layout: Layout) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"user_id": ["a"], "item_id": ["b"]}).to_parquet(path)
    with pytest.raises(ValueError, match="bad.parquet.*event_id"):
        make_split(FeatureSet("v", tmp_path, path, [], "s", ""), SplitConfig(), layout)
