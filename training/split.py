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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from pipeline.arrow_ids import ARROW_ID_STRINGS, arrow_strings
from pipeline.artifacts import FeatureSet, Split, atomic_path
from pipeline.config import SplitConfig
from pipeline.duckdb_connection import connection, sql_literal
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

    source = pq.ParquetFile(feature_set.examples)
    schema = source.schema_arrow.remove_metadata()  # pandas' index metadata would not fit the parts
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(
            f"{feature_set.examples}: examples lack columns {missing}; the features stage must write "
            f"{list(REQUIRED_COLUMNS)} (see docs/architecture.md)"
        )
    if source.metadata.num_rows == 0:
        raise ValueError(f"{feature_set.examples}: no examples to split")
    # The parts are decided on the event columns alone; every column (the histories are most of the
    # bytes) then streams from the file in (time, event_id) order, a batch of rows at a time.
    events, order = events_in_time_order(feature_set.examples)
    part = assign_parts(events, cfg)
    histories = HistoryFilter(events, part) if "recent_items" in schema.names else None

    history_items: set[str] = set()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        writers = {name: pq.ParquetWriter(tmp / f"{name}.parquet", schema) for name in PARTS}
        try:
            first = 0
            for batch in rows_in_time_order(feature_set.examples, order, schema):
                rows = np.arange(first, first + batch.num_rows)
                if not np.array_equal(
                    batch.column("event_id").to_numpy(), events["event_id"].to_numpy()[rows]
                ):
                    raise RuntimeError(
                        f"{feature_set.examples}: rows came back out of (time, event_id) order"
                    )
                if histories is not None:
                    recent = batch.column("recent_items")
                    history_items.update(pc.unique(pc.list_flatten(recent)).to_pylist())
                    batch = batch.set_column(
                        schema.get_field_index("recent_items"),
                        "recent_items",
                        histories.visible(rows, recent),
                    )
                for name in PARTS:
                    writers[name].write_table(batch.filter(pa.array(part[rows] == name)))
                first += batch.num_rows
        finally:
            for writer in writers.values():
                writer.close()

        # The catalogue: every item of the events and histories, plus items with attributes but no event
        # yet (new products), which attribute-aware models can still score.
        item_ids = sorted(
            set(pc.unique(arrow_strings(events["item_id"])).to_pylist())
            | {str(i) for i in history_items if i is not None}
            | set(attribute_ids(feature_set.items, "item_id"))
        )
        user_ids = sorted(pc.unique(arrow_strings(events["user_id"])).to_pylist())
        (tmp / "item_ids.json").write_text(json.dumps(item_ids))
        (tmp / "user_ids.json").write_text(json.dumps(user_ids))
        knowledge_graph = None
        if feature_set.knowledge_graph is not None:  # a copy keeps the split self-contained
            shutil.copyfile(feature_set.knowledge_graph, tmp / KNOWLEDGE_GRAPH)
            knowledge_graph = out_dir / KNOWLEDGE_GRAPH
        copies = {}
        for name, source_path in (
            ("schema", feature_set.schema),
            ("users", feature_set.users),
            ("items", feature_set.items),
        ):
            if source_path is not None and Path(source_path).is_file():
                target = f"{name}{Path(source_path).suffix}"
                shutil.copyfile(source_path, tmp / target)
                copies[name] = out_dir / target
        # Without a snapshot's attribute table (examples alone, as in tests) the split writes one from the
        # attribute columns of the examples: attributes never send training to the test part either.
        attributes = load_schema(feature_set.schema)
        tables: tuple[tuple[str, Entity], ...] = (("users", "user"), ("items", "item"))
        for name, entity in tables:
            if name not in copies:
                attribute_table(
                    attribute_columns(feature_set.examples, order, entity, attributes.fields(entity)),
                    entity,
                    attributes.fields(entity),
                ).to_parquet(tmp / f"{name}.parquet", index=False)
                copies[name] = out_dir / f"{name}.parquet"
        counts = {
            "events": len(events),
            "train": int((part == "train").sum()),
            "valid": int((part == "valid").sum()),
            "test": int((part == "test").sum()),
            "users": len(user_ids),
            "items": len(item_ids),
            "valid_users": int(events.loc[part == "valid", "user_id"].nunique()),
            "test_users": int(events.loc[part == "test", "user_id"].nunique()),
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


SPLIT_BATCH_ROWS = 1 << 18  # rows of examples in memory at once while the parts are written


def timestamps_ns(values: pa.ChunkedArray | pa.Array | pd.Series) -> np.ndarray:
    """Instants as int64 nanoseconds since the epoch (naive times read as UTC), for sorting and comparing."""
    if isinstance(values, pd.Series):
        return pd.to_datetime(values, utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_timestamp(values.type):
        values = pc.cast(values, pa.timestamp("ns", "UTC"))
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[values.type.unit]
    return values.cast(pa.int64()).to_numpy() * scale


def search_sorted(
    haystack: np.ndarray, needles: np.ndarray, side: str = "left", order: np.ndarray | None = None
) -> np.ndarray:
    """``np.searchsorted(haystack, needles, side)``, with the needles searched in ascending order.

    Why: NumPy's binary search starts from the previous needle's position when the needles ascend, so
    sorted needles walk the haystack once, in the cache; needles in random order miss the cache at
    every step once the haystack outgrows it. ``order``: an argsort of ``needles`` the caller has."""
    order = np.argsort(needles, kind="stable") if order is None else order
    positions = np.empty(len(needles), dtype=np.intp)
    positions[order] = np.searchsorted(haystack, needles[order], side=side)  # type: ignore[call-overload]
    return positions


class UserTimelines:
    """Every event of the split by user, in (time, event_id) order: where each row's history lies.

    A row's ``recent_items`` lists the items of its user's last events strictly before its time, oldest
    first (features/tables.py), so entry k of a list of n stands for the event at position
    ``before - n + k`` of the user's timeline, ``before`` being where the user's events at or after the
    row's time begin. Positions are found for whole arrays of rows at once (one sorted int64 key per
    event: user code above, the rank of its time below), so no row is visited in Python.
    """

    def __init__(self, user_codes: np.ndarray, times: np.ndarray, event_ids: np.ndarray, items: pa.Array):
        order = np.lexsort((event_ids, times, user_codes))
        self.order = order
        self.distinct_times = np.unique(times)
        self.stride = len(self.distinct_times) + 1
        ranks = search_sorted(self.distinct_times, times[order])
        self.keys = user_codes[order].astype(np.int64) * self.stride + ranks
        self.items = items.take(pa.array(order))

    def windows(self, user_codes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: where its user's timeline starts, where its events at or after ``times`` begin, and
        where the timeline ends."""
        base = user_codes.astype(np.int64) * self.stride
        # One order for the three searches: rows come in time order, so rows of one user keep their
        # time order and base + rank ascends in it too (any order gives the same positions).
        order = np.argsort(base, kind="stable")
        start = search_sorted(self.keys, base, order=order)
        before = search_sorted(self.keys, base + np.searchsorted(self.distinct_times, times), order=order)
        end = search_sorted(self.keys, base + self.stride, order=order)
        return start, before, end

    def without_hidden(
        self,
        recent: pa.Array | pa.ChunkedArray,
        user_codes: np.ndarray,
        times: np.ndarray,
        hidden: np.ndarray,
        hidden_before: np.ndarray | None = None,
    ) -> pa.Array:
        """``recent`` (one list per row) without the entries that stand for a hidden event.

        ``hidden``: per event, in timeline order (``self.order``). Entries whose event is hidden go; a
        list that does not line up with its user's events that way loses every item its user has in a
        hidden event instead, so nothing hidden is ever kept. Rows without a hidden event of their user
        strictly before them keep their list as it is (null included); ``hidden_before`` is
        ``hidden``'s running count (``np.cumsum`` with a leading 0), when the caller has it.
        """
        if isinstance(recent, pa.ChunkedArray):
            recent = recent.combine_chunks()
        if not pa.types.is_string(recent.type.value_type):
            recent = recent.cast(pa.list_(pa.string()))
        if hidden_before is None:
            hidden_before = np.concatenate([[0], np.cumsum(hidden)])
        start, before, end = self.windows(user_codes, times)
        affected = hidden_before[before] > hidden_before[start]
        lengths = pc.fill_null(pc.list_value_length(recent), 0).to_numpy().astype(np.int64)
        values = pc.list_flatten(recent)
        owner = pc.list_parent_indices(recent).to_numpy().astype(np.int64)
        offset_in_list = np.arange(len(values)) - (np.cumsum(lengths) - lengths)[owner]
        lines_up = before - lengths >= start
        position = np.where(lines_up[owner], (before - lengths)[owner] + offset_in_list, 0)
        same = pc.fill_null(pc.equal(values, self.items.take(pa.array(position))), False).to_numpy(
            zero_copy_only=False
        )
        matched = lines_up & (np.bincount(owner[~same], minlength=len(lengths)) == 0)
        drop = affected[owner] & matched[owner] & hidden[position]
        unmatched = affected & ~matched & (lengths > 0)
        if unmatched.any():  # lists not served by this log's features: drop the user's hidden items
            entries = np.flatnonzero(unmatched[owner])
            users = np.unique(user_codes[unmatched])
            timeline_users = self.keys // self.stride
            hidden_events = np.flatnonzero(hidden & np.isin(timeline_users, users))
            gone = pd.MultiIndex.from_arrays(
                [
                    timeline_users[hidden_events],
                    self.items.take(pa.array(hidden_events)).to_numpy(zero_copy_only=False),
                ]
            )
            asked = pd.MultiIndex.from_arrays(
                [user_codes[owner[entries]], values.take(pa.array(entries)).to_numpy(zero_copy_only=False)]
            )
            drop[entries] = asked.isin(gone)
        kept_lengths = lengths - np.bincount(owner[drop], minlength=len(lengths))
        offsets = np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int32)
        is_null = recent.is_null().to_numpy(zero_copy_only=False) & ~affected
        return pa.ListArray.from_arrays(
            pa.array(offsets), values.filter(pa.array(~drop)), type=recent.type, mask=pa.array(is_null)
        )


class HistoryFilter:
    """The split's ``recent_items`` limited to what each row's part may see (``VISIBLE_PARTS``), for
    rows of the examples in (time, event_id) order, one batch at a time."""

    def __init__(self, events: pd.DataFrame, part: np.ndarray):
        users = arrow_strings(events["user_id"]).dictionary_encode()
        self.user_codes = users.indices.to_numpy().astype(np.int64)
        self.times = timestamps_ns(events["event_timestamp"])
        self.part = part
        items = arrow_strings(events["item_id"])
        self.timelines = UserTimelines(self.user_codes, self.times, events["event_id"].to_numpy(), items)
        in_timeline = part[self.timelines.order]
        self.hidden: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, visible in VISIBLE_PARTS.items():
            hidden = ~np.isin(in_timeline, visible)
            self.hidden[name] = (hidden, np.concatenate([[0], np.cumsum(hidden)]))

    def visible(self, rows: np.ndarray, recent: pa.ChunkedArray | pa.Array) -> pa.Array:
        """``recent`` of the examples at positions ``rows``, each limited to what its part may see."""
        if isinstance(recent, pa.ChunkedArray):
            recent = recent.combine_chunks()
        pieces: list[pa.Array] = []
        where: list[np.ndarray] = []
        for name in PARTS:
            of_part = np.flatnonzero(self.part[rows] == name)
            if len(of_part) == 0:
                continue
            hidden, hidden_before = self.hidden[name]
            at = rows[of_part]
            pieces.append(
                self.timelines.without_hidden(
                    recent.take(pa.array(of_part)), self.user_codes[at], self.times[at], hidden, hidden_before
                )
            )
            where.append(of_part)
        if not pieces:
            return recent
        merged = pa.concat_arrays(pieces)
        return merged.take(pa.array(np.argsort(np.concatenate(where), kind="stable")))


def without_hidden_events(rows: pd.DataFrame, events: pd.DataFrame) -> pa.Array:
    """The ``recent_items`` of ``rows`` (``user_id``, ``event_timestamp``) without the entries that stand
    for a hidden event of ``events`` (``user_id``, ``item_id``, ``event_timestamp``, ``event_id`` and a
    boolean ``hidden``): ``UserTimelines.without_hidden`` for frames."""
    codes, _ = pd.factorize(pd.concat([events["user_id"], rows["user_id"]]).astype(str))
    timelines = UserTimelines(
        codes[: len(events)],
        timestamps_ns(events["event_timestamp"]),
        events["event_id"].to_numpy(),
        pa.array(events["item_id"].astype(str).to_numpy(), pa.string()),
    )
    recent = pa.array(list(rows["recent_items"]), pa.list_(pa.string()))
    hidden = events["hidden"].to_numpy(dtype=bool)[timelines.order]
    return timelines.without_hidden(
        recent, codes[len(events) :], timestamps_ns(rows["event_timestamp"]), hidden
    )


def events_in_time_order(examples: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The event columns of ``examples`` sorted by (time, event_id), and the order that sorts the file."""
    table = pq.read_table(examples, columns=list(REQUIRED_COLUMNS))
    order = np.lexsort((table.column("event_id").to_numpy(), timestamps_ns(table.column("event_timestamp"))))
    events = table.take(pa.array(order)).to_pandas(types_mapper=ARROW_ID_STRINGS.get)
    return events, order


def rows_in_time_order(examples: Path, order: np.ndarray, schema: pa.Schema) -> Iterator[pa.Table]:
    """Every row of ``examples`` in (time, event_id) order, ``SPLIT_BATCH_ROWS`` at a time, as ``schema``.

    A file already in that order (``order`` is the identity) is read as it lies; otherwise DuckDB
    sorts it (ties by the row's position in the file, as the stable sort of ``order``) within its
    memory limit, spilling beside the file, so the examples never have to fit in memory.
    """
    if np.array_equal(order, np.arange(len(order))):
        for batch in pq.ParquetFile(examples).iter_batches(batch_size=SPLIT_BATCH_ROWS):
            yield pa.Table.from_batches([batch]).replace_schema_metadata(None).cast(schema)
        return
    with connection(spill_beside=Path(examples).parent) as con:
        reader = con.sql(
            f"SELECT * EXCLUDE (file_row_number) FROM read_parquet({sql_literal(str(examples))}, "
            "file_row_number = true) ORDER BY event_timestamp, event_id, file_row_number"
        ).to_arrow_reader(SPLIT_BATCH_ROWS)
        for batch in reader:
            yield pa.Table.from_batches([batch]).cast(schema)


def attribute_columns(examples: Path, order: np.ndarray, entity: str, fields: Iterable[str]) -> pd.DataFrame:
    """The id and attribute ``fields`` of ``entity`` that ``examples`` carry, in (time, event_id) order."""
    names = pq.ParquetFile(examples).schema_arrow.names
    key = f"{entity}_id"
    columns = [key, *(f for f in fields if f in names and f != key)]
    return pq.read_table(examples, columns=columns).take(pa.array(order)).to_pandas()


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


def _part_path(split: Split, part: str) -> Path:
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; use one of {PARTS}")
    return Path(getattr(split, part))


def read_part(split: Split, part: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One part of the split, sorted by (time, event_id)."""
    frame = pd.read_parquet(_part_path(split, part), columns=columns)
    return frame.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)


def part_order(split: Split, part: str) -> np.ndarray:
    """The file rows of ``part`` in ``read_part``'s order (time, event_id): row i of ``read_part`` is
    row ``part_order(...)[i]`` of the file. Reads the two key columns only."""
    keys = pq.read_table(_part_path(split, part), columns=["event_timestamp", "event_id"])
    order = pc.sort_indices(keys, sort_keys=[("event_timestamp", "ascending"), ("event_id", "ascending")])
    return order.to_numpy()


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
