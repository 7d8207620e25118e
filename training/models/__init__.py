"""The model registry: the one list the trainer, the evaluator, the service and the DAG factory read.

Adding a model = one module in this package + one ``register`` line below + ``configs/models/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

ModelKind = Literal["general", "sequential", "baseline"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    # factory(n_users, n_items, **hparams) -> torch.nn.Module with full_sort_predict(users, history)
    factory: Callable[..., torch.nn.Module]
    description: str
    trainable: bool = True  # False: fitted in closed form from the training matrix (baselines)


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None


def build_model(name: str, n_users: int, n_items: int, **hparams) -> torch.nn.Module:
    return get_spec(name).factory(n_users=n_users, n_items=n_items, **hparams)


def pipeline_models() -> list[str]:
    """Models that get a ``recsys_<name>`` DAG (baselines are evaluated inside every run instead)."""
    return [name for name, spec in MODELS.items() if spec.kind != "baseline"]


def _register_builtin() -> None:
    # Imported here, not at module top, so each model module can import this registry's types.
    from training.models import baselines, bpr, sasrec

    register(ModelSpec("popularity", "baseline", baselines.Popularity, "most-interacted items", False))
    register(ModelSpec("itemknn", "baseline", baselines.ItemKNN, "item-based kNN, cosine", False))
    register(ModelSpec("bpr", "general", bpr.BPR, "matrix factorisation, BPR pairwise loss"))
    register(ModelSpec("sasrec", "sequential", sasrec.SASRec, "self-attentive next-item model"))


_register_builtin()
