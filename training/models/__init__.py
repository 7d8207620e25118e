"""The model registry: the one list the trainer, the evaluator, the service and the DAG factory read.

Adding a model = one module in this package + one ``register`` line below + ``configs/models/<name>.yaml``.

Model classes are named by import path and imported on first use: the Airflow DAG processor reads
this registry on every parse and must not pay for importing torch and Lightning each time.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from training.attributes import Attributes
    from training.knowledge_graph import KnowledgeGraph

# Which data module trains the model (training/data.py): "general" = (user, positive, negative)
# triples, "sequential" = next-item windows, "example" = point-in-time examples with history, rating
# and negatives; "user_rows" = batches of users with their whole binary train rows (autoencoders);
# "baseline" = fitted in closed form and evaluated inside every run (no DAG of its own).
ModelKind = Literal["general", "sequential", "example", "user_rows", "baseline"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    # "module:Class"; Class(n_users, n_items, **hparams) is an nn.Module with full_sort_predict(users, history)
    factory_path: str
    description: str
    trainable: bool = True  # False: fitted in closed form from the training matrix (baselines)

    @property
    def factory(self) -> Any:
        module, _, attr = self.factory_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def capabilities(self) -> frozenset[type]:
        """What the model class declares it can do (``training.models.capabilities``)."""
        from training.models.capabilities import capabilities_of

        return capabilities_of(self.factory)


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


# What each data module (training/data.py) reads from a model's hyperparameters, besides the model's
# own constructor arguments: part of the model's accepted keys (``hyperparameters``).
DATA_PARAMS: dict[str, dict[str, type]] = {
    "example": {"batch_size": int, "num_negatives": int, "history_length": int},
    "sequential": {"batch_size": int, "history_length": int},
    "general": {"batch_size": int, "history_length": int},
    "user_rows": {"batch_size": int, "history_length": int},
    "baseline": {"history_length": int},
}

# Constructor arguments that come from the data, not from the model's YAML.
DATA_ARGUMENTS = ("self", "n_users", "n_items", "attributes", "knowledge_graph")


class HyperparameterError(ValueError):
    """A model's hyperparameters name an unknown key or give a value of the wrong type."""


@cache
def hyperparameters(name: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (type, default)}`` a model accepts: its constructor's typed arguments, plus what its
    data module reads (``DATA_PARAMS``; default None there: the module's own)."""
    spec = get_spec(name)
    factory = spec.factory
    hints = typing.get_type_hints(factory.__init__)
    accepted: dict[str, tuple[Any, Any]] = {}
    for parameter in inspect.signature(factory.__init__).parameters.values():
        if parameter.name in DATA_ARGUMENTS or parameter.kind in (
            parameter.VAR_KEYWORD,
            parameter.VAR_POSITIONAL,
        ):
            continue
        accepted[parameter.name] = (hints.get(parameter.name, Any), parameter.default)
    for key, kind in DATA_PARAMS["baseline" if spec.kind == "baseline" else spec.kind].items():
        accepted.setdefault(key, (kind, None))
    return accepted


@cache
def hyperparameter_names(name: str) -> frozenset[str] | None:
    """The keys ``hyperparameters`` accepts, read from the model class's source instead of importing it
    (torch and Lightning take seconds to import; the CLI checks ``--hparam`` keys before that). None
    when the class does not define ``__init__`` itself: then only ``hyperparameters`` knows."""
    spec = get_spec(name)
    module, _, class_name = spec.factory_path.partition(":")
    origin = importlib.util.find_spec(module).origin
    tree = ast.parse(Path(origin).read_text())
    inits = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == class_name
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    ]
    if not inits:
        return None
    arguments = inits[0].args
    own = {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)}
    return frozenset(own - set(DATA_ARGUMENTS)) | set(
        DATA_PARAMS["baseline" if spec.kind == "baseline" else spec.kind]
    )


def unknown_hparams_message(name: str, unknown: list[str], accepted: list[str]) -> str:
    """One line: the unknown keys, the nearest accepted ones (or the config key meant), what is taken."""
    from pipeline.config import config_keys, did_you_mean, nearest

    settings = config_keys()
    hints = []
    for key in unknown:
        near = did_you_mean(key, accepted)
        close = nearest(key, [setting.rsplit(".", 1)[-1] for setting in settings])
        if not near and close:
            setting = next(s for s in settings if s.rsplit(".", 1)[-1] == close[0])
            near = f" (a pipeline setting? --set {setting}=...)"
        hints.append(f"{key!r}{near}")
    return (
        f"{name}: unknown hyperparameter(s) {', '.join(hints)}; {name} takes {', '.join(accepted)}. Pipeline "
        "settings are config keys, e.g. --set trainer.max_epochs=5"
    )


def validate_hparams(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the model's accepted keys and types (strictly: 5 is no float for an
    int, "5" no int); raises ``HyperparameterError`` naming the key and listing what is accepted."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    accepted = hyperparameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise HyperparameterError(unknown_hparams_message(name, unknown, sorted(accepted)))
    checked = {}
    for key, value in params.items():
        kind = accepted[key][0]
        try:
            checked[key] = TypeAdapter(kind, config=ConfigDict(strict=True)).validate_python(value)
        except ValidationError as exc:
            expected = getattr(kind, "__name__", str(kind))
            reason = exc.errors()[0]["msg"]
            raise HyperparameterError(
                f"{name}: {key}={value!r} is not a valid {expected} ({reason})"
            ) from None
    return checked


def build_model(
    name: str,
    n_users: int,
    n_items: int,
    attributes: Attributes | None = None,
    knowledge_graph: KnowledgeGraph | None = None,
    **hparams: Any,
) -> nn.Module:
    """The model, built with the split's sizes and its constructor's hyperparameters (keys its data
    module reads, like ``batch_size``, stay out). The data a model declares it is built from comes as
    constructor arguments too: the split's encoded ``attributes`` (``UsesAttributes``; None = an
    ids-only dataset) and the item ``knowledge_graph`` (``UsesKnowledgeGraph``; None = no graph)."""
    from training.models.capabilities import UsesAttributes, UsesKnowledgeGraph, can

    factory = get_spec(name).factory
    arguments = inspect.signature(factory.__init__).parameters
    own = {key: value for key, value in hparams.items() if key in arguments and key not in DATA_ARGUMENTS}
    if can(factory, UsesAttributes):
        own["attributes"] = attributes
    if can(factory, UsesKnowledgeGraph):
        own["knowledge_graph"] = knowledge_graph
    return factory(n_users=n_users, n_items=n_items, **own)


def uses_attributes(name: str) -> bool:
    from training.models.capabilities import UsesAttributes, can

    return can(get_spec(name).factory, UsesAttributes)


def uses_knowledge_graph(name: str) -> bool:
    from training.models.capabilities import UsesKnowledgeGraph, can

    return can(get_spec(name).factory, UsesKnowledgeGraph)


def pipeline_models() -> list[str]:
    """Models that get a ``recsys_<name>`` DAG (baselines are evaluated inside every run instead)."""
    return [name for name, spec in MODELS.items() if spec.kind != "baseline"]


register(
    ModelSpec(
        "popularity", "baseline", "training.models.baselines:Popularity", "most-interacted items", False
    )
)
register(
    ModelSpec("itemknn", "baseline", "training.models.baselines:ItemKNN", "item-based kNN, cosine", False)
)
register(ModelSpec("bpr", "general", "training.models.bpr:BPR", "matrix factorisation, BPR pairwise loss"))
register(
    ModelSpec("userknn", "baseline", "training.models.baselines:UserKNN", "user-based kNN, Pearson", False)
)
register(ModelSpec("neumf", "general", "training.models.neumf:NeuMF", "neural CF: GMF + MLP (NeuMF)"))
register(ModelSpec("lightgcn", "general", "training.models.lightgcn:LightGCN", "graph CF, light propagation"))
register(ModelSpec("sasrec", "sequential", "training.models.sasrec:SASRec", "self-attentive next-item model"))
register(
    ModelSpec(
        "gsasrec", "sequential", "training.models.gsasrec:GSASRec", "SASRec trained with gBCE negatives"
    )
)
register(
    ModelSpec(
        "bert4rec", "sequential", "training.models.bert4rec:BERT4Rec", "bidirectional transformer, cloze task"
    )
)
register(ModelSpec("gru4rec", "sequential", "training.models.gru4rec:GRU4Rec", "GRU session/sequence model"))
register(ModelSpec("narm", "sequential", "training.models.narm:NARM", "attentive GRU encoder (NARM)"))
register(
    ModelSpec("hybridmf", "general", "training.models.hybridmf:HybridMF", "MF with user/item side features")
)
register(ModelSpec("mf", "example", "training.models.mf:RatingMF", "latent factor model on explicit ratings"))
register(
    ModelSpec("content", "general", "training.models.content:ContentBased", "TF-IDF item attributes", False)
)
register(
    ModelSpec("twotower", "example", "training.models.twotower:TwoTower", "two-tower with side features")
)
register(ModelSpec("deepfm", "example", "training.models.deepfm:DeepFM", "CTR ranker: FM + deep tower"))
register(ModelSpec("din", "example", "training.models.din:DIN", "CTR ranker: attention over history"))
register(ModelSpec("dien", "example", "training.models.dien:DIEN", "CTR ranker: GRU + attentional GRU"))
register(ModelSpec("cke", "general", "training.models.cke:CKE", "knowledge-graph embedding CF (TransR)"))
register(
    ModelSpec("reinforce", "example", "training.models.reinforce:TopKReinforce", "off-policy top-K REINFORCE")
)
register(
    ModelSpec("ease", "general", "training.models.ease:EASE", "EASE: closed-form item autoencoder", False)
)
register(
    ModelSpec(
        "multvae",
        "user_rows",
        "training.models.multvae:MultVAE",
        "Mult-VAE: variational item-set autoencoder",
    )
)
