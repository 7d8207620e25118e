"""Item knowledge graph in a split's index space, for knowledge-aware models (CKE).

The snapshot stores item-anchored triples as strings (``knowledge_graph.parquet``: item_id,
item_entity, relation, entity; see ingestion/validate.py). A model needs integer arrays in the index
space of the split it trains on: item index (1-based, as everywhere), entity and relation indices.
``knowledge_graph_for(split)`` builds them; ``KnowledgeGraph.save/load`` lets the model artifact carry
them, so a model reloads (and the service scores) without the split, like ``SideFeatures``.

Entity index 0 is reserved for "no entity" (items without a link map to it; models keep its
embedding at zero), so entity vocab index ``e`` names ``entities[e - 1]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import Split
from training.split import SplitIndex

log = logging.getLogger(__name__)

ARRAYS = "triples.npz"
VOCAB = "vocab.json"


@dataclass
class KnowledgeGraph:
    """Integer triples ``(item index, relation index, entity index)`` plus each item's own entity.

    ``item_entity[i]`` is the entity index of item ``i`` (0 = no linked entity; row 0 = padding);
    the head of triple ``t`` is the entity ``item_entity[items[t]]``.
    """

    items: np.ndarray  # (T,) int64 item index (1-based)
    relations: np.ndarray  # (T,) int64 relation index (0-based)
    entities: np.ndarray  # (T,) int64 tail entity index (1-based, 0 unused)
    item_entity: np.ndarray  # (n_items + 1,) int64 entity index of each item, 0 = none
    entity_vocab: list[str]
    relation_vocab: list[str]

    @property
    def n_entities(self) -> int:
        """Rows of an entity table: the vocabulary plus the reserved "no entity" row 0."""
        return len(self.entity_vocab) + 1

    @property
    def n_relations(self) -> int:
        return len(self.relation_vocab)

    @property
    def n_triples(self) -> int:
        return len(self.items)

    @property
    def heads(self) -> np.ndarray:
        """Head entity index of every triple."""
        return self.item_entity[self.items]

    @classmethod
    def empty(cls, n_items: int) -> KnowledgeGraph:
        """No knowledge: models fall back to their id embeddings."""
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none.copy(), none.copy(), np.zeros(n_items + 1, dtype=np.int64), [], [])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, index: SplitIndex) -> KnowledgeGraph:
        """Map the string triples onto ``index``; triples of items outside the catalogue are dropped."""
        item_of = frame["item_id"].astype(str).map(index.item_index)
        known = item_of.notna().to_numpy()
        if not known.all():
            log.info("knowledge graph: %d triples name items outside the split's catalogue", (~known).sum())
        frame = frame[known]
        item_index = item_of[known].to_numpy(dtype=np.int64)
        entity_vocab = sorted(set(frame["item_entity"].astype(str)) | set(frame["entity"].astype(str)))
        relation_vocab = sorted(set(frame["relation"].astype(str)))
        entity_index = {entity: e + 1 for e, entity in enumerate(entity_vocab)}
        relation_index = {relation: r for r, relation in enumerate(relation_vocab)}
        item_entity = np.zeros(index.n_items + 1, dtype=np.int64)
        item_entity[item_index] = frame["item_entity"].astype(str).map(entity_index).to_numpy(dtype=np.int64)
        return cls(
            items=item_index,
            relations=frame["relation"].astype(str).map(relation_index).to_numpy(dtype=np.int64),
            entities=frame["entity"].astype(str).map(entity_index).to_numpy(dtype=np.int64),
            item_entity=item_entity,
            entity_vocab=entity_vocab,
            relation_vocab=relation_vocab,
        )

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / ARRAYS,
            items=self.items,
            relations=self.relations,
            entities=self.entities,
            item_entity=self.item_entity,
        )
        (directory / VOCAB).write_text(
            json.dumps({"entities": self.entity_vocab, "relations": self.relation_vocab})
        )
        return directory

    @classmethod
    def load(cls, directory: Path) -> KnowledgeGraph:
        directory = Path(directory)
        arrays = np.load(directory / ARRAYS)
        vocab = json.loads((directory / VOCAB).read_text())
        return cls(
            items=arrays["items"],
            relations=arrays["relations"],
            entities=arrays["entities"],
            item_entity=arrays["item_entity"],
            entity_vocab=vocab["entities"],
            relation_vocab=vocab["relations"],
        )


def knowledge_graph_for(split: Split) -> KnowledgeGraph:
    """The split's item knowledge graph in its index space (empty when the source has none)."""
    index = SplitIndex.load(split)
    if split.knowledge_graph is None:
        log.warning(
            "split %s carries no knowledge graph: knowledge-aware models use id embeddings only", split.dir
        )
        return KnowledgeGraph.empty(index.n_items)
    frame = pd.read_parquet(split.knowledge_graph, columns=["item_id", "item_entity", "relation", "entity"])
    graph = KnowledgeGraph.from_frame(frame, index)
    log.info(
        "knowledge graph: %d triples, %d entities, %d relations, %d of %d items linked",
        graph.n_triples,
        len(graph.entity_vocab),
        graph.n_relations,
        int((graph.item_entity[1:] > 0).sum()),
        index.n_items,
    )
    return graph
