"""The model artifact: what training writes and what the service and the drift monitor load.

A directory (see docs/architecture.md) that is self-contained: weights, hyperparameters, the id
index of the split it was trained on, training popularity (cold-start fallback) and the training
user x item matrix (to exclude seen items). Written to a temp directory and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.artifacts import atomic_path
from training.attributes import Attributes
from training.knowledge_graph import KnowledgeGraph
from training.models import build_model, get_spec
from training.models.capabilities import ScoresColdItems, UsesKnowledgeGraph, can

ATTRIBUTES_DIR = "attributes"
# The one hyperparameter name for the number of history items a model reads (sequential models,
# DIN/DIEN, and the data modules of example/general models). Artifacts saved before the name was
# unified recorded the sequential models' value as ``max_len``; loading renames it.
HISTORY_LENGTH = "history_length"
LEGACY_HISTORY_LENGTH_KEYS = ("max_len",)
DEFAULT_HISTORY_LENGTH = 50  # FeatureConfig.history_length: what the feature store keeps at most
KNOWLEDGE_GRAPH_DIR = "knowledge_graph"


@dataclass
class ModelArtifact:
    name: str
    module: torch.nn.Module
    item_ids: list[str]
    user_ids: list[str]
    popularity: np.ndarray  # (n_items + 1,) training interaction counts; index 0 = padding
    seen: sp.csr_matrix  # (n_users, n_items + 1) training interactions
    meta: dict[str, Any] = field(default_factory=dict)
    attributes: Attributes | None = None  # encoded attributes + vocabularies of attribute-aware models
    history_length: int | None = None  # history columns the model was trained on, if it records one

    @property
    def kind(self) -> str:
        return get_spec(self.name).kind

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {user: u for u, user in enumerate(self.user_ids)}

    @cached_property
    def untrained_items(self) -> torch.Tensor | None:
        """(n_items + 1,) items the model may not rank: without a training interaction, for a model that
        does not score items from their attributes (``scores_cold_items``); None when it may rank all."""
        if can(self.module, ScoresColdItems):
            return None
        return torch.from_numpy(np.asarray(self.popularity) <= 0)

    @torch.no_grad()
    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Full-catalogue scores (B, n_items + 1); column 0 (padding) and items the model never trained
        on (unless it scores them from attributes) are -inf."""
        if self.module.training:  # eval() clears the module's per-catalogue cache: only when needed
            self.module.eval()
        scores = self.module.full_sort_predict(users, history).float()
        if self.untrained_items is not None:
            scores.masked_fill_(self.untrained_items, -torch.inf)
        scores[:, 0] = -torch.inf
        return scores


def save_model_artifact(
    out_dir: Path,
    name: str,
    module: torch.nn.Module,
    hparams: dict[str, Any],
    item_ids: list[str],
    user_ids: list[str],
    train_matrix: sp.csr_matrix,
    meta: dict[str, Any] | None = None,
    attributes: Attributes | None = None,
) -> Path:
    """Write the artifact directory atomically and return its path."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        torch.save(module.state_dict(), tmp / "weights.pt")
        (tmp / "model.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "kind": get_spec(name).kind,
                    "hparams": hparams,
                    "n_users": len(user_ids),
                    "n_items": len(item_ids),
                    "meta": meta or {},
                },
                indent=2,
                default=str,
            )
        )
        (tmp / "item_ids.json").write_text(json.dumps(item_ids))
        (tmp / "user_ids.json").write_text(json.dumps(user_ids))
        popularity = np.asarray((train_matrix > 0).sum(axis=0)).ravel().astype(np.float32)
        np.save(tmp / "popularity.npy", popularity)
        sp.save_npz(tmp / "seen.npz", train_matrix.tocsr())
        if attributes is not None:
            attributes.save(tmp / ATTRIBUTES_DIR)
        # A knowledge-aware model keeps the graph it was built from; it sizes the entity tables, so it
        # travels with the weights like the side features.
        if can(module, UsesKnowledgeGraph) and isinstance(module.knowledge_graph, KnowledgeGraph):
            module.knowledge_graph.save(tmp / KNOWLEDGE_GRAPH_DIR)
    return out_dir


def load_model_artifact(path: Path | str) -> ModelArtifact:
    path = Path(path)
    info = json.loads((path / "model.json").read_text())
    # Attribute-aware models size their inputs from the attributes they were trained with.
    attributes = Attributes.load(path / ATTRIBUTES_DIR) if (path / ATTRIBUTES_DIR).exists() else None
    hparams = _renamed_legacy_keys(info["hparams"])
    graph = KnowledgeGraph.load(path / KNOWLEDGE_GRAPH_DIR) if (path / KNOWLEDGE_GRAPH_DIR).exists() else None
    module = build_model(info["name"], info["n_users"], info["n_items"], attributes, graph, **hparams)
    state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    # Fitted baselines size some buffers from data (e.g. the user x item matrix): adopt saved shapes.
    for key, value in state.items():
        owner, _, attr = key.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        if attr in dict(target.named_buffers(recurse=False)) and getattr(target, attr).shape != value.shape:
            setattr(target, attr, torch.empty_like(value))
    module.load_state_dict(state)
    module.eval()
    return ModelArtifact(
        name=info["name"],
        module=module,
        item_ids=json.loads((path / "item_ids.json").read_text()),
        user_ids=json.loads((path / "user_ids.json").read_text()),
        popularity=np.load(path / "popularity.npy"),
        seen=sp.load_npz(path / "seen.npz").tocsr(),
        meta=info.get("meta", {}),
        attributes=attributes,
        history_length=trained_history_length(info),
    )


def trained_history_length(info: dict[str, Any]) -> int | None:
    """The history length a model was trained with, from its ``model.json`` (hparams, then meta).

    One rule for the evaluator, the service and the drift monitor, so a model is tested, served and
    monitored on the same context. None when the model records none (its callers pick a default).
    """
    for source in (_renamed_legacy_keys(info.get("hparams") or {}), info.get("meta") or {}):
        value = source.get(HISTORY_LENGTH)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _renamed_legacy_keys(hparams: dict[str, Any]) -> dict[str, Any]:
    out = dict(hparams)
    for key in LEGACY_HISTORY_LENGTH_KEYS:
        if key in out:
            out.setdefault(HISTORY_LENGTH, out.pop(key))
    return out
