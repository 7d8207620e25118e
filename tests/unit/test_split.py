"""Split protocols: disjoint, complete, per-protocol invariants, determinism, idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import FeatureSet, Split
from pipeline.config import SplitConfig
from pipeline.layout import Layout
from training.split import SplitIndex, interaction_matrix, make_split, read_part, train_matrix

PROTOCOLS = ["temporal", "leave_last_out", "random_holdout"]


def _parts(split: Split) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(getattr(split, name)) for name in ("train", "valid", "test")}


def _split_of(examples: pd.DataFrame, protocol: str, directory: Path) -> Split:
    """The split of ``examples`` written as a Parquet file in ``directory``."""
    directory.mkdir(parents=True)
    path = directory / "examples.parquet"
    examples.to_parquet(path, index=False)
    return make_split(
        FeatureSet("v", directory, path, [], "s", ""), SplitConfig(protocol=protocol), Layout(directory)
    )


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
        split = _split_of(frame, protocol, tmp_path / name)
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


def _hidden_entries_removed_row_by_row(rows: pd.DataFrame, events: pd.DataFrame) -> list[list[str] | None]:
    """The per-row definition the vectorised filter must match: a row with a hidden event of its user
    strictly before it loses the entries whose event is hidden when its list lines up with the user's
    last events before it, else every item of the user's hidden events; other rows keep their list."""
    events = events.sort_values(["user_id", "event_timestamp", "event_id"], kind="stable")
    out: list[list[str] | None] = []
    for user, stamp, recent in zip(
        rows["user_id"], rows["event_timestamp"], rows["recent_items"], strict=True
    ):
        mine = events[events["user_id"] == user]
        earlier = mine[mine["event_timestamp"] < stamp]
        if not earlier["hidden"].any():
            out.append(None if recent is None else list(recent))
            continue
        recent = list(recent) if recent is not None else []
        window = earlier.tail(len(recent))
        if len(window) == len(recent) and window["item_id"].tolist() == recent:
            out.append([i for i, h in zip(recent, window["hidden"], strict=True) if not h])
        else:
            gone = set(mine.loc[mine["hidden"], "item_id"])
            out.append([i for i in recent if i not in gone])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_history_filter_matches_the_row_by_row_definition(seed: int) -> None:
    """Ties in time, re-watched items, lists that do not line up with the log and null lists: the
    vectorised filter agrees with the per-row definition on every row."""
    from training.split import without_hidden_events

    rng = np.random.default_rng(seed)
    n = 400
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 12, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 15, n)],  # few items: re-watches
            "event_timestamp": t0 + pd.to_timedelta(rng.integers(0, 60, n), unit="h"),  # many ties
            "event_id": rng.permutation(n),
            "hidden": rng.random(n) < 0.3,
        }
    )
    ordered = events.sort_values(["user_id", "event_timestamp", "event_id"], kind="stable")
    rows = events.sample(frac=1.0, random_state=seed).reset_index(drop=True)[["user_id", "event_timestamp"]]
    recent: list[list[str] | None] = []
    for user, stamp in zip(rows["user_id"], rows["event_timestamp"], strict=True):
        earlier = ordered[(ordered["user_id"] == user) & (ordered["event_timestamp"] < stamp)][
            "item_id"
        ].tolist()
        served = earlier[-int(rng.integers(0, 6)) :] if earlier else []
        kind = rng.random()
        if kind < 0.1:
            recent.append(None)
        elif kind < 0.2 and served:  # not this log's list: an entry replaced
            recent.append([*served[:-1], "i99"])
        else:
            recent.append(served)
    rows["recent_items"] = recent
    got = without_hidden_events(rows, events).to_pylist()
    assert got == _hidden_entries_removed_row_by_row(rows, events)
    assert any(g is not None and r is not None and len(g) < len(r) for g, r in zip(got, recent, strict=True))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_streamed_split_is_the_same_in_any_batches_and_file_order(
    protocol: str, make_examples, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in (time, event_id) order is streamed as it lies, any other is sorted by DuckDB; rows come
    a batch at a time: the parts are the same, row for row and column for column, whichever way."""
    import training.split as split_module

    sorting = split_module.connection
    examples = make_examples(seed=11)
    by_time = examples.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    written = {}
    for name, frame, batch_rows in (
        ("shuffled", examples, 1 << 18),
        ("by-time", by_time, 1 << 18),
        ("small-batches", examples, 7),
    ):
        monkeypatch.setattr(split_module, "SPLIT_BATCH_ROWS", batch_rows)
        # A file in time order is read as it lies: no DuckDB sort (its connection is not even there).
        monkeypatch.setattr(split_module, "connection", None if name == "by-time" else sorting)
        split = _split_of(frame, protocol, tmp_path / name)
        written[name] = {part: pd.read_parquet(getattr(split, part)) for part in ("train", "valid", "test")}
    for name in ("by-time", "small-batches"):
        for part, frame in written[name].items():
            pd.testing.assert_frame_equal(frame, written["shuffled"][part])
    train = written["shuffled"]["train"]
    assert _key(train) == sorted(_key(train))  # each part in (time, event_id) order


def _visible_histories_row_by_row(recent, users, index, visible, length):
    """The definition: each row's known, visible items, oldest first, the newest ``length`` of them
    right-aligned (0 = padding)."""
    out = np.zeros((len(recent), length), dtype=np.int64)
    dense = visible.toarray()
    for row, items in enumerate(recent):
        codes = [index.item_index.get(str(i), 0) for i in (items or [])]
        kept = [c for c in codes if c > 0 and dense[users[row], c] > 0]
        kept = kept[-length:] if length > 0 else []
        if kept:
            out[row, length - len(kept) :] = kept
    return out


@pytest.mark.parametrize("seed", range(4))
def test_visible_histories_match_the_row_by_row_definition(seed: int, monkeypatch) -> None:
    """Null and empty lists, unknown ids, items the user may not see, lists longer than the window,
    blocks of rows smaller than the input, Arrow or pandas input: the arrays agree with the per-row
    definition, and the int32 table holds the same indices."""
    import pyarrow as pa
    import scipy.sparse as sp

    import training.data as data

    rng = np.random.default_rng(seed)
    index = SplitIndex([f"i{i}" for i in range(30)], [f"u{u}" for u in range(8)])
    visible = sp.csr_matrix((rng.random((8, 31)) < 0.5).astype(np.float32))
    n = 300
    users = rng.integers(0, 8, n)
    recent: list[list[str] | None] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1:
            recent.append(None)
        elif kind < 0.2:
            recent.append([])
        else:
            recent.append(
                [f"i{i}" if i < 30 else "unknown" for i in rng.integers(0, 33, rng.integers(1, 25))]
            )
    monkeypatch.setattr(data, "HISTORY_BLOCK_ROWS", 64)  # several blocks, the last one short
    arrow = pa.chunked_array([pa.array(recent[:100]), pa.array(recent[100:])])
    for length in (0, 1, 5, 40):
        expected = _visible_histories_row_by_row(recent, users, index, visible, length)
        for given in (arrow, pd.Series(recent, dtype=object)):
            np.testing.assert_array_equal(
                data.visible_histories(given, users, index, visible, length), expected
            )
        narrow = data.visible_histories(arrow, users, index, visible, length, dtype=np.int32)
        assert narrow.dtype == np.int32
        np.testing.assert_array_equal(narrow, expected)
    assert (expected[:, -1] > 0).sum() > n // 2  # the test data does keep histories


@pytest.mark.parametrize("part", ["train", "test"])
def test_example_histories_are_read_in_blocks_in_the_parts_order_whatever_the_files(
    part: str, feature_set: FeatureSet, layout: Layout, monkeypatch
) -> None:
    """build_example_set streams a part's recent_items in blocks of file rows and places each block's
    histories at its rows' places in read_part's (time, event_id) order: a part file in that order and
    the same rows shuffled give the same examples, each history the row-by-row definition."""
    import training.data as data

    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    monkeypatch.setattr(data, "HISTORY_BLOCK_ROWS", 37)  # many blocks, the last one short
    length = 5
    as_written = data.build_example_set(split, part, history_length=length)
    path = Path(getattr(split, part))
    rows = pd.read_parquet(path)
    assert len(rows) > 3 * 37
    rows.sample(frac=1.0, random_state=7).to_parquet(path, index=False)  # no longer in time order
    shuffled = data.build_example_set(split, part, history_length=length)

    ordered = read_part(split, part)
    index = SplitIndex.load(split)
    seen = ["train"] if part == "train" else ["train", "valid"]
    visible = interaction_matrix(pd.concat([read_part(split, p) for p in seen]), index)
    expected = _visible_histories_row_by_row(
        [None if r is None else list(r) for r in ordered["recent_items"]],
        index.users_of(ordered),
        index,
        visible,
        length,
    )
    assert (expected[:, -1] > 0).sum() > len(ordered) // 2  # the histories are not all padding
    for examples in (as_written, shuffled):
        np.testing.assert_array_equal(examples.users, index.users_of(ordered))
        np.testing.assert_array_equal(examples.items, index.items_of(ordered))
        np.testing.assert_array_equal(examples.history, expected)
        assert examples.history.dtype == np.int32


@pytest.mark.parametrize(("part", "max_users"), [("valid", None), ("valid", 7), ("test", None)])
def test_evaluation_histories_are_each_users_earliest_list_read_in_blocks_whatever_the_file(
    part: str, max_users: int | None, feature_set: FeatureSet, layout: Layout, monkeypatch
) -> None:
    """build_eval_inputs reads only each evaluated user's earliest recent_items list of the part, in
    blocks of file rows: a part file in (time, event_id) order and the same rows shuffled give each user
    the row-by-row definition of that list, and the truth of all the user's rows of the part."""
    import training.data as data

    split = make_split(feature_set, SplitConfig(protocol="random_holdout"), layout)
    monkeypatch.setattr(data, "HISTORY_BLOCK_ROWS", 37)  # many blocks, the last one short
    length = 5
    as_written = data.build_eval_inputs(split, part, length, max_users=max_users, seed=3)
    path = Path(getattr(split, part))
    rows = pd.read_parquet(path)
    assert len(rows) > 3 * 37
    rows.sample(frac=1.0, random_state=7).to_parquet(path, index=False)  # no longer in time order
    shuffled = data.build_eval_inputs(split, part, length, max_users=max_users, seed=3)

    ordered = read_part(split, part)
    index = SplitIndex.load(split)
    seen = ["train"] if part == "valid" else ["train", "valid"]
    visible = interaction_matrix(pd.concat([read_part(split, p) for p in seen]), index)
    users = index.users_of(ordered)
    earliest = {u: row for row, u in reversed(list(enumerate(users)))}  # first row of each user
    for inputs in (as_written, shuffled):
        chosen = inputs.users.numpy()
        assert len(chosen) == (max_users or len(earliest)) and (np.diff(chosen) > 0).all()
        first = [earliest[u] for u in chosen]
        expected = _visible_histories_row_by_row(
            [list(ordered["recent_items"][row]) for row in first], chosen, index, visible, length
        )
        assert (expected[:, -1] > 0).sum() > len(chosen) // 2  # the histories are not all padding
        np.testing.assert_array_equal(inputs.history.numpy(), expected)
        truth = interaction_matrix(ordered, index)[chosen]
        assert (inputs.truth != truth).nnz == 0
    np.testing.assert_array_equal(as_written.users, shuffled.users)


@pytest.mark.parametrize("side", ["left", "right"])
def test_search_sorted_gives_numpys_positions_for_needles_in_any_order(side: str) -> None:
    from training.split import search_sorted

    rng = np.random.default_rng(3)
    haystack = np.sort(rng.integers(0, 50, 400))  # many repeats: left and right differ
    needles = rng.integers(-5, 55, 1000)  # out of order, with repeats and values outside the haystack
    expected = np.searchsorted(haystack, needles, side=side)
    np.testing.assert_array_equal(search_sorted(haystack, needles, side=side), expected)
    order = np.argsort(needles, kind="stable")
    np.testing.assert_array_equal(search_sorted(haystack, needles, side=side, order=order), expected)
    assert search_sorted(haystack, needles[:0], side=side).shape == (0,)
