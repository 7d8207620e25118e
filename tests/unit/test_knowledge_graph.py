"""Item knowledge graph: RecBole kg/link ingestion, manifests, index mapping, and the CKE model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ingestion.ingest import ingest
from ingestion.readers import read_knowledge_graph
from ingestion.validate import validate
from pipeline.artifacts import FeatureSet, Snapshot, Split
from pipeline.config import SourceConfig, SplitConfig, TrainerConfig, ValidationConfig
from pipeline.layout import Layout
from tests.model_helpers import overfit_losses
from tests.unit.test_ingestion import GOOD, write_recbole
from training.artifact import load_model_artifact, save_model_artifact
from training.data import build_eval_inputs
from training.knowledge_graph import KnowledgeGraph, knowledge_graph_for
from training.models import build_model
from training.split import SplitIndex, make_split, train_matrix
from training.train import evaluate_module, train_model

torch.set_num_threads(1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SMALL = {"embedding_size": 8, "kg_embedding_size": 4, "lr": 0.02, "kg_batch_size": 64}

KG_LINES = [
    "head_id:token\trelation_id:token\ttail_id:token",
    "m.toy\tfilm.film.genre\tm.animation",  # item 10 -> genre
    "m.gold\tfilm.film.genre\tm.action",  # item 11 -> genre
    "m.director\tfilm.director.film\tm.heat",  # only the tail is linked: kept as (12, ~relation, head)
    "m.gold\tfilm.film.sequel\tm.heat",  # both linked: anchored at the head (11)
    "m.toy\tfilm.film.genre\tm.animation",  # duplicate_triple
    "m.x\tfilm.film.genre\tm.y",  # unlinked_triple
    "m.toy\t\tm.comedy",  # missing_relation_id
    "m.toy\tfilm.film.genre",  # malformed: 2 fields
]
LINK_LINES = [
    "item_id:token\tentity_id:token",
    "10\tm.toy",
    "11\tm.gold",
    "12\tm.heat",
    "999\tm.unknown",  # unknown_item
    "10\tm.toy2",  # duplicate_item_id
    "11\tm.gold\textra",  # malformed: 3 fields
]


def write_kg(directory: Path) -> Path:
    (directory / "ml-100k.kg").write_text("\n".join(KG_LINES) + "\n")
    (directory / "ml-100k.link").write_text("\n".join(LINK_LINES) + "\n")
    return directory


def snapshot_with_kg(tmp_path: Path) -> Snapshot:
    raw = write_kg(write_recbole(tmp_path / "raw", GOOD))
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="recbole_ml100k", path=str(raw)), layout, "run-1")
    return validate(staging, ValidationConfig(max_rejected_share=1.0), layout, "ml-100k", now=NOW)


def test_reader_parses_recbole_kg_and_link_and_reports_malformed_lines(tmp_path: Path) -> None:
    directory = write_kg(tmp_path)
    triples, links, malformed = read_knowledge_graph(directory / "ml-100k.kg", directory / "ml-100k.link")
    assert list(triples.columns[:3]) == ["head_id", "relation_id", "tail_id"]
    assert len(triples) == 7 and len(links) == 5
    assert triples.loc[0, ["head_id", "relation_id", "tail_id"]].tolist() == [
        "m.toy",
        "film.film.genre",
        "m.animation",
    ]
    assert sorted(malformed["reason"]) == [
        "malformed_line: expected 2 fields, found 3",
        "malformed_line: expected 3 fields, found 2",
    ]
    assert sorted(malformed["source_line"]) == [7, 9]


def test_validate_writes_item_anchored_kg_and_quarantines_with_reasons(tmp_path: Path) -> None:
    snapshot = snapshot_with_kg(tmp_path)
    assert snapshot.knowledge_graph == snapshot.interactions.parent / "knowledge_graph.parquet"
    kg = pd.read_parquet(snapshot.knowledge_graph)
    assert list(kg.columns) == ["item_id", "item_entity", "relation", "entity"]
    rows = set(map(tuple, kg.to_numpy().tolist()))
    assert rows == {
        ("10", "m.toy", "film.film.genre", "m.animation"),
        ("11", "m.gold", "film.film.genre", "m.action"),
        ("11", "m.gold", "film.film.sequel", "m.heat"),
        ("12", "m.heat", "~film.director.film", "m.director"),
    }
    reasons = snapshot.quarantine_reasons
    for reason in (
        "duplicate_triple",
        "unlinked_triple",
        "missing_relation_id",
        "unknown_item",
        "duplicate_item_id",
    ):
        assert reasons[reason] == 1, reason
    assert reasons["malformed_line: expected 3 fields, found 2"] == 1
    assert reasons["malformed_line: expected 2 fields, found 3"] == 1
    quarantine = pd.read_parquet(snapshot.quarantine)
    assert set(quarantine.loc[quarantine["reason"] == "unknown_item", "table"]) == {"item_links"}
    assert set(quarantine.loc[quarantine["reason"] == "unlinked_triple", "table"]) == {"knowledge_graph"}
    # The no-data-loss invariant covers the KG rows too: 4 + 3 + 3 + 2 malformed + 7 triples + 5 links.
    assert snapshot.rows_in == 24 and snapshot.rows_in == snapshot.rows_kept + snapshot.rows_quarantined


def test_kg_is_part_of_the_data_version_and_absent_kg_keeps_it(tmp_path: Path) -> None:
    with_kg = snapshot_with_kg(tmp_path / "a")
    raw = write_recbole(tmp_path / "b" / "raw", GOOD)
    layout = Layout(tmp_path / "b" / "home")
    staging = ingest(SourceConfig(kind="recbole_ml100k", path=str(raw)), layout, "run-1")
    without = validate(staging, ValidationConfig(max_rejected_share=1.0), layout, "ml-100k", now=NOW)
    assert without.knowledge_graph is None
    assert with_kg.data_version != without.data_version


def test_manifests_carry_the_kg_and_old_manifests_still_load(tmp_path: Path, examples_parquet: Path) -> None:
    snapshot = snapshot_with_kg(tmp_path)
    assert Snapshot.load(snapshot.save(tmp_path / "s.json")).knowledge_graph == snapshot.knowledge_graph
    old = snapshot.to_dict()
    del old["knowledge_graph"]  # a manifest written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Snapshot.load(tmp_path / "old.json").knowledge_graph is None

    feature_set = FeatureSet(
        "v1", tmp_path / "repo", examples_parquet, [], "svc", "", snapshot.knowledge_graph
    )
    assert FeatureSet.load(feature_set.save(tmp_path / "f.json")).knowledge_graph == snapshot.knowledge_graph
    old_fs = feature_set.to_dict()
    del old_fs["knowledge_graph"]
    assert FeatureSet.from_dict(old_fs).knowledge_graph is None

    split = make_split(feature_set, SplitConfig(protocol="leave_last_out"), Layout(tmp_path / "home2"))
    assert split.knowledge_graph == split.dir / "knowledge_graph.parquet" and split.knowledge_graph.exists()
    assert Split.load(split.dir / "split.json").knowledge_graph == split.knowledge_graph
    old_split = split.to_dict()
    del old_split["knowledge_graph"]
    assert Split.from_dict(old_split).knowledge_graph is None


def synthetic_kg(item_ids: list[str], n_clusters: int = 4) -> pd.DataFrame:
    """One genre entity per item cluster (item number mod 4, the structure of synthetic_examples),
    plus a 'next' relation to the following item of the cluster."""
    rows = []
    for item in item_ids:
        number = int(item[1:])
        rows.append((item, f"e.{item}", "genre", f"g.{number % n_clusters}"))
        rows.append((item, f"e.{item}", "next", f"e.i{number + n_clusters:04d}"))
    return pd.DataFrame(rows, columns=["item_id", "item_entity", "relation", "entity"]).astype("string")


@pytest.fixture
def kg_split(feature_set: FeatureSet, layout: Layout, tmp_path: Path) -> Split:
    examples = pd.read_parquet(feature_set.examples)
    items = sorted(examples["item_id"].unique())
    path = tmp_path / "kg.parquet"
    synthetic_kg(items[:-5]).to_parquet(path, index=False)  # the last 5 items have no link
    with_kg = FeatureSet(**{**feature_set.__dict__, "knowledge_graph": path})
    return make_split(with_kg, SplitConfig(protocol="leave_last_out"), layout)


def test_knowledge_graph_for_maps_ids_to_indices(kg_split: Split) -> None:
    graph = knowledge_graph_for(kg_split)
    index = SplitIndex.load(kg_split)
    frame = pd.read_parquet(kg_split.knowledge_graph)
    assert graph.n_triples == len(frame)
    assert graph.n_relations == 2 and graph.relation_vocab == ["genre", "next"]
    assert len(graph.item_entity) == index.n_items + 1 and graph.item_entity[0] == 0
    assert (graph.item_entity[-5:] == 0).all() and (graph.item_entity[1:-5] > 0).all()
    for t in (0, 1, len(frame) - 1):  # every mapped triple names the strings it came from
        row = frame.iloc[t]
        assert index.item_ids[graph.items[t] - 1] == row["item_id"]
        assert graph.relation_vocab[graph.relations[t]] == row["relation"]
        assert graph.entity_vocab[graph.entities[t] - 1] == row["entity"]
        assert graph.entity_vocab[graph.heads[t] - 1] == row["item_entity"]
    # "next" of item i is the entity of item i+4: the same node as that item's own entity.
    first_next = int(np.flatnonzero(graph.relations == 1)[0])
    target = index.item_index[f"i{int(frame.iloc[first_next]['item_id'][1:]) + 4:04d}"]
    assert graph.entities[first_next] == graph.item_entity[target]


def test_empty_graph_when_the_split_has_none(feature_set: FeatureSet, layout: Layout) -> None:
    split = make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)
    graph = knowledge_graph_for(split)
    assert split.knowledge_graph is None and graph.n_triples == 0 and graph.n_entities == 1


def tiny_graph() -> KnowledgeGraph:
    # 3 items; items 1 and 2 linked to entities 1 and 2; entity 3 = a genre; item 3 unlinked.
    return KnowledgeGraph(
        items=np.array([1, 2, 1]),
        relations=np.array([0, 0, 1]),
        entities=np.array([3, 3, 2]),
        item_entity=np.array([0, 1, 2, 0]),
        entity_vocab=["m.a", "m.b", "m.genre"],
        relation_vocab=["genre", "sequel"],
    )


def test_transr_distance_by_hand() -> None:
    model = build_model("cke", 2, 3, knowledge_graph=tiny_graph(), embedding_size=2, kg_embedding_size=2)
    with torch.no_grad():
        model.entity_embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 1.0], [3.0, -1.0]]))
        model.relation_embedding.weight.copy_(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        model.transfer.copy_(torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]))
    # relation 0: W = diag(1, 2): h=(1,2) -> (1,4); t=(3,-1) -> (3,-2); (1,4)+(.5,.5)-(3,-2) = (-1.5, 6.5)
    # relation 1: W swaps: h=(1,2) -> (2,1); t=(0,1) -> (1,0); (2,1)+(1,0)-(1,0) = (2, 1)
    distance = model.transr_distance(torch.tensor([1, 1]), torch.tensor([0, 1]), torch.tensor([3, 2]))
    assert distance.tolist() == pytest.approx([1.5**2 + 6.5**2, 5.0])
    # Item vectors: id embedding + linked entity embedding; unlinked item 3 keeps its id embedding.
    items = model.item_embeddings()
    assert torch.allclose(items[1], model.item_embedding.weight[1] + torch.tensor([1.0, 2.0]))
    assert torch.allclose(items[3], model.item_embedding.weight[3])
    assert torch.equal(items[0], torch.zeros(2))


def test_shapes_padding_and_unknown_user_fold_in() -> None:
    model = build_model("cke", 4, 3, knowledge_graph=tiny_graph(), **SMALL)
    history = torch.tensor([[0, 0, 1], [0, 2, 3]])
    scores = model.full_sort_predict(torch.tensor([0, -1]), history)
    assert scores.shape == (2, 4)
    items = model.item_embeddings()
    assert torch.allclose(scores[1], ((items[2] + items[3]) / 2) @ items.T, atol=1e-6)


def test_loss_falls_when_overfitting_one_batch() -> None:
    torch.manual_seed(0)
    model = build_model("cke", 4, 3, knowledge_graph=tiny_graph(), **SMALL)
    batch = {
        "users": torch.tensor([0, 1, 2, 3]),
        "positives": torch.tensor([1, 2, 3, 1]),
        "negatives": torch.tensor([2, 3, 1, 3]),
    }
    losses = overfit_losses(model, batch, steps=80)
    assert losses[-1] < 0.5 * losses[0]
    torch.manual_seed(0)
    kg_only = [model.kg_loss().item() for _ in range(3)]
    assert all(np.isfinite(kg_only))


def test_artifact_round_trip_gives_identical_scores(tmp_path: Path, kg_split: Split) -> None:
    graph = knowledge_graph_for(kg_split)
    index = SplitIndex.load(kg_split)
    model = build_model("cke", index.n_users, index.n_items, knowledge_graph=graph, **SMALL)
    with torch.no_grad():  # non-trivial entity vectors, so a lost graph would change the scores
        model.entity_embedding.weight[1:].normal_()
    train = train_matrix(kg_split)
    save_model_artifact(tmp_path / "model", "cke", model, SMALL, index.item_ids, index.user_ids, train)
    assert (tmp_path / "model" / "knowledge_graph" / "triples.npz").exists()
    loaded = load_model_artifact(tmp_path / "model")
    users, history = torch.tensor([0, 3, -1]), torch.tensor([[0, 1, 2], [0, 0, 0], [3, 4, 5]])
    model.eval()
    assert torch.equal(
        model.full_sort_predict(users, history), loaded.module.full_sort_predict(users, history)
    )
    assert torch.equal(loaded.module.item_entity, torch.from_numpy(graph.item_entity))


def test_train_model_with_a_synthetic_kg_beats_popularity(tmp_path: Path, kg_split: Split) -> None:
    params = {**SMALL, "embedding_size": 16, "batch_size": 128}
    cfg = TrainerConfig(max_epochs=15, patience=15, num_threads=1)
    result = train_model("cke", kg_split, params, cfg, tmp_path / "run")
    artifact = load_model_artifact(result.run_dir / "model")
    assert artifact.module.knowledge_graph.n_triples == knowledge_graph_for(kg_split).n_triples
    valid = build_eval_inputs(kg_split, "valid", 50)
    popularity = build_model("popularity", valid.n_users, valid.n_items)
    popularity.fit(train_matrix(kg_split))
    pop_ndcg = evaluate_module(popularity, valid, [10], 512)["ndcg@10"]
    assert result.best_valid_ndcg10 > pop_ndcg
