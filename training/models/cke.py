"""CKE (Zhang et al., KDD 2016), structural part: BPR collaborative filtering + TransR on the item KG.

An item is represented by its id embedding plus the embedding of its linked knowledge-graph entity,
``v_i = q_i + e_{entity(i)}``; ``score(u, i) = <p_u, v_i>``. The entity embeddings are shaped by
TransR on the item-anchored triples (head = the item's entity): with a relation-specific projection
``W_r`` (d x k) and relation vector ``r`` (k), the triple distance is ``||e_h W_r + r - e_t W_r||^2``
and the loss prefers true tails over a uniformly corrupted one, ``softplus(d(h,r,t) - d(h,r,t'))``
(the pairwise form of RecBole's CKE). Both losses are summed each step (one KG batch per CF batch),
so the KG regularises the item vectors where interactions are few. Items without a linked entity use
entity row 0, which is zero: their vector is the id embedding alone (plain BPR-MF).

The graph is a constructor argument (``UsesKnowledgeGraph``: the trainer passes the split's, the
artifact loader the stored one); it sizes the entity and relation tables, so loading is construct +
``load_state_dict``. Without a graph the model is BPR-MF.
The textual/visual parts of CKE (stacked auto-encoders) are not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.knowledge_graph import KnowledgeGraph
from training.models.base import RecommenderModule, bpr_loss, fold_in_users, latent_factor_tables
from training.models.capabilities import EmbedsItems, ScoresFromHistory, UsesKnowledgeGraph


class CKE(RecommenderModule, ScoresFromHistory, EmbedsItems, UsesKnowledgeGraph):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        knowledge_graph: KnowledgeGraph | None = None,
        embedding_size: int = 64,
        kg_embedding_size: int = 64,
        lr: float = 2e-3,
        reg_weight: float = 1e-4,
        kg_weight: float = 0.1,
        kg_reg_weight: float = 1e-4,
        kg_batch_size: int = 1024,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["knowledge_graph"])
        self.n_users, self.n_items = n_users, n_items
        self.embedding_size, self.kg_embedding_size = embedding_size, kg_embedding_size
        self.lr, self.reg_weight = lr, reg_weight
        self.kg_weight, self.kg_reg_weight, self.kg_batch_size = kg_weight, kg_reg_weight, kg_batch_size
        self.user_embedding, self.item_embedding = latent_factor_tables(n_users, n_items, embedding_size)
        graph = knowledge_graph if knowledge_graph is not None else KnowledgeGraph.empty(n_items)
        if len(graph.item_entity) != n_items + 1:
            raise ValueError(
                f"knowledge graph maps {len(graph.item_entity) - 1} items, the model has {n_items}"
            )
        self.knowledge_graph = graph
        d, k = embedding_size, kg_embedding_size
        self.entity_embedding = nn.Embedding(graph.n_entities, d, padding_idx=0)
        self.relation_embedding = nn.Embedding(max(graph.n_relations, 1), k)
        self.transfer = nn.Parameter(torch.empty(max(graph.n_relations, 1), d, k))
        nn.init.normal_(self.entity_embedding.weight, std=0.1)
        nn.init.normal_(self.relation_embedding.weight, std=0.1)
        nn.init.xavier_uniform_(self.transfer)
        with torch.no_grad():
            self.entity_embedding.weight[0].zero_()
        # Non-persistent: the artifact stores the graph itself, so the state dict holds only what was
        # learned.
        self.register_buffer("item_entity", torch.from_numpy(graph.item_entity).long(), persistent=False)
        self.register_buffer("kg_heads", torch.from_numpy(graph.heads).long(), persistent=False)
        self.register_buffer("kg_relations", torch.from_numpy(graph.relations).long(), persistent=False)
        self.register_buffer("kg_tails", torch.from_numpy(graph.entities).long(), persistent=False)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d): id embedding + linked entity embedding (row 0 = padding, zero)."""
        return self.item_embedding.weight + self.entity_embedding(self.item_entity)

    def project(self, vectors: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """``vectors[b] @ W_{relations[b]}`` (B, d) -> (B, k), one matmul per relation present.

        Grouping by relation avoids gathering a (d x k) matrix per triple, which dominated the step.
        """
        order = torch.argsort(relations)
        counts = torch.bincount(relations, minlength=self.transfer.shape[0]).tolist()
        chunks = torch.split(vectors[order], counts)
        projected = torch.cat([chunk @ self.transfer[r] for r, chunk in enumerate(chunks) if len(chunk)])
        return projected[torch.argsort(order)]

    def transr_distance(
        self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor
    ) -> torch.Tensor:
        """``||e_h W_r + r - e_t W_r||^2`` per triple (entity indices, relation indices).

        Computed as ``||(e_h - e_t) W_r + r||^2``: the projection is linear, so one product suffices.
        """
        difference = self.entity_embedding(heads) - self.entity_embedding(tails)
        return (self.project(difference, relations) + self.relation_embedding(relations)).pow(2).sum(-1)

    def kg_loss(self) -> torch.Tensor:
        """TransR pairwise loss on a uniform sample of triples with uniformly corrupted tails."""
        n_triples = self.kg_heads.shape[0]
        if n_triples == 0 or self.kg_weight == 0:
            return self.item_embedding.weight.new_zeros(())
        size = self.kg_batch_size
        pick = torch.randint(0, n_triples, (size,), device=self.kg_heads.device)
        heads, relations, tails = self.kg_heads[pick], self.kg_relations[pick], self.kg_tails[pick]
        corrupted = torch.randint(1, self.entity_embedding.num_embeddings, tails.shape, device=tails.device)
        # True and corrupted triples in one pass: the first half are the true tails.
        distance = self.transr_distance(
            torch.cat([heads, heads]), torch.cat([relations, relations]), torch.cat([tails, corrupted])
        )
        touched = torch.cat([heads, tails, corrupted])
        reg = (
            self.entity_embedding(touched).pow(2).sum() + self.relation_embedding(relations).pow(2).sum()
        ) / size
        return F.softplus(distance[:size] - distance[size:]).mean() + self.kg_reg_weight * reg

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = self.user_embedding(batch["users"])
        pos_id, neg_id = self.item_embedding(batch["positives"]), self.item_embedding(batch["negatives"])
        pos = pos_id + self.entity_embedding(self.item_entity[batch["positives"]])
        neg = neg_id + self.entity_embedding(self.item_entity[batch["negatives"]])
        rec_loss = bpr_loss(user, pos, neg, (user, pos_id, neg_id), self.reg_weight)
        return rec_loss + self.kg_weight * self.kg_loss()

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return fold_in_users(self.user_embedding.weight, items, users, history)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        items = self.item_embeddings()
        return self.user_vectors(users, history, items) @ items.T
