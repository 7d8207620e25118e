"""The data schema: every user and item attribute column of a dataset, declared once.

A schema names each attribute and its type; everything downstream is derived from it: how a raw
value is parsed and validated (bad values are quarantined with a reason), the columns of the snapshot
and of the offline feature tables, the Feast feature views, the point-in-time examples, the integer
and numeric inputs of the attribute-aware models (``training.attributes``), what a request may send
for a user or item the model has never seen, and the drift columns. Adding an attribute to a dataset
is an edit of its schema file and nothing else.

Types:
- ``numeric``: a number (int or float). ``min``/``max`` bound valid values; outside them (or not a
  number) the value becomes unknown and the cell is quarantined with the reason. Models see it both
  standardised and as a bucket code (``bins``: edges; default: quantiles of the training rows).
- ``categorical``: one token (a segment, a country, a brand). Values seen fewer than ``min_count``
  times share the unknown code.
- ``list``: several tokens in one raw cell, split by ``separator`` (genres, tags).
- ``text``: free text; its words (the first ``max_tokens``, each seen in at least ``min_count``
  rows) are embedded and averaged.

Where a schema comes from: ``source.schema`` in the pipeline config, a file path or the name of a file
in ``configs/schemas/`` (``movielens`` is the built-in default of every MovieLens layout and of event
files without a schema), or a mapping written inline.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "configs" / "schemas"
DEFAULT_SCHEMA = "movielens"

FieldType = Literal["numeric", "categorical", "list", "text"]
Entity = Literal["user", "item"]

# Columns the pipeline itself writes next to the attributes; an attribute may not take these names.
RESERVED = frozenset(
    {
        "event_id",
        "user_id",
        "item_id",
        "timestamp",
        "event_timestamp",
        "rating",
        "user_interaction_count",
        "user_mean_rating",
        "recent_items",
        "item_interaction_count",
        "item_mean_rating",
        "source_file",
        "source_line",
    }
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class SchemaError(ValueError):
    """A schema declaration is wrong; the message names the field and what would fix it."""


class FieldSpec(BaseModel):
    """One attribute column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldType
    description: str = ""
    min: float | None = None  # numeric: smallest valid value
    max: float | None = None  # numeric: largest valid value
    bins: list[float] | None = None  # numeric: bucket edges (ascending)
    bin_width: float | None = Field(None, gt=0)  # numeric: fixed-width buckets instead (e.g. 5 years)
    n_bins: int = Field(8, ge=2, le=256)  # numeric: quantile buckets when neither is given
    separator: str = Field("|", min_length=1)  # list: between the tokens of one raw cell
    max_tokens: int = Field(8, ge=1, le=256)  # list/text: tokens kept per row
    min_count: int = Field(1, ge=1)  # categorical/list/text: rarer tokens share the unknown code
    drop_pattern: str | None = None  # text: regex removed before splitting into words

    @property
    def drop_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.drop_pattern) if self.drop_pattern else None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        if self.bins is not None and list(self.bins) != sorted(set(self.bins)):
            raise ValueError(f"bins must be strictly ascending, got {self.bins}")
        if self.bins is not None and self.bin_width is not None:
            raise ValueError("give bins or bin_width, not both")
        if self.drop_pattern is not None:
            try:
                re.compile(self.drop_pattern)
            except re.error as exc:
                raise ValueError(
                    f"drop_pattern {self.drop_pattern!r} is not a regular expression: {exc}"
                ) from None
        return self

    @property
    def is_tokens(self) -> bool:
        """Several codes per row (list, text) rather than one (categorical, numeric bucket)."""
        return self.type in ("list", "text")


class DataSchema(BaseModel):
    """The attributes of users and items; the order of declaration is the order of model inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    description: str = ""
    user_features: dict[str, FieldSpec] = Field(default_factory=dict)
    item_features: dict[str, FieldSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> DataSchema:
        for entity, fields in (("user_features", self.user_features), ("item_features", self.item_features)):
            for name in fields:
                if not _NAME.match(name):
                    raise ValueError(
                        f"{entity}.{name}: attribute names are lower-case identifiers "
                        "(letters, digits, '_', starting with a letter)"
                    )
                if name in RESERVED:
                    raise ValueError(f"{entity}.{name}: the pipeline writes a column of that name; rename it")
        shared = sorted(set(self.user_features) & set(self.item_features))
        if shared:
            raise ValueError(
                f"{shared}: declared for users and items; examples hold both side by side, so give "
                "them distinct names (e.g. user_country, item_country)"
            )
        return self

    def fields(self, entity: Entity) -> dict[str, FieldSpec]:
        return self.user_features if entity == "user" else self.item_features

    def fingerprint(self) -> str:
        """Short content hash (the name and descriptions excluded: they change no data)."""
        body = {
            entity: {n: f.model_dump(exclude={"description"}) for n, f in self.fields(entity).items()}
            for entity in ("user", "item")
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]

    def save(self, path: Path) -> Path:
        """JSON in declaration order (it is the order of the model inputs: never sort the keys)."""
        from pipeline.artifacts import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> DataSchema:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SchemaError(f"{path}: cannot read the schema: {exc}") from None
        try:
            return cls.model_validate(data or {})
        except ValueError as exc:
            raise SchemaError(f"{path}: {exc}") from None


def resolve_schema(declared: str | dict[str, Any] | None) -> DataSchema:
    """The schema ``source.schema`` names: a mapping, a file path, a name in configs/schemas, or None
    for the built-in default."""
    if isinstance(declared, dict):
        try:
            return DataSchema.model_validate(declared)
        except ValueError as exc:
            raise SchemaError(f"source.schema: {exc}") from None
    name = declared or DEFAULT_SCHEMA
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise SchemaError(f"source.schema: {path} does not exist")
        return DataSchema.load(path)
    builtin = SCHEMA_DIR / f"{name}.yaml"
    if not builtin.is_file():
        known = sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml"))
        raise SchemaError(f"source.schema: no schema named {name!r}; built in: {known}, or give a file path")
    return DataSchema.load(builtin)


def load_schema(path: Path | str | None) -> DataSchema:
    """The schema a manifest points at (``Snapshot.schema`` and its copies), or the built-in default
    for manifests that carry none."""
    return DataSchema.load(path) if path else resolve_schema(None)
