"""The synthetic shop (ingestion.examples): its files, determinism and the structure it plants."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ingestion.examples import SEGMENT_BAND, SEGMENT_CATEGORIES, ShopFiles, write_shop

SEEDS = (7, 1, 2026)  # the default seed and two others: the thresholds must hold for all three


@functools.cache
def _shop(seed: int, root: str) -> ShopFiles:
    return write_shop(Path(root) / f"shop-{seed}", seed=seed)


@pytest.fixture(scope="module")
def shop_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("shops"))


@functools.cache
def _tables(seed: int, root: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    files = _shop(seed, root)
    read = functools.partial(pd.read_csv, dtype=str, keep_default_na=False)
    events, users, items = read(files.events), read(files.users), read(files.items)
    items["price"] = items["price"].astype(float)
    # The price band: tercile of the price within the item's category (warm and cold items alike).
    rank = items.groupby("category")["price"].rank(method="first") - 1
    size = items.groupby("category")["price"].transform("size")
    items["tier"] = (3 * rank // size).astype(int)
    joined = (
        events.assign(timestamp=events["timestamp"].astype(np.int64))
        .merge(users[["user_id", "segment"]], on="user_id", validate="many_to_one")
        .merge(items[["item_id", "category", "brand", "tier"]], on="item_id", validate="many_to_one")
    )
    return joined, users, items


def _signals(seed: int, root: str) -> dict[str, float]:
    events, users, items = _tables(seed, root)
    out: dict[str, float] = {}
    for segment, cats in SEGMENT_CATEGORIES.items():
        mine = events["segment"] == segment
        out[f"pref_share_{segment}"] = events.loc[mine, "category"].isin(cats).mean()
        out[f"pref_base_{segment}"] = events["category"].isin(cats).mean()  # all segments' events
        out[f"band_share_{segment}"] = (events.loc[mine, "tier"] == SEGMENT_BAND[segment]).mean()
    # Brand loyalty, on users with >= 10 events: the share of their events on their two most frequent
    # brands, and the share of the later half of their events on the top brand of the first half;
    # each against the same with brands shuffled among the events of one segment (which keeps the
    # segment's taste for categories and prices but removes the loyalty).
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    size = ordered.groupby("user_id")["item_id"].transform("size")
    position = ordered.groupby("user_id").cumcount()
    rng = np.random.default_rng(0)
    segments = ordered["segment"].to_numpy()
    shuffled = np.empty(len(ordered), dtype=object)
    shuffled[np.argsort(segments, kind="stable")] = ordered["brand"].to_numpy()[
        np.lexsort((rng.random(len(ordered)), segments))
    ]
    heavy = (size >= 10).to_numpy()
    for name, brands in (("brand", ordered["brand"].to_numpy()), ("null", shuffled)):
        frame = pd.DataFrame(
            {
                "user": ordered["user_id"].to_numpy(),
                "brand": brands,
                "early": (position < size // 2).to_numpy(),
            }
        )[heavy]
        counts = frame.groupby(["user", "brand"]).size().sort_values(ascending=False, kind="stable")
        top2 = counts.groupby(level=0).head(2).groupby(level=0).sum()
        out[f"top2_{name}"] = float((top2 / frame.groupby("user").size()).mean())
        early = (
            frame[frame["early"]]
            .groupby(["user", "brand"])
            .size()
            .sort_values(ascending=False, kind="stable")
        )
        favourite = early.groupby(level=0).head(1).reset_index().set_index("user")["brand"]
        late = frame[~frame["early"]]
        out[f"repeat_{name}"] = float(
            (late["brand"].to_numpy() == favourite.reindex(late["user"]).to_numpy()).mean()
        )
    # Sessions: consecutive events of a user within an hour vs across sessions.
    same_user = ordered["user_id"].eq(ordered["user_id"].shift())
    gap = ordered["timestamp"].diff()
    in_session = same_user & (gap < 3600)
    across = same_user & (gap >= 3600)
    for column in ("category", "brand"):
        same = ordered[column].eq(ordered[column].shift())
        out[f"session_same_{column}"] = same[in_session].mean()
        out[f"across_same_{column}"] = same[across].mean()
    counts = events["item_id"].value_counts()
    n_warm = len(items) - 20
    out["top10pct_share"] = counts.iloc[: n_warm // 10].sum() / len(events)
    ages = pd.to_numeric(users["age"], errors="coerce")
    by_segment = ages.groupby(users["segment"]).mean()
    out["age_premium_minus_budget"] = by_segment["premium"] - by_segment["budget"]
    return out


def test_files_columns_and_ids(shop_root):
    files = _shop(7, shop_root)
    for path in (files.events, files.users, files.items, files.schema, files.config):
        assert path.is_file() and path.is_absolute()
    assert files.events.read_text().splitlines()[0] == "user_id,item_id,timestamp,rating"
    assert files.users.read_text().splitlines()[0] == "user_id,segment,country,device,age"
    assert files.items.read_text().splitlines()[0] == "item_id,category,brand,price,tags,title"
    events, users, items = _tables(7, shop_root)
    assert len(events) == 60000 and len(users) == 2000 and len(items) == 1520
    assert events["user_id"].str.fullmatch(r"u\d{5}").all()
    assert events["item_id"].str.fullmatch(r"p\d{5}").all()
    assert users["user_id"].is_unique and items["item_id"].is_unique
    assert set(events["user_id"]) <= set(users["user_id"])
    assert (events["rating"] == "").all()  # implicit feedback
    ts = events["timestamp"]
    assert ts.between(1_704_067_200, 1_704_067_200 + 183 * 86400).all()
    assert ts.max() - ts.min() > 170 * 86400  # ~6 months
    assert not events.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert users["segment"].nunique() == 5 and users["country"].nunique() == 8
    assert set(users["device"]) == {"web", "ios", "android"}
    assert items["category"].nunique() == 12 and 50 <= items["brand"].nunique() <= 60
    assert (items.groupby("brand")["category"].nunique() <= 2).all()
    tags = items["tags"].str.split("|")
    assert tags.str.len().between(1, 4).all()
    assert 30 <= len({t for row in tags for t in row}) <= 50
    assert (items["price"] > 0).all()
    assert items["title"].str.split().str.len().between(3, 6).all()
    config = yaml.safe_load(files.config.read_text())
    assert config["source"] == {
        "kind": "events",
        "path": str(files.events),
        "users": str(files.users),
        "items": str(files.items),
        "name": "shop",
        "schema": str(files.schema),
    }
    assert config["split"] == {"protocol": "temporal"}


def test_deterministic_for_a_seed(tmp_path):
    a = write_shop(tmp_path / "a", n_users=300, n_items=200, n_events=5000, seed=3, cold_items=5)
    b = write_shop(tmp_path / "b", n_users=300, n_items=200, n_events=5000, seed=3, cold_items=5)
    c = write_shop(tmp_path / "c", n_users=300, n_items=200, n_events=5000, seed=4, cold_items=5)
    for name in ("events", "users", "items", "schema"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes(), name
    assert a.events.read_bytes() != c.events.read_bytes()


def test_schema_loads_with_the_pipeline_schema(shop_root):
    from pipeline.schema import DataSchema

    schema = DataSchema.load(_shop(7, shop_root).schema)
    assert schema.name == "shop"
    assert list(schema.user_features) == ["segment", "country", "device", "age"]
    assert list(schema.item_features) == ["category", "brand", "price", "tags", "title"]
    assert schema.user_features["age"].type == "numeric" and schema.user_features["age"].min == 13
    assert schema.item_features["tags"].type == "list" and schema.item_features["title"].type == "text"


def test_cold_items_have_no_events_and_share_attributes_with_popular_items(shop_root):
    events, _, items = _tables(7, shop_root)
    warm, cold = items.iloc[:-20], items.iloc[-20:]
    assert not events["item_id"].isin(cold["item_id"]).any()
    assert events["item_id"].isin(warm["item_id"]).all()
    counts = events["item_id"].value_counts()
    popular = warm.assign(n=warm["item_id"].map(counts).fillna(0))
    threshold = popular["n"].quantile(0.75)
    for row in cold.itertuples():
        peers = popular[(popular["brand"] == row.brand) & (popular["category"] == row.category)]
        assert peers["n"].max() >= threshold, row
        peer_tags = {t for tags in peers["tags"] for t in tags.split("|")}
        assert peer_tags & set(row.tags.split("|")), row


def test_invalid_and_missing_ages(shop_root):
    _, users, _ = _tables(7, shop_root)
    ages = pd.to_numeric(users["age"], errors="coerce")
    blank = users["age"] == ""
    invalid = (ages.isna() & ~blank) | (ages < 13) | (ages > 100)
    assert 0.003 <= invalid.mean() <= 0.01
    assert 0.01 <= blank.mean() <= 0.04


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_signal_is_measurable(seed, shop_root):
    s = _signals(seed, shop_root)
    for segment in SEGMENT_CATEGORIES:
        assert s[f"pref_share_{segment}"] >= 0.7, (segment, s)
        assert s[f"pref_share_{segment}"] >= 2.0 * s[f"pref_base_{segment}"], (segment, s)
        assert s[f"band_share_{segment}"] >= 0.55, (segment, s)  # against 1/3 by chance
    assert s["top2_brand"] >= s["top2_null"] + 0.12, s
    assert s["repeat_brand"] >= 1.5 * s["repeat_null"], s
    assert s["session_same_category"] >= s["across_same_category"] + 0.3, s
    assert s["session_same_brand"] >= s["across_same_brand"] + 0.15, s
    assert s["top10pct_share"] >= 0.5, s
    assert s["age_premium_minus_budget"] >= 15, s
