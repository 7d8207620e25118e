"""User and item attributes as model inputs, derived from the data schema (``pipeline/schema.py``).

One generic encoder for every attribute-aware model (two-tower, DeepFM, DIN, DIEN, content-based):
each declared field becomes integer codes (and, for numbers, a standardised value); the torch module
``AttributeEncoder`` turns them into one vector per field. A new attribute in the schema reaches every
one of these models with no code change.

Codes per field (0 always means "unknown / padding"; code ``i + 1`` is ``vocab[i]``):
- ``categorical``: the value; values seen in fewer than ``min_count`` rows share code 0.
- ``numeric``: the bucket (``bins`` edges, ``bin_width`` buckets, or ``n_bins`` quantiles of the rows),
  plus the value standardised over the rows (mean 0, std 1; unknown -> 0) in ``numbers``.
- ``list``: its tokens (first ``max_tokens``, each kept if seen in ``min_count`` rows), right-padded.
- ``text``: its lower-case words after ``drop_pattern`` is removed, kept and truncated like list tokens.

Built once per split from its attribute tables (every catalogue user/item, also those without events,
so items new to the catalogue can be scored), cached in ``split.dir/attributes/`` and copied into
every artifact of a model that uses them: the service encodes a cold user's or item's attributes with
the vocabulary the model was trained on. Attributes are static catalogue data, so reading them for
every row of the split leaks nothing about the future; behaviour (histories, counts) never comes from
here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.artifacts import Split, atomic_path
from pipeline.schema import DataSchema, Entity, FieldSpec, load_schema
from training.rerank import diversity_of_gram
from training.split import SplitIndex

CACHE_DIR = "attributes"
_WORD = re.compile(r"[a-z0-9]+")


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and np.isnan(value)


@dataclass
class FieldEncoding:
    """How one declared field becomes codes: its vocabulary (and, for numbers, buckets and scaling)."""

    name: str
    spec: FieldSpec
    vocab: list[str]
    edges: list[float] = field(default_factory=list)  # numeric bucket edges (bins / quantiles)
    mean: float = 0.0
    std: float = 1.0

    @property
    def width(self) -> int:
        """Codes per row."""
        return self.spec.max_tokens if self.spec.is_tokens else 1

    @property
    def cardinality(self) -> int:
        """Embedding table size (vocabulary + the 0 code)."""
        return len(self.vocab) + 1

    # ---- values -> tokens ---------------------------------------------------------------------
    def tokens(self, value: Any) -> list[str]:
        """The vocabulary tokens a raw value stands for, before the vocabulary filter."""
        spec = self.spec
        if spec.type == "numeric":
            bucket = self.bucket(value)
            return [] if bucket is None else [bucket]
        if spec.type == "list":
            if isinstance(value, str):
                value = value.split(spec.separator)
            if value is None or (not isinstance(value, list | tuple | np.ndarray) and _missing(value)):
                return []
            return [str(v).strip() for v in value if not _missing(v) and str(v).strip()]
        if _missing(value):
            return []
        text = str(value).strip()
        if spec.type == "categorical":
            return [text] if text else []
        if spec.drop_regex is not None:
            text = spec.drop_regex.sub("", text)
        return _WORD.findall(text.lower())

    def bucket(self, value: Any) -> str | None:
        number = _number(value)
        if number is None:
            return None
        if self.spec.bin_width is not None:
            start = np.floor(number / self.spec.bin_width) * self.spec.bin_width
            return f"{start:g}"
        return str(int(np.searchsorted(self.edges, number, side="right")))

    def codes(self, value: Any) -> np.ndarray:
        """(width,) int64 codes of one raw value (unknown tokens dropped, then truncated and padded)."""
        lookup = self._lookup
        kept = [lookup[t] for t in self.tokens(value) if t in lookup][: self.width]
        out = np.zeros(self.width, dtype=np.int64)
        out[: len(kept)] = kept
        return out

    def standardised(self, value: Any) -> float:
        number = _number(value)
        return 0.0 if number is None else float((number - self.mean) / self.std)

    @property
    def _lookup(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            cached = {token: i + 1 for i, token in enumerate(self.vocab)}
            self.__dict__["_lookup_cache"] = cached
        return cached

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec.model_dump(mode="json"),
            "vocab": self.vocab,
            "edges": self.edges,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldEncoding:
        return cls(
            name=data["name"],
            spec=FieldSpec.model_validate(data["spec"]),
            vocab=list(data["vocab"]),
            edges=list(data.get("edges", [])),
            mean=float(data.get("mean", 0.0)),
            std=float(data.get("std", 1.0)),
        )


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else number


def fit_field(name: str, spec: FieldSpec, values: list[Any]) -> FieldEncoding:
    """The encoding of one field, fitted on the values of every row of its entity."""
    encoding = FieldEncoding(name, spec, vocab=[])
    if spec.type == "numeric":
        numbers = np.asarray([n for n in (_number(v) for v in values) if n is not None], dtype=np.float64)
        if len(numbers):
            encoding.mean = float(numbers.mean())
            encoding.std = float(numbers.std()) or 1.0
        if spec.bins is not None:
            encoding.edges = list(spec.bins)
        elif spec.bin_width is None and len(numbers):
            quantiles = np.quantile(numbers, np.linspace(0, 1, spec.n_bins + 1)[1:-1])
            encoding.edges = sorted({float(q) for q in quantiles})
    counts = Counter(token for value in values for token in set(encoding.tokens(value)))
    kept = [token for token, count in counts.items() if count >= spec.min_count]
    if spec.type == "numeric" and spec.bin_width is not None:
        encoding.vocab = sorted(kept, key=float)
    elif spec.type == "numeric":
        encoding.vocab = sorted(kept, key=int)
    else:
        encoding.vocab = sorted(kept)
    return encoding


@dataclass
class EntityAttributes:
    """The encoded attributes of every user (or item) of a split, in its index order.

    ``codes`` concatenates the fields' codes (``offsets[f]`` to ``offsets[f] + width``); ``numbers``
    holds the standardised value of each numeric field. Users have ``n_users`` rows; items
    ``n_items + 1`` (row 0 is padding, all zeros).
    """

    entity: Entity
    fields: list[FieldEncoding]
    codes: np.ndarray  # (N, total width) int64
    numbers: np.ndarray  # (N, numeric fields) float32

    @property
    def offsets(self) -> list[int]:
        return list(np.cumsum([0] + [f.width for f in self.fields])[:-1])

    @property
    def numeric_fields(self) -> list[str]:
        return [f.name for f in self.fields if f.spec.type == "numeric"]

    def encode(self, records: list[dict[str, Any] | None]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, numbers) of raw attribute records (e.g. a Feast row, a request's ``user_features``);
        missing fields and values outside the vocabulary give code 0."""
        width = sum(f.width for f in self.fields)
        codes = np.zeros((len(records), width), dtype=np.int64)
        numbers = np.zeros((len(records), len(self.numeric_fields)), dtype=np.float32)
        for row, record in enumerate(records):
            record = record or {}
            column, numeric = 0, 0
            for encoding in self.fields:
                value = record.get(encoding.name)
                codes[row, column : column + encoding.width] = encoding.codes(value)
                column += encoding.width
                if encoding.spec.type == "numeric":
                    numbers[row, numeric] = encoding.standardised(value)
                    numeric += 1
        return codes, numbers

    def multi_hot(self, types: tuple[str, ...] = ("categorical", "list")) -> torch.Tensor:
        """(N, total vocabulary) 0/1 matrix: which values of the fields of ``types`` each row has.

        The default (categorical and list fields: genres, brand, ...) names what kind of item a row is;
        numbers and free text are left out. Unknown values (code 0) set nothing, so a row without any
        known value is all zeros. What item-item attribute similarity (re-ranking, intra-list
        diversity) is computed from.
        """
        return self.multi_hot_rows(types)[torch.arange(self.codes.shape[0])]

    def multi_hot_rows(self, types: tuple[str, ...] = ("categorical", "list")) -> MultiHotRows:
        """``multi_hot(types)`` row by row on demand: ``rows[index]`` builds only the indexed rows, for a
        catalogue whose (N, vocabulary) matrix would not fit (a million items, tens of thousands of values)."""
        return MultiHotRows(self, types)

    def describe(self) -> dict[str, Any]:
        return {f.name: {"type": f.spec.type, "vocabulary": len(f.vocab)} for f in self.fields}


class MultiHotRows:
    """Rows of ``EntityAttributes.multi_hot`` built when indexed (``rows[index]`` has shape
    ``index.shape + (width,)``), the same values as the whole matrix's rows."""

    def __init__(self, attributes: EntityAttributes, types: tuple[str, ...]) -> None:
        self._blocks = [
            (offset, encoding.width, encoding.cardinality)
            for encoding, offset in zip(attributes.fields, attributes.offsets, strict=True)
            if encoding.spec.type in types
        ]
        self._codes = torch.from_numpy(attributes.codes)
        self._ids: torch.Tensor | None = None  # _value_ids(), built on first use
        # Column 0 of each field's block (unknown / padding) is dropped.
        self.shape: tuple[int, ...] = (
            attributes.codes.shape[0],
            sum(cardinality - 1 for *_, cardinality in self._blocks),
        )

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        codes = self._codes[index.reshape(-1)]
        blocks = []
        for offset, width, cardinality in self._blocks:
            block = torch.zeros(codes.shape[0], cardinality)
            block.scatter_(1, codes[:, offset : offset + width], 1.0)
            blocks.append(block[:, 1:])
        rows = torch.cat(blocks, dim=1) if blocks else torch.zeros(codes.shape[0], 0)
        return rows.reshape(*index.shape, self.shape[1])

    def any(self) -> bool:
        """Whether any row has a known value (a code other than 0) in these fields."""
        return any(bool((self._codes[:, o : o + w] != 0).any()) for o, w, _ in self._blocks)

    def intra_list_diversity(self, lists: torch.Tensor) -> torch.Tensor:
        """``training.rerank.intra_list_diversity(self[lists])`` for (B, L) item lists, from the codes.

        Between 0/1 rows, a dot product is the number of values two items share and a squared norm
        the number of values an item has, so the lists' cosine Gram matrices come from comparing
        their few codes, without building (B, L, vocabulary) rows (the cost of every evaluation
        batch at tens of thousands of values).
        """
        values = self._value_ids()[lists]  # (B, L, W): 0 = no value
        known = values != 0
        shared = (values.unsqueeze(2).unsqueeze(-1) == values.unsqueeze(1).unsqueeze(-2)) & known.unsqueeze(
            2
        ).unsqueeze(-1)
        dots = shared.sum(dim=(-1, -2)).float()  # (B, L, L)
        norms = known.sum(dim=-1).float().sqrt().clamp_min(1e-8)
        return diversity_of_gram(dots / (norms.unsqueeze(2) * norms.unsqueeze(1)))

    def _value_ids(self) -> torch.Tensor:
        """(N, W) every item's distinct values as ids unique across fields; 0 where a field has none,
        and for a repeat of a value already in the row (a 1 in the multi-hot row counts once)."""
        if self._ids is None:
            columns, base = [], 0
            for offset, width, cardinality in self._blocks:
                block = torch.sort(self._codes[:, offset : offset + width], dim=1).values
                repeat = torch.zeros_like(block, dtype=torch.bool)
                repeat[:, 1:] = block[:, 1:] == block[:, :-1]
                columns.append(torch.where((block > 0) & ~repeat, block + base, 0))
                base += cardinality
            self._ids = (
                torch.cat(columns, dim=1) if columns else torch.zeros(self.shape[0], 0, dtype=torch.long)
            )
        return self._ids


@dataclass
class Attributes:
    """Users' and items' encoded attributes for one split (what ``SideFeatures`` used to be)."""

    schema: DataSchema
    users: EntityAttributes
    items: EntityAttributes

    def side(self, entity: Entity) -> EntityAttributes:
        return self.users if entity == "user" else self.items

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / "codes.npz",
            user_codes=self.users.codes,
            user_numbers=self.users.numbers,
            item_codes=self.items.codes,
            item_numbers=self.items.numbers,
        )
        encodings = {
            "schema": self.schema.model_dump(mode="json"),
            "user": [f.to_dict() for f in self.users.fields],
            "item": [f.to_dict() for f in self.items.fields],
        }
        (directory / "encodings.json").write_text(json.dumps(encodings, indent=1))

    @classmethod
    def load(cls, directory: Path) -> Attributes:
        directory = Path(directory)
        encodings = json.loads((directory / "encodings.json").read_text())
        with np.load(directory / "codes.npz") as arrays:
            data = {name: arrays[name] for name in arrays.files}
        sides = {
            entity: EntityAttributes(
                entity,
                [FieldEncoding.from_dict(f) for f in encodings[entity]],
                data[f"{entity}_codes"],
                data[f"{entity}_numbers"],
            )
            for entity in ("user", "item")
        }
        return cls(DataSchema.model_validate(encodings["schema"]), sides["user"], sides["item"])

    @classmethod
    def empty(cls, n_users: int, n_items: int) -> Attributes:
        """No attributes at all (an ids-only dataset): every model still trains on the ids."""
        schema = DataSchema(name="none")
        return cls(
            schema,
            EntityAttributes(
                "user", [], np.zeros((n_users, 0), np.int64), np.zeros((n_users, 0), np.float32)
            ),
            EntityAttributes(
                "item", [], np.zeros((n_items + 1, 0), np.int64), np.zeros((n_items + 1, 0), np.float32)
            ),
        )


def attributes_for(split: Split) -> Attributes:
    """The split's encoded attributes, built on first use and cached (atomically) in the split directory."""
    cache = Path(split.dir) / CACHE_DIR
    if (cache / "encodings.json").exists() and (cache / "codes.npz").exists():
        return Attributes.load(cache)
    attributes = build_attributes(split)
    with atomic_path(cache) as tmp:
        attributes.save(tmp)
    return attributes


def build_attributes(split: Split) -> Attributes:
    """Fit every declared field on the split's attribute tables and encode each user and item."""
    schema = load_schema(split.schema)
    index = SplitIndex.load(split)
    users = _attribute_rows(split, "user", schema)
    items = _attribute_rows(split, "item", schema)
    return Attributes(
        schema,
        encode_side("user", schema, users, index.user_ids, padding=False),
        encode_side("item", schema, items, index.item_ids, padding=True),
    )


def _attribute_rows(split: Split, entity: Entity, schema: DataSchema) -> pd.DataFrame:
    """One row per catalogue user/item (index: id) with its declared attribute columns.

    From the split's attribute table (a copy of the snapshot's, or written by the split from the
    examples' attribute columns).
    """
    key = f"{entity}_id"
    wanted = [key, *schema.fields(entity)]
    table = split.users if entity == "user" else split.items
    if table is None or not Path(table).is_file():
        raise ValueError(
            f"{split.dir}: no {entity} attribute table; run the split stage again (training.split.make_split "
            "writes one)"
        )
    import pyarrow.parquet as pq

    names = set(pq.read_schema(table).names)
    frame = pd.read_parquet(table, columns=[c for c in wanted if c in names])
    frame = frame.astype({key: str}).drop_duplicates(key, keep="last").set_index(key)
    for name in schema.fields(entity):
        if name not in frame.columns:
            frame[name] = None
    return frame


def encode_side(
    entity: Entity, schema: DataSchema, rows: pd.DataFrame, ids: list[str], padding: bool
) -> EntityAttributes:
    """Fit ``schema``'s fields of ``entity`` on ``rows`` (index: id) and encode the entities ``ids`` in
    that order (``padding``: a zero row 0 in front, the item index convention)."""
    fields = [fit_field(name, spec, rows[name].tolist()) for name, spec in schema.fields(entity).items()]
    aligned = rows.reindex(ids)
    # A frame without attribute columns gives no records at all: one empty record per entity instead.
    records = aligned.to_dict("records") if len(aligned.columns) else [{}] * len(aligned)
    side = EntityAttributes(entity, fields, np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32))
    codes, numbers = side.encode(records)
    if padding:  # item index 0 is padding: a row of zeros in front
        codes = np.concatenate([np.zeros((1, codes.shape[1]), np.int64), codes])
        numbers = np.concatenate([np.zeros((1, numbers.shape[1]), np.float32), numbers])
    side.codes, side.numbers = codes, numbers
    return side


# ------------------------------------------------------------------------------------------- torch


class AttributeEncoder(nn.Module):
    """One vector of size ``dim`` per declared field of one entity side: (B, fields, dim).

    categorical / numeric bucket: an embedding of the code; a numeric field adds its standardised
    value times a learned vector (zero at start, so training starts from the bucket alone); list and
    text: the masked mean (or sum, ``list_pooling="sum"``) of the token embeddings. The encoded rows of
    the split live in buffers, so ``rows(index)`` gives a batch's inputs and the state dict carries
    them; ``encode``d attributes of entities the model has never seen go through ``vectors``.
    """

    def __init__(
        self,
        side: EntityAttributes,
        dim: int,
        list_pooling: Literal["mean", "sum"] = "mean",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.names = [f.name for f in side.fields]
        self.kinds = [f.spec.type for f in side.fields]
        self.widths = [f.width for f in side.fields]
        self.offsets = [int(o) for o in side.offsets]
        self.list_pooling = list_pooling
        self.dim = dim
        self.tables = nn.ModuleList(
            nn.Embedding(f.cardinality, dim, padding_idx=0 if f.spec.is_tokens else None) for f in side.fields
        )
        numeric = [i for i, kind in enumerate(self.kinds) if kind == "numeric"]
        self.numeric_positions = numeric
        self.scale = nn.Parameter(torch.zeros(len(numeric), dim))
        if init_std is not None:
            for table in self.tables:
                nn.init.normal_(table.weight, std=init_std)
        for table, kind in zip(self.tables, self.kinds, strict=True):
            if kind in ("list", "text"):
                with torch.no_grad():
                    table.weight[0].zero_()
        self.register_buffer("codes", torch.from_numpy(side.codes.astype(np.int64)))
        self.register_buffer("numbers", torch.from_numpy(side.numbers.astype(np.float32)))

    @property
    def n_fields(self) -> int:
        return len(self.names)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, numbers) of rows ``index`` (any shape) of the split's entities."""
        return self.codes[index], self.numbers[index]

    def vectors(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(..., fields, dim) field vectors of encoded attributes (``codes`` (..., W), ``numbers`` (..., N))."""
        if not self.names:
            return codes.new_zeros((*codes.shape[:-1], 0, self.dim), dtype=torch.float32)
        out = []
        numeric = 0
        for table, kind, offset, width in zip(
            self.tables, self.kinds, self.offsets, self.widths, strict=True
        ):
            field_codes = codes[..., offset : offset + width]
            if kind in ("list", "text"):
                embedded = table(field_codes)
                mask = (field_codes > 0).unsqueeze(-1).to(embedded.dtype)
                pooled = (embedded * mask).sum(dim=-2)
                if kind == "text" or self.list_pooling == "mean":
                    pooled = pooled / mask.sum(dim=-2).clamp(min=1.0)
                out.append(pooled)
                continue
            vector = table(field_codes[..., 0])
            if kind == "numeric":
                vector = vector + numbers[..., numeric : numeric + 1] * self.scale[numeric]
                numeric += 1
            out.append(vector)
        return torch.stack(out, dim=-2)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """(..., fields, dim) field vectors of rows ``index`` of the split's entities."""
        return self.vectors(*self.rows(index))

    def with_unknown_row(self) -> AttributeEncoder:
        """Append an all-unknown row (used as the row of entities outside the split's index)."""
        self.codes = torch.cat([self.codes, torch.zeros_like(self.codes[:1])])
        self.numbers = torch.cat([self.numbers, torch.zeros_like(self.numbers[:1])])
        return self
