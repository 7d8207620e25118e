"""The features stage against a real Feast store (registry, SQLite online store, DuckDB offline store)
in a temporary RECFORGE_HOME: apply, materialise, point-in-time retrieval, no leakage, idempotence, and
one namespace per data version (a build on other data never changes another namespace's values)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for features_fixtures

from feast import FeatureStore  # noqa: E402
from feast.errors import SavedDatasetLocationAlreadyExists  # noqa: E402
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore  # noqa: E402
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage  # noqa: E402
from feast.repo_config import load_repo_config  # noqa: E402
from features_fixtures import EVENTS, interactions_frame, write_snapshot  # noqa: E402

from features.offline_store import (  # noqa: E402
    AsofDuckDBOfflineStore,
    AsofDuckDBOfflineStoreConfig,
    DuckDBQueryJob,
)
from features.store import (  # noqa: E402
    FeatureBuildError,
    _feast_env,
    build_features,
    example_schema,
    feature_store,
    load_definitions,
    online_item_features,
    online_user_features,
    repo_path,
    store_yaml,
)
from pipeline.config import FeatureConfig  # noqa: E402
from pipeline.duckdb_connection import connect  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.schema import resolve_schema  # noqa: E402

pytestmark = pytest.mark.integration

CFG = FeatureConfig(history_length=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """One real build shared by the tests of this module (Feast apply+materialise take a few seconds)."""
    home = tmp_path_factory.mktemp("recforge_home")
    layout = Layout(home)
    snapshot = write_snapshot(home / "data" / "synthetic")
    feature_set = build_features(snapshot, CFG, layout)
    examples = pd.read_parquet(feature_set.examples).set_index("event_id")
    return layout, snapshot, feature_set, examples


def test_examples_have_the_contract_columns_one_row_per_event(built) -> None:
    layout, snapshot, feature_set, examples = built
    import pyarrow.parquet as pq

    assert pq.read_schema(feature_set.examples).names == example_schema(resolve_schema(None)).names
    assert sorted(examples.index) == list(range(len(interactions_frame())))
    assert feature_set.feature_service == "recsys_training"
    assert set(feature_set.feature_views) == {
        "user_profile",
        "user_activity",
        "item_profile",
        "item_popularity",
    }
    for view in feature_set.feature_views:
        assert (layout.feast_offline(feature_set.namespace) / f"{view}.parquet").exists()
    assert feature_set.namespace == f"recforge_{snapshot.data_version}_h2"


def test_no_feature_value_from_the_event_or_later_reaches_its_example(built) -> None:
    _, _, _, ex = built
    # u1: i1@1 (4.0) -> i2@2 (2.0) -> i3@3, i4@3 (same instant) -> i5@5
    assert ex.loc[0, "user_interaction_count"] == 0 and list(ex.loc[0, "recent_items"]) == []
    assert pd.isna(ex.loc[0, "user_mean_rating"])
    assert ex.loc[1, "user_interaction_count"] == 1
    assert list(ex.loc[1, "recent_items"]) == ["i1"]  # never i2 (itself) or anything later
    assert ex.loc[1, "user_mean_rating"] == 4.0  # its own rating 2.0 is not in the mean
    # Two events at the same instant: neither sees the other.
    for event in (3, 4):
        assert ex.loc[event, "user_interaction_count"] == 2
        assert list(ex.loc[event, "recent_items"]) == ["i1", "i2"]
    assert list(ex.loc[6, "recent_items"]) == ["i3", "i4"]  # history_length=2, oldest first
    # Item side: u1 and u2 both took i2 at minute 2; neither counts the other.
    assert ex.loc[1, "item_interaction_count"] == 0 and ex.loc[2, "item_interaction_count"] == 0
    assert ex.loc[5, "item_interaction_count"] == 1 and ex.loc[5, "item_mean_rating"] == 4.0
    # Profiles are joined from the very first event on (stamped at the earliest event).
    assert ex.loc[0, "gender"] == "F" and ex.loc[0, "age"] == 31 and ex.loc[0, "title"] == "One"
    assert pd.isna(ex.loc[2, "age"])  # u2's age is unknown in the source


def test_online_store_holds_the_state_after_the_last_event(built) -> None:
    layout, _, feature_set, _ = built
    store = feature_store(layout, feature_set.namespace)
    users = online_user_features(store, ["u1", "u2", "nobody"])
    assert users["u1"]["user_interaction_count"] == 5
    assert users["u1"]["recent_items"] == ["i4", "i5"]
    assert users["u1"]["user_mean_rating"] == 3.0 and users["u1"]["occupation"] == "engineer"
    assert users["u2"]["recent_items"] == ["i2", "i1"]
    assert users["nobody"]["user_interaction_count"] is None and users["nobody"]["recent_items"] == []
    items = online_item_features(store, ["i2", "i3"], resolve_schema(None))
    assert items["i2"]["item_interaction_count"] == 2 and items["i2"]["genres"] == ["Comedy", "Drama"]
    assert items["i3"]["genres"] == [] and items["i3"]["release_year"] is None


def test_second_call_reuses_the_feature_set(built) -> None:
    layout, snapshot, feature_set, _ = built
    before = feature_set.examples.stat().st_mtime_ns
    again = build_features(snapshot, CFG, layout)
    assert again == feature_set
    assert feature_set.examples.stat().st_mtime_ns == before


def test_broken_snapshot_fails_before_touching_the_feature_state(built, tmp_path: Path) -> None:
    layout, snapshot, feature_set, _ = built
    store = feature_store(layout, feature_set.namespace)
    # A snapshot whose interactions file is broken fails before touching the live tables or registry.
    broken = write_snapshot(tmp_path / "broken", interactions=interactions_frame().drop(columns=["item_id"]))
    broken = type(broken)(
        **{
            **broken.to_dict(),
            "data_version": "broken",
            "interactions": broken.interactions,
            "users": broken.users,
            "items": broken.items,
            "quarantine": broken.quarantine,
        }
    )
    with pytest.raises(ValueError, match=r"interactions.parquet.*item_id"):
        build_features(broken, CFG, layout)
    view = feature_store(layout, feature_set.namespace).get_feature_view("user_activity")
    assert view.tags["recforge_data_version"] == snapshot.data_version
    assert online_user_features(store, ["u1"])["u1"]["user_interaction_count"] == 5
    assert build_features(snapshot, CFG, layout) == feature_set  # still up to date


def test_definitions_and_profiles_load() -> None:
    repo = repo_path(CFG)
    objects = load_definitions(repo, Path("/tmp/somewhere"), "recforge_v1_h2")
    names = {o.name for o in objects}
    assert {"user", "item", "recsys_training", "recsys_online", "user_activity"} <= names
    sources = [o for o in objects if type(o).__name__ == "FileSource"]
    assert all(s.path.startswith("/tmp/somewhere/feast/recforge_v1_h2/offline/") for s in sources)
    assert store_yaml(repo, "production").parent.name == "production"
    with pytest.raises(FeatureBuildError, match="no such Feast profile"):
        store_yaml(repo, "nope")


def test_production_profile_reads_everything_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RECFORGE_HOME": "/srv/recforge",
        "RECFORGE_FEAST_PROJECT": "recforge_v1_h50",
        "RECFORGE_REDIS": "redis.internal:6379",
        "RECFORGE_PG_USER": "feast",
        "RECFORGE_PG_PASSWORD": "s3cret",
        "RECFORGE_PG_HOST": "pg.internal",
        "RECFORGE_PG_PORT": "5432",
        "RECFORGE_PG_DB": "feast_registry",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    repo = repo_path(CFG)
    config = load_repo_config(repo, store_yaml(repo, "production"))
    assert config.project == "recforge_v1_h50"  # Redis keys and registry entries are per namespace
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "redis.internal:6379"
    assert config.registry.registry_type == "sql"
    assert config.registry.path == "postgresql+psycopg://feast:s3cret@pg.internal:5432/feast_registry"
    assert "s3cret" not in store_yaml(repo, "production").read_text()


def test_asof_offline_store_matches_feasts_stock_duckdb_join(built, tmp_path: Path) -> None:
    """The recforge ASOF point-in-time join returns exactly what Feast's own DuckDB join returns."""
    layout, _, feature_set, _ = built
    repo = repo_path(CFG)
    stock_yaml = tmp_path / "feature_store.yaml"
    stock_yaml.write_text(
        (repo / "feature_store.yaml")
        .read_text()
        .replace("features.offline_store.AsofDuckDBOfflineStore", "duckdb")
    )
    entity = interactions_frame()[["user_id", "item_id", "timestamp"]].rename(
        columns={"timestamp": "event_timestamp"}
    )
    entity = pd.concat(
        [entity, entity.assign(event_timestamp=entity["event_timestamp"] + pd.Timedelta("30s"))]
    )
    frames = []
    stores = (
        feature_store(layout, feature_set.namespace),
        _store_with_yaml(layout, feature_set.namespace, repo, stock_yaml),
    )
    for store in stores:
        df = store.get_historical_features(
            entity_df=entity, features=store.get_feature_service("recsys_training")
        ).to_df()
        df = df.sort_values(["user_id", "item_id", "event_timestamp"]).reset_index(drop=True)
        for column in ("recent_items", "genres"):
            df[column] = df[column].map(lambda v: list(v) if v is not None else [])
        frames.append(df[sorted(df.columns)])
    pd.testing.assert_frame_equal(frames[0], frames[1], check_dtype=False)


def _store_with_yaml(layout: Layout, namespace: str, repo: Path, yaml: Path) -> FeatureStore:
    with _feast_env(layout.home, namespace):
        return FeatureStore(repo_path=str(repo), fs_yaml_file=yaml)


def test_other_data_builds_its_own_namespace_and_a_failed_build_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features follow the champion: building (or failing to build) v2 never changes v1's values."""
    import features.store as store_module

    layout = Layout(tmp_path / "home")
    v1 = write_snapshot(tmp_path / "v1")
    first = build_features(v1, CFG, layout)
    v1_dir = layout.feast_namespace(first.namespace)
    offline_before = {p.name: p.read_bytes() for p in layout.feast_offline(first.namespace).glob("*.parquet")}
    online_before = online_user_features(feature_store(layout, first.namespace), ["u1", "u2"])

    v2 = write_snapshot(tmp_path / "v2", interactions=interactions_frame().iloc[:-2].reset_index(drop=True))
    assert v2.data_version != v1.data_version

    def explode(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full while writing examples")

    monkeypatch.setattr(store_module, "_write_examples", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        build_features(v2, CFG, layout)
    monkeypatch.undo()
    v2_namespace = store_module.namespace_for(v2.data_version, CFG)
    assert not (layout.features(v2_namespace) / "feature_set.json").exists()
    assert not list(layout.feast_namespace(v2_namespace).glob(".offline.*"))  # no temp leftovers

    second = build_features(v2, CFG, layout)
    assert second.namespace == v2_namespace != first.namespace
    assert (
        online_user_features(feature_store(layout, second.namespace), ["u1"])["u1"]["user_interaction_count"]
        == 4
    )
    # v1's namespace: same offline tables, same online values, still up to date.
    assert {
        p.name: p.read_bytes() for p in layout.feast_offline(first.namespace).glob("*.parquet")
    } == offline_before
    assert online_user_features(feature_store(layout, first.namespace), ["u1", "u2"]) == online_before
    assert build_features(v1, CFG, layout) == first
    assert v1_dir.is_dir() and len(pd.read_parquet(second.examples)) == len(interactions_frame()) - 2


def test_failed_rebuild_restores_the_namespace_and_leftovers_are_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild of a namespace that fails after its tables were swapped in puts the old ones back;
    temporary directories of a killed build are removed by the next build."""
    import features.store as store_module

    layout = Layout(tmp_path / "home")
    v1 = write_snapshot(tmp_path / "v1")
    first = build_features(v1, CFG, layout)
    offline = layout.feast_offline(first.namespace)
    offline_before = {p.name: p.read_bytes() for p in offline.glob("*.parquet")}
    leftover = layout.feast_namespace(first.namespace) / ".offline.tmp-999999999-deadbeef"
    leftover.mkdir()
    (layout.features(first.namespace) / "feature_set.json").unlink()  # forces a rebuild

    def explode(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full while writing examples")

    monkeypatch.setattr(store_module, "_write_examples", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        build_features(v1, CFG, layout)
    monkeypatch.undo()
    assert not leftover.exists()
    assert {p.name: p.read_bytes() for p in offline.glob("*.parquet")} == offline_before
    store = feature_store(layout, first.namespace)
    assert store.get_feature_view("user_activity").tags["recforge_data_version"] == v1.data_version
    assert online_user_features(store, ["u1"])["u1"]["user_interaction_count"] == 5
    assert build_features(v1, CFG, layout) == first  # rebuilt once the fault is gone


def test_materialisation_pull_matches_feasts_stock_pull(built) -> None:
    """The newest row per entity that materialisation writes online: the store's own DuckDB query
    (within its memory limit) returns what Feast's ibis version returns, for every view."""
    layout, _, feature_set, _ = built
    store = feature_store(layout, feature_set.namespace)
    start, end = pd.Timestamp("2023-12-31", tz="UTC"), pd.Timestamp("2024-01-01T00:04:30Z")
    for name in feature_set.feature_views:
        view = store.get_feature_view(name)
        source = view.batch_source
        args = (
            store.config,
            source,
            [c.name for c in view.entity_columns],
            [f.name for f in view.features],
            source.timestamp_field,
            source.created_timestamp_column or None,
            start.to_pydatetime(),
            end.to_pydatetime(),
        )
        ours = AsofDuckDBOfflineStore.pull_latest_from_table_or_query(*args)
        stock = DuckDBOfflineStore.pull_latest_from_table_or_query(*args)
        assert isinstance(ours, DuckDBQueryJob), name
        frames = []
        for job in (ours, stock):
            df = job.to_arrow().to_pandas()
            key = df.columns[0]
            df[source.timestamp_field] = pd.to_datetime(df[source.timestamp_field], utc=True)
            frames.append(df.sort_values(key).reset_index(drop=True).astype(str))
        pd.testing.assert_frame_equal(frames[0], frames[1], obj=name)
        if name == "user_activity":  # the window ends at 4:30: u1 as of minute 3 (i1, i2 before it)
            u1 = frames[0][frames[0]["user_id"] == "u1"].iloc[0]
            assert u1["user_interaction_count"] == "2"


@pytest.mark.parametrize("profile", ["embedded", "production"])
def test_both_profiles_materialise_newest_rows_in_batches(profile: str) -> None:
    """Feast's defaults pull every row of the window and convert them to protos at once: far more
    memory than a large log leaves (docs/scaling.md). Both profiles opt out."""
    config = yaml.safe_load(store_yaml(repo_path(), profile).read_text())
    assert config["materialization"]["pull_latest_features"] is True
    assert 0 < config["materialization"]["online_write_batch_size"] <= 100_000


@pytest.mark.parametrize("created", ["created", None])
def test_newest_row_per_entity_breaks_ties_and_honours_the_window_like_feast(
    built, tmp_path: Path, created: str | None
) -> None:
    """Entities with rows after the window, two rows at their newest timestamp (created column or not)
    and a two-column key: the store's newest-row query picks what Feast's stock pull picks."""
    layout, _, feature_set, _ = built
    store = feature_store(layout, feature_set.namespace)
    t = pd.Timestamp("2024-01-01", tz="UTC")
    minute = pd.Timedelta(minutes=1)
    rows = pd.DataFrame(
        {
            "shop": ["a", "a", "a", "a", "b", "b", "a"],
            "user_id": ["u1", "u1", "u1", "u2", "u1", "u1", "u2"],
            "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            "event_timestamp": [t, t + minute, t + minute, t, t, t + 9 * minute, t + 9 * minute],
            "created": [t, t, t + minute, t, t, t, t],
        }
    )
    if created is None:  # without a created column, only untied entities have one right answer
        rows = rows.drop(columns="created").drop(index=1)
    rows = rows.astype({c: "datetime64[us, UTC]" for c in ("event_timestamp", "created") if c in rows})
    path = tmp_path / "table.parquet"
    rows.to_parquet(path, index=False)
    source = FileSource(
        path=str(path), timestamp_field="event_timestamp", created_timestamp_column=created or ""
    )
    args = (
        store.config,
        source,
        ["shop", "user_id"],
        ["value"],
        "event_timestamp",
        created,
        (t - minute).to_pydatetime(),
        (t + 5 * minute).to_pydatetime(),
    )
    got = []
    for pull in (AsofDuckDBOfflineStore, DuckDBOfflineStore):
        df = pull.pull_latest_from_table_or_query(*args).to_arrow().to_pandas()
        got.append(df.sort_values(["shop", "user_id"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(got[0], got[1])
    # (a, u1): the row created last at minute 1; (b, u1): its minute-9 row lies outside the window.
    assert got[0]["value"].tolist() == [3.0, 4.0, 5.0]


def test_persist_streams_the_point_in_time_result_to_parquet(built, tmp_path: Path) -> None:
    """``persist`` writes, in entity-row order, exactly what ``to_arrow`` returns, and will not
    overwrite a file unless asked."""
    layout, _, feature_set, _ = built
    store = feature_store(layout, feature_set.namespace)
    entity = interactions_frame()[["user_id", "item_id", "timestamp"]].rename(
        columns={"timestamp": "event_timestamp"}
    )
    job = store.get_historical_features(
        entity_df=entity, features=store.get_feature_service("recsys_training")
    )
    assert isinstance(job, DuckDBQueryJob)
    target = tmp_path / "training_set.parquet"
    job.persist(SavedDatasetFileStorage(path=str(target)))
    persisted, fetched = pq.read_table(target), job.to_arrow()
    assert persisted.num_rows == len(entity)
    assert persisted.to_pylist() == fetched.to_pylist()
    assert [r["item_id"] for r in persisted.to_pylist()] == list(entity["item_id"])
    assert not list(tmp_path.glob(".duckdb-spill-*"))  # its spill directory is gone
    with pytest.raises(SavedDatasetLocationAlreadyExists):
        job.persist(SavedDatasetFileStorage(path=str(target)))


def test_events_sharing_user_item_and_instant_each_get_their_example(tmp_path: Path) -> None:
    """Feast collapses duplicate entity rows; each event still gets one example, with the features of
    its (user, item, instant)."""
    events = [*EVENTS, ("u2", "i1", 4, 2.0)]  # a second u2-i1 event at minute 4
    snapshot = write_snapshot(tmp_path / "data" / "dup", interactions=interactions_frame(events))
    feature_set = build_features(snapshot, CFG, Layout(tmp_path / "home"))
    examples = pd.read_parquet(feature_set.examples)
    assert sorted(examples["event_id"]) == list(range(len(events)))
    in_time_order = examples.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(examples, in_time_order)  # the order the split streams them in
    twins = examples[(examples["user_id"] == "u2") & (examples["item_id"] == "i1")]
    assert len(twins) == 2 and list(twins["rating"]) == [4.0, 2.0]
    assert [list(v) for v in twins["recent_items"]] == [["i2"], ["i2"]]
    assert list(twins["user_interaction_count"]) == [1, 1]


def test_duckdb_connections_keep_the_memory_limit() -> None:
    con = connect("300MB")
    try:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    finally:
        con.close()
    assert limit.replace(" ", "").upper() in {"300.0MB", "286.1MIB", "300MB"}, limit
    assert AsofDuckDBOfflineStoreConfig(memory_limit="2GB").memory_limit == "2GB"
