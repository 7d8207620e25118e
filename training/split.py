"""Split the point-in-time examples into train / valid / test, once per (data version, protocol, seed).

Every model and baseline of a run reads the same split, so the directory is keyed by content and
written atomically; a second call finds the manifest and returns it (idempotent), which is what lets
the DAGs of several models share it without coordination.

Protocols (all deterministic for the same data, protocol and seed; ties in time broken by event_id):

- ``temporal``: one global time cut. The last ``test_share`` of events (by time) is test, the
  ``valid_share`` before it is valid, the rest train. Mirrors production: the future is unseen.
- ``leave_last_out``: per user, by time, the last event is test and the second-to-last valid.
  Users with fewer than 3 events keep everything in train (they could not be evaluated anyway).
- ``random_holdout``: per user, a seeded shuffle split 8:1:1 (``1 - valid - test : valid : test``).
  Users with fewer than 3 events keep everything in train; users with at least 3 get at least one
  valid and one test event.

Histories: the features stage serves each example the user's ``recent_items`` before it, whatever part
those events land in. The split keeps in each part's lists only the entries of events of the parts a
model may see there (``VISIBLE_PARTS``: train for train and valid rows, train + valid for test rows), so
under ``random_holdout`` a validation history never names a test event, and training and validation
read the train and valid parts alone: the test part is opened only to test.

The index space covers the whole catalogue of the examples (every item id seen as an event or in a
``recent_items`` history), sorted, so item index ``i`` (1-based, 0 = padding) is stable for a data
version regardless of which items happen to fall into train.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.artifacts import FeatureSet, Split, atomic_path
from pipeline.config import SplitConfig
from pipeline.layout import Layout
from pipeline.schema import Entity, load_schema

MANIFEST = "split.json"
REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "event_timestamp")
PARTS = ("train", "valid", "test")
KNOWLEDGE_GRAPH = "knowledge_graph.parquet"


def make_split(feature_set: FeatureSet, cfg: SplitConfig, layout: Layout) -> Split:
    """Split ``feature_set.examples`` by ``cfg.protocol``; return the existing split if already made."""
    out_dir = layout.split(feature_set.namespace or feature_set.data_version, split_name(cfg))
    existing = _load_valid_manifest(out_dir)
    if existing is not None:
        return existing

    examples = pd.read_parquet(feature_set.examples)
    missing = [c for c in REQUIRED_COLUMNS if c not in examples.columns]
    if missing:
        raise ValueError(
            f"{feature_set.examples}: examples lack columns {missing}; the features stage must write "
            f"{list(REQUIRED_COLUMNS)} (see docs/architecture.md)"
        )
    if examples.empty:
        raise ValueError(f"{feature_set.examples}: no examples to split")
    examples = examples.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    part = assign_parts(examples, cfg)

    # The catalogue: every item of the events and histories, plus items with attributes but no event
    # yet (new products), which attribute-aware models can still score.
    item_ids = catalogue_items(examples, attribute_ids(feature_set.items, "item_id"))
    user_ids = sorted(examples["user_id"].astype(str).unique().tolist())
    if "recent_items" in examples.columns:
        examples["recent_items"] = visible_recent_items(examples, part)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in PARTS:
            examples[part == name].reset_index(drop=True).to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "item_ids.json").write_text(json.dumps(item_ids))
        (tmp / "user_ids.json").write_text(json.dumps(user_ids))
        knowledge_graph = None
        if feature_set.knowledge_graph is not None:  # a copy keeps the split self-contained
            shutil.copyfile(feature_set.knowledge_graph, tmp / KNOWLEDGE_GRAPH)
            knowledge_graph = out_dir / KNOWLEDGE_GRAPH
        copies = {}
        for name, source in (
            ("schema", feature_set.schema),
            ("users", feature_set.users),
            ("items", feature_set.items),
        ):
            if source is not None and Path(source).is_file():
                target = f"{name}{Path(source).suffix}"
                shutil.copyfile(source, tmp / target)
                copies[name] = out_dir / target
        # Without a snapshot's attribute table (examples alone, as in tests) the split writes one from the
        # attribute columns of the examples: attributes never send training to the test part either.
        schema = load_schema(feature_set.schema)
        tables: tuple[tuple[str, Entity], ...] = (("users", "user"), ("items", "item"))
        for name, entity in tables:
            if name not in copies:
                attribute_table(examples, entity, schema.fields(entity)).to_parquet(
                    tmp / f"{name}.parquet", index=False
                )
                copies[name] = out_dir / f"{name}.parquet"
        counts = {
            "events": len(examples),
            "train": int((part == "train").sum()),
            "valid": int((part == "valid").sum()),
            "test": int((part == "test").sum()),
            "users": len(user_ids),
            "items": len(item_ids),
            "valid_users": int(examples.loc[part == "valid", "user_id"].nunique()),
            "test_users": int(examples.loc[part == "test", "user_id"].nunique()),
        }
        split = Split(
            data_version=feature_set.data_version,
            protocol=cfg.protocol,
            seed=cfg.seed,
            dir=out_dir,
            train=out_dir / "train.parquet",
            valid=out_dir / "valid.parquet",
            test=out_dir / "test.parquet",
            item_ids=out_dir / "item_ids.json",
            user_ids=out_dir / "user_ids.json",
            counts=counts,
            knowledge_graph=knowledge_graph,
            feature_namespace=feature_set.namespace,
            visible_histories=True,
            **copies,
        )
        split.save(tmp / MANIFEST)
    return split


# The split parts a model may be shown as input (histories, exclusions) when it trains on, is validated
# on or is tested on a part. The split writes each part's histories already limited to them, so
# training and validation never need to open the test part.
VISIBLE_PARTS = {"train": ("train",), "valid": ("train",), "test": ("train", "valid")}


def without_hidden_events(rows: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """The ``recent_items`` of ``rows`` without the entries that stand for a hidden event.

    ``events``: every event of the split (``user_id``, ``item_id``, ``event_timestamp``, ``event_id``)
    with a boolean ``hidden`` (its part is one the model may not see). A row's ``recent_items`` lists
    the items of its user's last events strictly before its ``event_timestamp``, in (time, event_id)
    order (features/tables.py), so entry k of a list of n stands for the k-th of the user's last n such
    events; the entries whose event is hidden go. A list that does not match the user's events that way
    loses every item the user has in a hidden event instead, so nothing hidden is ever kept.
    """
    events = events.sort_values(["user_id", "event_timestamp", "event_id"], kind="stable")
    users = events["user_id"].astype(str).to_numpy()
    stamps = events["event_timestamp"].to_numpy()
    items = events["item_id"].astype(str).to_numpy()
    hidden = events["hidden"].to_numpy(dtype=bool)
    starts = dict(zip(*np.unique(users, return_index=True), strict=True))
    kept: list[list[str]] = []
    for user, stamp, recent in zip(
        rows["user_id"].astype(str), rows["event_timestamp"].to_numpy(), rows["recent_items"], strict=True
    ):
        recent = [str(i) for i in (recent if recent is not None else [])]
        start = starts.get(user, 0)
        end = start + int(np.searchsorted(users[start:], user, side="right"))
        before = start + int(np.searchsorted(stamps[start:end], stamp, side="left"))
        window = slice(before - len(recent), before)
        if before - len(recent) >= start and items[window].tolist() == recent:
            kept.append([i for i, h in zip(recent, hidden[window], strict=True) if not h])
        else:
            gone = set(items[start:end][hidden[start:end]])
            kept.append([i for i in recent if i not in gone])
    return pd.Series(kept, index=rows.index, dtype=object)


def visible_recent_items(examples: pd.DataFrame, part: np.ndarray) -> pd.Series:
    """Each row's ``recent_items`` without the entries of events its part may not see (``VISIBLE_PARTS``).

    ``examples`` sorted by (time, event_id); ``part`` the part of every row. Only a row with a hidden
    event of its user strictly before it can hold one (``recent_items`` lists earlier events only), so
    the others keep their list as served and the per-row matching runs on the rest alone.
    """
    recent = examples["recent_items"].copy()
    users = examples["user_id"].astype(str)
    stamps = examples["event_timestamp"]
    events = examples[["event_id", "user_id", "item_id", "event_timestamp"]]
    for name, visible in VISIBLE_PARTS.items():
        rows = part == name
        hidden = ~np.isin(part, visible)
        if not rows.any() or not hidden.any():
            continue
        first_hidden = stamps[hidden].groupby(users[hidden]).min()
        limit = users[rows].map(first_hidden)  # NaT for a user without a hidden event: never later
        affected = np.zeros(len(examples), dtype=bool)
        affected[np.flatnonzero(rows)] = (stamps[rows] > limit).to_numpy()
        if affected.any():
            kept = without_hidden_events(examples[affected], events.assign(hidden=hidden))
            recent[affected] = kept.to_numpy()
    return recent


def attribute_table(examples: pd.DataFrame, entity: str, fields: Iterable[str]) -> pd.DataFrame:
    """One row per ``entity`` id of ``examples`` with the attribute ``fields`` the examples carry (the
    latest row's values)."""
    key = f"{entity}_id"
    columns = [key, *(f for f in fields if f in examples.columns and f != key)]
    return examples[columns].astype({key: str}).drop_duplicates(key, keep="last").reset_index(drop=True)


def split_name(cfg: SplitConfig) -> str:
    """The split's directory name: every setting that changes which example lands in which part."""
    return f"{cfg.protocol}-seed{cfg.seed}-valid{cfg.valid_share:g}-test{cfg.test_share:g}"


def assign_parts(examples: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """Part name ("train"/"valid"/"test") of every row; ``examples`` sorted by (time, event_id)."""
    n = len(examples)
    part = np.full(n, "train", dtype=object)
    if cfg.protocol == "temporal":
        n_test = int(round(n * cfg.test_share))
        n_valid = int(round(n * cfg.valid_share))
        part[n - n_test :] = "test"
        part[n - n_test - n_valid : n - n_test] = "valid"
        return part

    users = examples["user_id"].astype(str).to_numpy()
    if cfg.protocol == "leave_last_out":
        # Rows are in time order, so "last by time" = highest position within the user's rows.
        from_end = examples.groupby(users, sort=False).cumcount(ascending=False).to_numpy()
        size = examples.groupby(users, sort=False)["event_id"].transform("size").to_numpy()
        eligible = size >= 3
        part[eligible & (from_end == 0)] = "test"
        part[eligible & (from_end == 1)] = "valid"
        return part

    if cfg.protocol == "random_holdout":
        rng = np.random.default_rng(cfg.seed)
        # One random key per row drawn in a canonical order (user, time, event_id), so the result
        # depends only on the data and the seed, not on the input row order.
        canonical = np.lexsort((examples["event_id"].to_numpy(), np.arange(n), users))
        keys = np.empty(n)
        keys[canonical] = rng.random(n)
        frame = pd.DataFrame({"user": users, "key": keys})
        rank = frame.groupby("user", sort=False)["key"].rank(method="first").to_numpy().astype(int) - 1
        size = frame.groupby("user", sort=False)["key"].transform("size").to_numpy()
        n_test = np.maximum(1, np.floor(size * cfg.test_share + 0.5)).astype(int)
        n_valid = np.maximum(1, np.floor(size * cfg.valid_share + 0.5)).astype(int)
        eligible = size >= 3
        part[eligible & (rank < n_test)] = "test"
        part[eligible & (rank >= n_test) & (rank < n_test + n_valid)] = "valid"
        return part

    raise ValueError(
        f"unknown split protocol {cfg.protocol!r}; use temporal, leave_last_out or random_holdout"
    )


def attribute_ids(table: Path | None, key: str) -> list[str]:
    """The ids of an attribute table (``FeatureSet.users``/``items``); [] without one."""
    if table is None or not Path(table).is_file():
        return []
    return pd.read_parquet(table, columns=[key])[key].astype(str).tolist()


def catalogue_items(examples: pd.DataFrame, extra: list[str] | None = None) -> list[str]:
    """Every item id of the examples (events and histories) and ``extra`` ones, sorted: the model's
    item index space."""
    items = set(examples["item_id"].astype(str).unique().tolist()) | set(extra or [])
    if "recent_items" in examples.columns:
        for history in examples["recent_items"]:
            if history is not None:
                items.update(str(i) for i in history)
    return sorted(items)


def _load_valid_manifest(out_dir: Path) -> Split | None:
    manifest = out_dir / MANIFEST
    if not manifest.exists():
        return None
    try:
        split = Split.load(manifest)
    except (ValueError, TypeError, KeyError):
        return None
    if not split.visible_histories:  # written before histories were limited per part: cut it again
        return None
    paths: tuple[Path, ...] = (split.train, split.valid, split.test, split.item_ids, split.user_ids)
    paths += (split.knowledge_graph,) if split.knowledge_graph is not None else ()
    return split if all(Path(p).exists() for p in paths) else None


@dataclass
class SplitIndex:
    """The id <-> index maps of a split (item index 1-based, 0 = padding; user index 0-based)."""

    item_ids: list[str]
    user_ids: list[str]

    @classmethod
    def load(cls, split: Split) -> SplitIndex:
        return cls(json.loads(Path(split.item_ids).read_text()), json.loads(Path(split.user_ids).read_text()))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {user: u for u, user in enumerate(self.user_ids)}

    def items_of(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["item_id"].astype(str).map(self.item_index).to_numpy(dtype=np.int64)

    def users_of(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["user_id"].astype(str).map(self.user_index).to_numpy(dtype=np.int64)


def read_part(split: Split, part: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One part of the split, sorted by (time, event_id)."""
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; use one of {PARTS}")
    frame = pd.read_parquet(getattr(split, part), columns=columns)
    return frame.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)


def interaction_matrix(frame: pd.DataFrame, index: SplitIndex) -> sp.csr_matrix:
    """Binary CSR (n_users, n_items + 1) of the rows of ``frame`` (column 0 = padding, always empty)."""
    rows = index.users_of(frame)
    cols = index.items_of(frame)
    data = np.ones(len(rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(index.n_users, index.n_items + 1))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # duplicates (re-interactions) summed by the constructor: keep it binary
    return matrix


def train_matrix(split: Split) -> sp.csr_matrix:
    """The training user x item matrix of ``split`` (n_users, n_items + 1), binary."""
    index = SplitIndex.load(split)
    return interaction_matrix(
        read_part(split, "train", ["event_id", "user_id", "item_id", "event_timestamp"]), index
    )
