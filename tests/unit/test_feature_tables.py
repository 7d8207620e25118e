"""The offline feature tables (pure pandas/Arrow): history strictly before each timestamp, no leakage."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for features_fixtures

from features_fixtures import at, interactions_frame, items_frame, users_frame, write_snapshot  # noqa: E402

import features.tables as tables_module  # noqa: E402
from features.tables import (  # noqa: E402
    ITEM_POPULARITY_SCHEMA,
    USER_ACTIVITY_SCHEMA,
    FeatureTableError,
    SnapshotFrames,
    build_tables,
    feature_views,
    item_popularity_table,
    profile_schema,
    read_snapshot,
    user_activity_table,
)
from pipeline.schema import DataSchema, resolve_schema  # noqa: E402

MOVIELENS = resolve_schema(None)

US = pd.Timedelta(microseconds=1)


def _frames() -> SnapshotFrames:
    return SnapshotFrames(interactions_frame(), users_frame(), items_frame())


def _rows(table, key: str, entity: str) -> pd.DataFrame:
    df = table.to_pandas()
    return df[df[key] == entity].reset_index(drop=True)


def test_schemas_match_the_feature_views() -> None:
    tables = build_tables(_frames(), history_length=2, schema=MOVIELENS)
    expected = {
        "user_profile": profile_schema("user", MOVIELENS),
        "user_activity": USER_ACTIVITY_SCHEMA,
        "item_profile": profile_schema("item", MOVIELENS),
        "item_popularity": ITEM_POPULARITY_SCHEMA,
    }
    assert list(tables) == list(expected)
    for name, table in tables.items():
        assert table.schema == expected[name], name
    assert tables["user_profile"].schema.names == [
        "user_id",
        "age",
        "gender",
        "occupation",
        "event_timestamp",
    ]
    profile = tables["user_profile"].to_pandas().set_index("user_id")
    assert profile.loc["u1", "age"] == 31.0 and np.isnan(profile.loc["u2", "age"])  # numeric -> float


def test_the_schema_decides_the_profile_views() -> None:
    """An attribute is an edit of the schema: a new column flows into the profile table; an entity
    without attributes gets no profile view."""
    shop = DataSchema.model_validate(
        {"user_features": {"gender": {"type": "categorical"}}, "item_features": {}}
    )
    tables = build_tables(_frames(), history_length=2, schema=shop)
    assert list(tables) == ["user_profile", "user_activity", "item_popularity"] == list(feature_views(shop))
    assert tables["user_profile"].schema.names == ["user_id", "gender", "event_timestamp"]


def test_user_activity_holds_only_strictly_earlier_events() -> None:
    u1 = _rows(user_activity_table(interactions_frame(), history_length=2), "user_id", "u1")
    # u1: i1@1 (4.0), i2@2 (2.0), i3@3 (3.0) and i4@3 (1.0) at the same instant, i5@5 (5.0)
    assert list(u1["event_timestamp"]) == [at(1), at(2), at(3), at(5), at(5) + US]
    assert list(u1["user_interaction_count"]) == [0, 1, 2, 4, 5]
    assert np.isnan(u1["user_mean_rating"][0])
    assert list(u1["user_mean_rating"][1:]) == [4.0, 3.0, 2.5, 3.0]
    # Two events at the same instant share one row that includes neither of them.
    assert [list(x) for x in u1["recent_items"]] == [[], ["i1"], ["i1", "i2"], ["i3", "i4"], ["i4", "i5"]]


def test_final_row_is_just_after_the_last_event_and_holds_everything() -> None:
    table = user_activity_table(interactions_frame(), history_length=50).to_pandas()
    last = table.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    assert list(last.loc["u1", "recent_items"]) == ["i1", "i2", "i3", "i4", "i5"]
    assert last.loc["u2", "event_timestamp"] == at(4) + US
    assert last.loc["u3", "user_interaction_count"] == 1
    assert np.isnan(last.loc["u3", "user_mean_rating"])  # u3's only event has no rating


def test_history_length_keeps_the_newest_items_oldest_first() -> None:
    u1 = _rows(user_activity_table(interactions_frame(), history_length=1), "user_id", "u1")
    assert [list(x) for x in u1["recent_items"]] == [[], ["i1"], ["i2"], ["i4"], ["i5"]]


def test_item_popularity_counts_earlier_events_only() -> None:
    pop = item_popularity_table(interactions_frame()).to_pandas()
    i2 = pop[pop["item_id"] == "i2"]
    # u1 and u2 both took i2 at minute 2: neither sees the other.
    assert list(i2["item_interaction_count"]) == [0, 2]
    assert list(i2["event_timestamp"]) == [at(2), at(2) + US]
    assert list(i2["item_mean_rating"])[1] == 3.5


def test_profiles_stamped_at_the_earliest_event_with_nulls_kept() -> None:
    tables = build_tables(_frames(), history_length=2, schema=MOVIELENS)
    users = tables["user_profile"].to_pandas()
    assert set(users["event_timestamp"]) == {at(1)}
    assert users.set_index("user_id").loc["u2", "age"] is pd.NA or pd.isna(
        users.set_index("user_id").loc["u2", "age"]
    )
    items = tables["item_profile"].to_pandas().set_index("item_id")
    assert list(items.loc["i2", "genres"]) == ["Comedy", "Drama"]


def test_ids_only_attribute_tables_give_null_features() -> None:
    frames = SnapshotFrames(
        interactions_frame(), pd.DataFrame({"user_id": ["u1"]}), pd.DataFrame({"item_id": ["i1"]})
    )
    tables = build_tables(frames, history_length=2, schema=MOVIELENS)
    assert tables["user_profile"].column("age").null_count == 1
    assert tables["item_profile"].column("genres").null_count == 1


def test_read_snapshot_names_the_file_and_column(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path, interactions=interactions_frame().drop(columns=["rating"]))
    with pytest.raises(FeatureTableError, match=r"interactions.parquet.*rating"):
        read_snapshot(snap.interactions, snap.users, snap.items)


def test_vectorised_build_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    inter = pd.DataFrame(
        {
            "event_id": np.arange(n),
            "user_id": rng.integers(0, 2_000, n).astype(str),
            "item_id": rng.integers(0, 5_000, n).astype(str),
            "timestamp": pd.to_datetime(rng.integers(0, 10**8, n), unit="s", utc=True).as_unit("us"),
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )
    started = time.perf_counter()
    table = user_activity_table(inter, history_length=50)
    item_popularity_table(inter)
    assert time.perf_counter() - started < 10
    # Spot-check one user's row against a direct computation.
    row = table.slice(1234, 1).to_pylist()[0]
    earlier = inter[(inter.user_id == row["user_id"]) & (inter.timestamp < row["event_timestamp"])]
    earlier = earlier.sort_values(["timestamp", "event_id"])
    assert row["user_interaction_count"] == len(earlier)
    assert row["recent_items"] == list(earlier.item_id)[-50:]


def test_user_activity_built_in_blocks_equals_the_whole_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of history rows (what keeps the table's memory bounded) join up to the same table,
    in memory and as written, whatever the block size."""
    whole = user_activity_table(interactions_frame(), history_length=2)
    monkeypatch.setattr(tables_module, "HISTORY_BATCH_VALUES", 4)  # two rows per block of 2-item lists
    batched = tables_module.user_activity_batches(interactions_frame(), history_length=2)
    assert batched.batch_rows == 2 and batched.num_rows == whole.num_rows
    assert len(list(batched.batches())) == -(-whole.num_rows // 2)
    assert batched.read_all().equals(whole)
    tables_module.write_tables({"user_activity": batched}, tmp_path)
    written = pq.read_table(tmp_path / "user_activity.parquet")
    assert written.schema == USER_ACTIVITY_SCHEMA and written.equals(whole)
    assert pq.ParquetFile(tmp_path / "user_activity.parquet").metadata.num_row_groups == len(
        list(batched.batches())
    )


def test_snapshot_ids_are_read_as_arrow_strings(tmp_path: Path) -> None:
    """Ids are Arrow-backed (a few bytes each), not Python objects: the tables of a large log fit."""
    snap = write_snapshot(tmp_path)
    frames = read_snapshot(snap.interactions, snap.users, snap.items)
    assert frames.interactions["user_id"].dtype == tables_module.ID_STRING
    assert frames.interactions["item_id"].dtype == tables_module.ID_STRING
    assert list(frames.interactions["user_id"][:2]) == ["u1", "u1"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distinct_keys_number_events_like_a_groupby_in_order_of_first_appearance(seed: int) -> None:
    """Repeated (user, item, time) keys share a key row; key rows are numbered by first appearance."""
    from features.store import distinct_keys, event_table

    rng = np.random.default_rng(seed)
    n = 2_000
    frame = pd.DataFrame(
        {
            "event_id": rng.permutation(n),
            "user_id": rng.integers(0, 30, n).astype(str),
            "item_id": rng.integers(0, 20, n).astype(str),
            "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 5, n), "s"),
            "rating": rng.random(n),
        }
    )
    ordered = frame.sort_values("event_id").reset_index(drop=True)
    expected = ordered.groupby(["user_id", "item_id", "timestamp"], sort=False).ngroup().to_numpy()
    key_row, first = distinct_keys(event_table(frame))
    assert expected.max() + 1 < n  # the data does repeat keys
    np.testing.assert_array_equal(key_row, expected)
    np.testing.assert_array_equal(first, np.unique(expected, return_index=True)[1])
