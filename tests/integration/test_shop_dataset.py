"""A dataset shaped like a shop, not MovieLens, through the real pipeline: its schema alone decides the
validated columns, the Feast views, the model inputs, the service's request model and the drift columns.

``recforge example shop`` writes the data (segments, countries, devices; categories, brands, prices,
tags, titles; new items without events). One ``run_all`` of the two-tower model goes through every
stage (ingest, validation, Feast, split, training, evaluation, gate, package, promote, drift); the
checks then read what each stage made of the schema. The attribute-aware models must use the planted
signal: items new to the catalogue (attributes, no events) rank high for the users who bought items
like them, and do not when the attributes are taken away.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from features.store import feature_store
from ingestion.examples import write_shop
from orchestration import stages
from pipeline.artifacts import Split
from pipeline.config import TrainerConfig
from pipeline.run_index import RunIndex
from pipeline.schema import load_schema
from serving.request_models import attribute_model
from training.artifact import load_model_artifact
from training.attributes import attributes_for
from training.models import build_model
from training.train import train_model

pytestmark = pytest.mark.integration

EPOCHS = 4


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    root = tmp_path_factory.mktemp("shop")
    files = write_shop(root / "data", n_users=600, n_items=400, n_events=18000, cold_items=12, seed=7)
    config = root / "pipeline.yaml"
    config.write_text(
        files.config.read_text()
        + f"trainer: {{max_epochs: {EPOCHS}, patience: {EPOCHS}, num_threads: 1}}\n"
        + "gate: {build_bento: false}\nmonitoring: {max_users: 200}\n"
    )
    patch = pytest.MonkeyPatch()
    patch.setenv("RECFORGE_HOME", str(root / "home"))
    patch.setenv("RECFORGE_CONFIG", str(config))
    patch.setenv("BENTOML_HOME", str(root / "home" / "bentoml"))
    request.addfinalizer(patch.undo)
    _, decision = stages.run_all("twotower", "shop")
    cfg, layout = stages.context()
    record = RunIndex.for_layout(layout).run("twotower/shop")
    return files, layout, record, decision


def test_the_schema_reaches_validation_feast_and_the_model(shop) -> None:
    files, layout, record, decision = shop
    assert decision.promoted, decision.reason
    snapshot = json.loads((layout.run("twotower", "shop") / "snapshot.json").read_text())
    # ~0.5 % of the users' ages are invalid: quarantined as values, their users and events kept.
    assert snapshot["values_quarantined"] > 0 and snapshot["rows_quarantined"] == 0
    assert set(snapshot["quarantine_reasons"]) <= {"age_not_a_number", "age_out_of_range"}
    items = pd.read_parquet(snapshot["items"]).set_index("item_id")
    assert list(items.columns) == ["category", "brand", "price", "tags", "title"]
    assert isinstance(items["tags"].iloc[0], list | np.ndarray) and items["price"].dtype == "float64"

    store = feature_store(layout, record.feature_namespace)
    fields = {f.name: str(f.dtype) for f in store.get_feature_view("item_profile").features}
    assert fields == {"category": "String", "brand": "String", "price": "Float64", "tags": "Array(String)",
                      "title": "String"}  # fmt: skip
    assert [f.name for f in store.get_feature_view("user_profile").features] == [
        "segment",
        "country",
        "device",
        "age",
    ]

    artifact = load_model_artifact(Path(record.artifact_dir))
    assert [f.name for f in artifact.attributes.items.fields] == [
        "category",
        "brand",
        "price",
        "tags",
        "title",
    ]
    assert artifact.module.user_attributes.names == ["segment", "country", "device", "age"]
    request = attribute_model("UserFeatures", load_schema(files.schema).user_features)
    assert request(segment="premium", age=41).model_dump(exclude_none=True) == {
        "segment": "premium",
        "age": 41.0,
    }
    with pytest.raises(ValueError, match="extra"):
        request(segmnet="premium")  # a typo is refused, not ignored


def test_drift_reports_monitor_the_shop_columns(shop) -> None:
    _, layout, _, _ = shop
    drift = json.loads((layout.run("twotower", "shop") / "drift.json").read_text())
    assert {"segment", "country", "device", "age", "category", "brand", "price", "primary_tags"} <= set(
        drift["data_columns"]
    )
    assert {"item_category", "item_brand", "item_price", "item_tags"} <= set(drift["prediction_columns"])


def _cold_item_lifts(module: torch.nn.Module, split: Split, items: pd.DataFrame) -> list[float]:
    """For each item without training events: how much higher it ranks (score percentile among all
    items, per user) for users who bought an item of the same category and brand than for users who
    never bought that category. 0 = the model cannot tell them apart (a shared "unknown item" row
    ranks the same for everyone), > 0 = it places the new item from its attributes."""
    from training.split import SplitIndex, train_matrix

    index = SplitIndex.load(split)
    matrix = train_matrix(split).tocsr()
    known = [i for i in index.item_ids if i in items.index]
    cold = [i for i in known if matrix[:, index.item_index[i]].nnz == 0]
    category = items["category"]
    key = category + "/" + items["brand"]
    module.eval()
    rng = np.random.default_rng(0)
    lifts = []
    for item in cold:
        similar = [index.item_index[i] for i in known if key[i] == key[item] and i != item]
        same_category = [index.item_index[i] for i in known if category[i] == category[item]]
        buyers = np.unique(matrix[:, similar].nonzero()[0])
        others = np.setdiff1d(np.arange(index.n_users), np.unique(matrix[:, same_category].nonzero()[0]))
        if len(buyers) < 5 or len(others) < 5:
            continue
        users = np.concatenate([rng.permutation(buyers)[:50], rng.permutation(others)[:50]])
        with torch.no_grad():
            scores = module.full_sort_predict(
                torch.from_numpy(users), torch.zeros(len(users), 1, dtype=torch.long)
            )
        scores = scores[:, 1:]
        column = index.item_index[item] - 1
        percentile = (scores < scores[:, column : column + 1]).float().mean(dim=1).numpy()
        n_buyers = min(len(buyers), 50)
        lifts.append(float(percentile[:n_buyers].mean() - percentile[n_buyers:].mean()))
    return lifts


def test_new_items_rank_higher_for_buyers_of_similar_items_and_not_without_attributes(shop, tmp_path) -> None:
    files, layout, record, _ = shop
    split = Split.load(layout.run("twotower", "shop") / "split.json")
    items = pd.read_csv(files.items, dtype=str).set_index("item_id")
    full = load_model_artifact(Path(record.artifact_dir)).module
    placed = _cold_item_lifts(full, split, items)
    print("PLACED", np.mean(placed))
    assert len(placed) >= 8 and np.mean(placed) > 0.1, placed

    # The same model and training without attributes cannot place an item it has never seen.
    params = {"embedding_size": 32, "attribute_size": 8, "lr": 0.01, "num_negatives": 4, "batch_size": 512}
    cfg = TrainerConfig(max_epochs=EPOCHS, patience=EPOCHS, num_threads=1)
    ids_only = build_model("twotower", *_sizes(split), None, **params)
    unplaced = _cold_item_lifts(_train_like_the_pipeline(ids_only, split, params, cfg), split, items)
    print("UNPLACED", np.mean(unplaced))
    assert abs(np.mean(unplaced)) < 0.05 and np.mean(placed) > np.mean(unplaced) + 0.05

    # The content-based model (closed form, TF-IDF over the same attributes) places them too.
    content = train_model("content", split, {"popularity_weight": 0.0}, cfg, tmp_path / "content")
    by_content = _cold_item_lifts(load_model_artifact(content.run_dir / "model").module, split, items)
    print("CONTENT", np.mean(by_content))
    assert np.mean(by_content) > 0.1


def test_deepfm_beats_popularity_on_the_shop(shop, tmp_path) -> None:
    _, layout, _, _ = shop
    split = Split.load(layout.run("twotower", "shop") / "split.json")
    cfg = TrainerConfig(max_epochs=EPOCHS, patience=EPOCHS, num_threads=1)
    params = {"embedding_size": 8, "hidden_sizes": [32], "lr": 0.005, "num_negatives": 4, "batch_size": 512}
    deepfm = train_model("deepfm", split, params, cfg, tmp_path / "deepfm")
    popularity = train_model("popularity", split, {}, cfg, tmp_path / "pop")
    assert deepfm.best_valid_ndcg10 > 1.3 * popularity.best_valid_ndcg10, (
        deepfm.best_valid_ndcg10,
        popularity.best_valid_ndcg10,
    )
    assert attributes_for(split).items.fields  # trained with the shop's attributes


def _sizes(split: Split) -> tuple[int, int]:
    from training.split import SplitIndex

    index = SplitIndex.load(split)
    return index.n_users, index.n_items


def _train_like_the_pipeline(module, split: Split, params: dict, cfg: TrainerConfig):
    """Lightning training of a prepared module on the split (as train_model, without the artifact)."""
    import lightning as L

    from training.data import build_datamodule

    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule("example", split, params, seed=cfg.seed)
    module.set_train_matrix(datamodule.train_matrix)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=cfg.max_epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    return module


def test_adding_an_attribute_is_an_edit_of_the_schema_only(shop) -> None:
    """Without ``device`` in the schema nothing knows it; with it, Feast, the model input and the
    service's request model all do. Nothing but the schema changes between the two runs."""
    files, layout, _, _ = shop
    declared = yaml.safe_load(files.schema.read_text())
    without = {
        **declared,
        "user_features": {k: v for k, v in declared["user_features"].items() if k != "device"},
    }
    seen = {}
    for name, schema in (("without", without), ("with", declared)):
        overrides = {"source.schema": schema}
        staging = stages.ingest("twotower", f"attr-{name}", overrides)
        snapshot = stages.validate("twotower", f"attr-{name}", staging, overrides)
        feature_set = stages.features("twotower", f"attr-{name}", snapshot, overrides)
        split = Split.load(stages.split("twotower", f"attr-{name}", feature_set, overrides))
        store = feature_store(layout, split.feature_namespace)
        seen[name] = {
            "feast": [f.name for f in store.get_feature_view("user_profile").features],
            "model": [f.name for f in attributes_for(split).users.fields],
            "request": list(
                attribute_model("UserFeatures", load_schema(split.schema).user_features).model_fields
            ),
        }
    assert all("device" not in names for names in seen["without"].values()), seen
    assert all("device" in names for names in seen["with"].values()), seen


def test_the_shop_served_over_http_new_customers_and_new_products(shop, tmp_path) -> None:
    """The promoted two-tower behind a real ``bentoml serve``: a customer it never saw is served from
    ``user_features``, a product the catalogue does not have is placed from ``item_features``."""
    import httpx

    from tests.serving_fixtures import serve

    files, layout, _, _ = shop
    users = pd.read_csv(files.users, dtype=str).set_index("user_id")
    items = pd.read_csv(files.items, dtype=str).set_index("item_id")
    with serve(layout, tmp_path / "server.log") as server:
        server.wait_ready()
        client = httpx.Client(base_url=server.url, timeout=60)
        meta = client.get("/metadata").json()
        assert meta["model"] == "twotower" and meta["serving"]["new_items_from_attributes"]

        profile = users.iloc[0]
        features = {"segment": profile["segment"], "country": profile["country"], "device": profile["device"]}
        body = client.post(
            "/recommend", json={"user_id": "new-customer", "k": 10, "user_features": {**features, "age": 30}}
        ).json()
        assert body["strategy"] == "attributes" and len(body["items"]) == 10, body

        # A new product: a catalogue item's attributes under an id the model was never given.
        product = items.iloc[3]
        new = {
            "category": product["category"],
            "brand": product["brand"],
            "price": float(product["price"]),
            "tags": product["tags"].split("|"),
            "title": product["title"],
        }
        resp = client.post("/similar_items", json={"item_id": "sku-brand-new", "item_features": new, "k": 10})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["item_id"] == "sku-brand-new" and body["method"] == "attribute_embedding_cosine"
        neighbours = [i["item_id"] for i in body["items"]]
        same_category = np.mean([items.loc[i, "category"] == product["category"] for i in neighbours])
        base_rate = np.mean(items["category"] == product["category"])
        assert len(neighbours) == 10 and same_category >= 0.5 > 2 * base_rate, (same_category, base_rate)

        # A catalogue product without any event yet is recommended by /recommend too: it ranks higher
        # for customers who bought its category and brand than for customers who never bought its category.
        events = pd.read_csv(files.events, dtype=str)
        bought = events.join(items[["category", "brand"]], on="item_id")
        lifts = []
        for cold in sorted(set(items.index) - set(events["item_id"])):
            category, brand = items.loc[cold, "category"], items.loc[cold, "brand"]
            buyers = bought.loc[(bought["category"] == category) & (bought["brand"] == brand), "user_id"]
            never = sorted(
                set(events["user_id"]) - set(bought.loc[bought["category"] == category, "user_id"])
            )
            percentiles = {}
            for group, who in (("buyers", sorted(set(buyers))[:8]), ("others", never[:8])):
                ranks = []
                for user in who:
                    listed = client.post("/recommend", json={"user_id": user, "k": 1000}).json()["items"]
                    ids = [i["item_id"] for i in listed]
                    assert cold in ids, (cold, user)  # a cold item is never masked out
                    ranks.append(1 - ids.index(cold) / len(ids))
                percentiles[group] = np.mean(ranks)
            lifts.append(percentiles["buyers"] - percentiles["others"])
        assert np.mean(lifts) > 0.15, lifts  # 0 = cannot tell buyers from others

        # Bad requests say what is wrong.
        typo = client.post("/similar_items", json={"item_id": "sku-2", "item_features": {"colour": "red"}})
        assert typo.status_code == 400 and "colour" in typo.text
        unknown = client.post("/similar_items", json={"item_id": "sku-brand-new"})
        assert unknown.status_code == 404 and "item_features" in unknown.text
    assert "Traceback" not in (tmp_path / "server.log").read_text()
