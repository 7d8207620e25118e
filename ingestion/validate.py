"""Validate: staging -> a validated, content-addressed snapshot.

Every input row ends in exactly one place: the snapshot or the quarantine file (with a reason).
``rows_in == rows_kept + rows_quarantined`` is checked before anything is published, and the run
fails with a message naming the commonest reasons and example lines when the rejected share is
above ``ValidationConfig.max_rejected_share``.

Attribute values are parsed by the type their schema declares (``pipeline/schema.py``). A bad value
(a price that is not a number, an age outside ``min``/``max``) does not reject its row: that would
drop the user's or item's events with it. The value becomes unknown, and the cell goes to the
quarantine file with its column, raw value and reason (``values_quarantined`` in the snapshot).

The interactions are validated ``chunk_rows`` at a time (``_validate_interactions``), so memory is
bounded by a chunk plus a few bytes per valid event, whatever the length of the log; the attribute
tables (one row per user or item) are read whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.ingest import OPTIONAL_STAGING_TABLES, STAGING_TABLES
from ingestion.schema import MAX_ID_LENGTH
from pipeline.artifacts import Snapshot, atomic_path
from pipeline.config import ValidationConfig
from pipeline.layout import Layout
from pipeline.schema import DataSchema, FieldSpec, resolve_schema

log = logging.getLogger(__name__)

KNOWLEDGE_GRAPH_FILE = "knowledge_graph.parquet"
MAX_EPOCH_SECONDS = 9.2e9  # pd.Timestamp.max is 2262-04-11 (9.22e9 s after 1970)
SCHEMA_FILE = "schema.json"
# Interaction rows validated at a time. Peak memory is one chunk's working set plus about 17 bytes per
# valid event: the duplicate check's hash (8) and flag (1), and the row's content hash (8).
CHUNK_ROWS = 1_000_000


class ValidationFailed(ValueError):
    """Too much of the input was rejected; the quarantine file says which rows and why."""


def _blank(values: pd.Series) -> pd.Series:
    return values.isna() | (values.astype("string").str.strip() == "")


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Epoch seconds (int or float, as MovieLens stores them) or ISO-8601 strings -> UTC timestamps."""
    numeric = pd.to_numeric(values, errors="coerce")
    # Outside pandas' nanosecond range (years 1677-2262) the conversion raises instead of coercing.
    numeric = numeric.where(numeric.abs() < MAX_EPOCH_SECONDS)
    parsed = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
    textual = numeric.isna() & ~_blank(values)
    if textual.any():
        parsed[textual] = pd.to_datetime(values[textual], utc=True, errors="coerce", format="ISO8601")
    return parsed.astype("datetime64[us, UTC]")


def _reject_long_ids(reasons: pd.Series, values: pd.Series, column: str) -> None:
    too_long = (values.astype("string").str.strip().str.len() > MAX_ID_LENGTH).fillna(False)
    _reject(reasons, too_long, f"{column}_too_long: longer than {MAX_ID_LENGTH} characters")


def _reject(reasons: pd.Series, mask: pd.Series, reason: str) -> None:
    """Record ``reason`` for rows in ``mask`` that have no earlier reason (first failure wins)."""
    reasons[mask & reasons.isna()] = reason


def _validate_attributes(frame: pd.DataFrame, key: str) -> tuple[pd.DataFrame, pd.Series]:
    reasons = pd.Series(pd.NA, index=frame.index, dtype="string")
    _reject(reasons, _blank(frame[key]), f"missing_{key}")
    _reject_long_ids(reasons, frame[key], key)
    _reject(reasons, frame[key].duplicated(keep="first"), f"duplicate_{key}")
    return frame, reasons


def row_reasons(
    inter: pd.DataFrame,
    cfg: ValidationConfig,
    now: datetime,
    known_users: Container[str] | None = None,
    known_items: Container[str] | None = None,
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """The rules a single interaction row meets on its own: every rule of ``interaction_reasons`` but
    ``duplicate_event``, which needs the rows before it. Same arguments and results."""
    reasons = pd.Series(pd.NA, index=inter.index, dtype="string")
    for column in ("user_id", "item_id", "timestamp"):
        _reject(reasons, _blank(inter[column]), f"missing_{column}")
    for column in ("user_id", "item_id"):
        _reject_long_ids(reasons, inter[column], column)
    timestamps = parse_timestamps(inter["timestamp"])
    _reject(reasons, timestamps.isna(), "unparseable_timestamp")
    _reject(
        reasons,
        timestamps > pd.Timestamp(now + timedelta(seconds=cfg.future_tolerance_seconds)),
        "future_timestamp",
    )
    ratings = pd.to_numeric(inter["rating"], errors="coerce")
    _reject(reasons, ratings.isna() & ~_blank(inter["rating"]), "unparseable_rating")
    _reject(reasons, (ratings < cfg.rating_min) | (ratings > cfg.rating_max), "rating_out_of_range")
    if known_users is not None:
        _reject(reasons, ~inter["user_id"].map(known_users.__contains__).astype(bool), "unknown_user")
    if known_items is not None:
        _reject(reasons, ~inter["item_id"].map(known_items.__contains__).astype(bool), "unknown_item")
    return reasons, timestamps, ratings


def interaction_reasons(
    inter: pd.DataFrame,
    cfg: ValidationConfig,
    now: datetime,
    known_users: Container[str] | None = None,
    known_items: Container[str] | None = None,
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """The rules every interaction row meets, wherever it comes from (a source file at ingestion, a
    batch pushed to the service's ``/events``): (reason per row, NA = valid; parsed timestamps;
    parsed ratings). Ids longer than ``MAX_ID_LENGTH`` are refused (``user_id_too_long: ...``).
    ``known_users``/``known_items``: ids an event must name (None: not checked).
    The first failing rule names the row; a row repeating an earlier valid row's (user, item,
    timestamp) is a ``duplicate_event``."""
    reasons, timestamps, ratings = row_reasons(inter, cfg, now, known_users, known_items)
    candidate = reasons.isna()
    duplicate = inter[["user_id", "item_id"]].assign(ts=timestamps)[candidate].duplicated(keep="first")
    _reject(reasons, duplicate.reindex(inter.index, fill_value=False), "duplicate_event")
    return reasons, timestamps, ratings


def _event_hashes(inter: pd.DataFrame, timestamps: pd.Series) -> np.ndarray:
    """A 64-bit hash per row of its raw (user, item) and parsed timestamp: the duplicate check's key."""
    frame = pd.DataFrame(
        {
            "user_id": inter["user_id"].reset_index(drop=True),
            "item_id": inter["item_id"].reset_index(drop=True),
            "ts": timestamps.reset_index(drop=True).astype("int64"),  # as numbers: no Timestamp objects
        }
    )
    # categorize=False: the same hashes (categorising only saves work on repeated values), faster here.
    return pd.util.hash_pandas_object(frame, index=False, categorize=False).to_numpy()


class _RepeatFinder:
    """Finds the rows that repeat an earlier row's (user, item, timestamp), exactly, over the whole log.

    Why hashes first: the 8-byte hashes of a whole log fit in memory, its strings do not. Only rows
    whose hash occurs more than once (the repeats, their first occurrences and the rare collision) are
    then compared by value, in the order of the log.
    """

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = hashes
        self.shared = pd.Series(hashes).duplicated(keep=False).to_numpy()
        self._seen: dict[int, set[tuple[str, str, int]]] = {}

    def repeats(self, part: pd.DataFrame, offset: int) -> np.ndarray:
        """Which rows of ``part`` (the candidate rows ``offset`` onwards, with ``_timestamp``) repeat."""
        shared = self.shared[offset : offset + len(part)]
        repeated = np.zeros(len(part), dtype=bool)
        if not shared.any():
            return repeated
        rows = np.flatnonzero(shared)
        values = zip(
            self.hashes[offset + rows].tolist(),
            part["user_id"].iloc[rows].tolist(),
            part["item_id"].iloc[rows].tolist(),
            part["_timestamp"].iloc[rows].astype("int64").tolist(),
            strict=True,
        )
        for row, (hashed, user, item, timestamp) in zip(rows, values, strict=True):
            seen = self._seen.setdefault(hashed, set())
            repeated[row] = (user, item, timestamp) in seen
            seen.add((user, item, timestamp))
        return repeated


def validate(
    staging: Path,
    cfg: ValidationConfig,
    layout: Layout,
    dataset: str,
    now: datetime | None = None,
    schema: DataSchema | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Snapshot:
    """Validate the staged tables and publish the snapshot (atomically) under its data version.

    ``schema``: how to parse the attribute columns (default: the built-in movielens schema).
    ``chunk_rows``: interaction rows held at a time; the snapshot does not depend on it.
    """
    # Arrow-backed strings: the same values, NA and string methods as Python-backed ones (so the same
    # snapshot and data version) at a fraction of the memory, which bounds validation of long logs.
    with pd.option_context("mode.string_storage", "pyarrow"):
        return _validate(Path(staging), cfg, layout, dataset, now, schema, chunk_rows)


@dataclass
class _Interactions:
    """What the chunked pass over the interactions leaves: the kept rows' file and digest, the rejected
    rows, and the counts and ids the rest of validation needs."""

    kept_file: Path
    rows_in: int = 0
    rows_kept: int = 0
    quarantine: pd.DataFrame = field(default_factory=pd.DataFrame)
    source_files: set[str] = field(default_factory=set)
    user_ids: pd.Series = field(default_factory=lambda: pd.Series(dtype="string"))
    item_ids: pd.Series = field(default_factory=lambda: pd.Series(dtype="string"))
    time_min: pd.Timestamp | None = None
    time_max: pd.Timestamp | None = None
    row_hashes: list[np.ndarray] = field(default_factory=list)


def _chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A staged table ``chunk_rows`` rows at a time, with the dtypes ``pd.read_parquet`` gives."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


def _validate_interactions(
    staged: Path,
    cfg: ValidationConfig,
    now: datetime,
    known_users: Container[str] | None,
    known_items: Container[str] | None,
    work: Path,
    chunk_rows: int,
) -> _Interactions:
    """Check the staged interactions a chunk at a time; write the kept, normalised rows to one file.

    Pass 1 applies the per-row rules to each chunk and spills the candidate rows (raw columns plus the
    parsed timestamp and rating) to ``work``, keeping only a 64-bit hash of each one's (user, item,
    timestamp) in memory. The hashes of the whole log then point ``_RepeatFinder`` at the few rows
    that may be a ``duplicate_event`` (a repeat of an earlier row, wherever it lies). Pass 2 reads the
    spilled chunks back, quarantines the repeats and writes the rest with consecutive ``event_id``s.
    The result is the same, row for row, as checking the table whole.
    """
    result = _Interactions(kept_file=work / "interactions.parquet")
    rejected: list[pd.DataFrame] = []
    hashes: list[np.ndarray] = []
    spilled: list[Path] = []
    for chunk in _chunks(staged, chunk_rows):
        chunk.index = pd.RangeIndex(result.rows_in, result.rows_in + len(chunk))  # the row's place in the log
        result.rows_in += len(chunk)
        result.source_files.update(map(str, chunk["source_file"].dropna().unique()))
        reasons, timestamps, ratings = row_reasons(chunk, cfg, now, known_users, known_items)
        rejected.append(_quarantine_rows(chunk, reasons, "interactions"))
        candidate = reasons.isna()
        if not candidate.any():
            continue
        hashes.append(_event_hashes(chunk[candidate], timestamps[candidate]))
        part = chunk[candidate].assign(_timestamp=timestamps[candidate], _rating=ratings[candidate])
        spilled.append(work / f"candidates-{len(spilled):05d}.parquet")
        part.to_parquet(spilled[-1], index=True)
    finder = _RepeatFinder(np.concatenate(hashes) if hashes else np.zeros(0, dtype="uint64"))

    writer: pq.ParquetWriter | None = None
    user_ids: list[pd.Series] = []
    item_ids: list[pd.Series] = []
    offset = 0
    try:
        for path in spilled:
            part = pd.read_parquet(path)
            repeated = finder.repeats(part, offset)
            offset += len(part)
            reasons = pd.Series(pd.NA, index=part.index, dtype="string")
            reasons[repeated] = "duplicate_event"
            raw = part.drop(columns=["_timestamp", "_rating"])
            rejected.append(_quarantine_rows(raw, reasons, "interactions"))
            kept = part[~repeated]
            normalised = _normalise_interactions(
                kept, kept["_timestamp"], kept["_rating"], first_event_id=result.rows_kept
            )
            if normalised.empty:
                continue
            result.rows_kept += len(normalised)
            # The content hash's rows (ContentDigest.add hashes the same way; categorize only saves work)
            row_hashes = pd.util.hash_pandas_object(normalised, index=False, categorize=False)
            result.row_hashes.append(row_hashes.to_numpy())
            user_ids.append(pd.Series(normalised["user_id"].unique()))
            item_ids.append(pd.Series(normalised["item_id"].unique()))
            low, high = normalised["timestamp"].min(), normalised["timestamp"].max()
            result.time_min = low if result.time_min is None else min(result.time_min, low)
            result.time_max = high if result.time_max is None else max(result.time_max, high)
            table = pa.Table.from_pandas(normalised, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(result.kept_file, table.schema)
            writer.write_table(table)
            path.unlink()
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # nothing kept: the (empty) table still has its columns and types
        _normalise_interactions(
            pd.DataFrame({c: pd.Series(dtype="string") for c in ("user_id", "item_id")}),
            pd.Series(dtype="datetime64[us, UTC]"),
            pd.Series(dtype="float64"),
        ).to_parquet(result.kept_file, index=False)
    result.user_ids = pd.concat(user_ids, ignore_index=True) if user_ids else result.user_ids
    result.item_ids = pd.concat(item_ids, ignore_index=True) if item_ids else result.item_ids
    # In the order of the log, as a whole-table check lists them (pass 2 finds the repeats later).
    rejected = [frame for frame in rejected if len(frame)]
    result.quarantine = (
        pd.concat(rejected).sort_index(kind="stable").reset_index(drop=True) if rejected else pd.DataFrame()
    )
    return result


def _validate(
    staging: Path,
    cfg: ValidationConfig,
    layout: Layout,
    dataset: str,
    now: datetime | None,
    schema: DataSchema | None,
    chunk_rows: int,
) -> Snapshot:
    schema = schema or resolve_schema(None)
    users, items, malformed = (
        pd.read_parquet(staging / f"{name}.parquet") for name in STAGING_TABLES if name != "interactions"
    )
    triples, links = (
        pd.read_parquet(staging / f"{n}.parquet") if (staging / f"{n}.parquet").exists() else None
        for n in OPTIONAL_STAGING_TABLES
    )
    now = now or datetime.now(UTC)

    users, user_reasons = _validate_attributes(users, "user_id")
    items, item_reasons = _validate_attributes(items, "item_id")
    known_users = set(users.loc[user_reasons.isna(), "user_id"])
    known_items = set(items.loc[item_reasons.isna(), "item_id"])

    check_users = known_users if cfg.require_known_entities and known_users else None
    check_items = known_items if cfg.require_known_entities and known_items else None
    work = Path(tempfile.mkdtemp(prefix=".validate-", dir=staging))  # beside the staging data: same disk
    try:
        inter = _validate_interactions(
            staging / "interactions.parquet", cfg, now, check_users, check_items, work, chunk_rows
        )
        return _publish(
            staging,
            cfg,
            layout,
            dataset,
            schema,
            inter,
            users,
            user_reasons,
            items,
            item_reasons,
            malformed,
            triples,
            links,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(
    staging: Path,
    cfg: ValidationConfig,
    layout: Layout,
    dataset: str,
    schema: DataSchema,
    inter: _Interactions,
    users: pd.DataFrame,
    user_reasons: pd.Series,
    items: pd.DataFrame,
    item_reasons: pd.Series,
    malformed: pd.DataFrame,
    triples: pd.DataFrame | None,
    links: pd.DataFrame | None,
) -> Snapshot:
    """Normalise the attribute tables, account for every row, and publish the snapshot (or refuse)."""
    kept_users, user_values = _normalise_attributes(
        users[user_reasons.isna()], "user_id", schema.user_features, inter.user_ids, "users"
    )
    kept_items, item_values = _normalise_attributes(
        items[item_reasons.isna()], "item_id", schema.item_features, inter.item_ids, "items"
    )
    bad_values = pd.concat([user_values, item_values], ignore_index=True)
    knowledge = None
    knowledge_rows_in = knowledge_rows_kept = 0
    knowledge_quarantine: list[pd.DataFrame] = []
    if triples is not None and links is not None:
        knowledge, triple_reasons, link_reasons = validate_knowledge_graph(
            triples, links, set(kept_items["item_id"])
        )
        knowledge_rows_in = len(triples) + len(links)
        knowledge_rows_kept = int(triple_reasons.isna().sum() + link_reasons.isna().sum())
        knowledge_quarantine = [
            _quarantine_rows(triples, triple_reasons, "knowledge_graph"),
            _quarantine_rows(links, link_reasons, "item_links"),
        ]

    quarantine = pd.concat(
        [
            *([inter.quarantine] if len(inter.quarantine) else []),
            _quarantine_rows(users, user_reasons, "users"),
            _quarantine_rows(items, item_reasons, "items"),
            *knowledge_quarantine,
            malformed.assign(table="unparsed"),
        ],
        ignore_index=True,
    )
    rows_quarantined = len(quarantine)
    if len(bad_values):
        quarantine = pd.concat([quarantine, bad_values], ignore_index=True)

    rows_in = inter.rows_in + len(users) + len(items) + len(malformed) + knowledge_rows_in
    rows_kept = (
        inter.rows_kept
        + int(user_reasons.isna().sum())
        + int(item_reasons.isna().sum())
        + knowledge_rows_kept
    )
    if rows_in != rows_kept + rows_quarantined:  # the no-data-loss invariant; a bug here must stop the run
        raise AssertionError(
            f"row accounting broken: {rows_in} in != {rows_kept} kept + {rows_quarantined} quarantined"
        )
    counts = quarantine["reason"].value_counts().to_dict() if len(quarantine) else {}
    counts = {str(k): int(v) for k, v in counts.items()}

    # The quarantine is written beside the staging data first, so a failed validation can be inspected
    # and nothing is published under data/ unless the batch passes.
    quarantine = quarantine.astype({c: "string" for c in quarantine.columns if c != "source_line"})
    staged_quarantine = staging / "quarantine.parquet"
    quarantine.to_parquet(staged_quarantine, index=False)
    share = rows_quarantined / max(rows_in, 1)
    log.info(
        "validated %s: %d rows in, %d kept, %d quarantined (%.2f%%), %d attribute values set to unknown %s",
        dataset,
        rows_in,
        rows_kept,
        rows_quarantined,
        100 * share,
        len(bad_values),
        json.dumps(counts),
    )
    if share > cfg.max_rejected_share:
        examples = quarantine.head(5)[["source_file", "source_line", "reason"]].to_dict("records")
        raise ValidationFailed(
            f"{rows_quarantined} of {rows_in} rows ({share:.1%}) were rejected, above the limit "
            f"{cfg.max_rejected_share:.1%} (validation.max_rejected_share). Reasons: {counts}. "
            f"First rejected rows: {examples}. Full list: {staged_quarantine}"
        )
    if inter.rows_kept == 0:
        raise ValidationFailed(_nothing_kept(inter, staging, counts, staged_quarantine))

    # Like the other kept tables, the item knowledge is part of the data version (when there is any),
    # and so is the schema: it decides how the models will encode the attributes.
    digest = ContentDigest(schema.fingerprint())
    digest.add_rows(pq.read_schema(inter.kept_file).names, inter.row_hashes)
    for frame in (kept_users, kept_items, *([knowledge] if knowledge is not None else [])):
        digest.add(frame)
    data_version = digest.hexdigest()
    target = layout.snapshot(data_version)
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        shutil.move(inter.kept_file, tmp / "interactions.parquet")
        kept_users.to_parquet(tmp / "users.parquet", index=False)
        kept_items.to_parquet(tmp / "items.parquet", index=False)
        quarantine.to_parquet(tmp / "quarantine.parquet", index=False)
        schema.save(tmp / SCHEMA_FILE)
        if knowledge is not None:
            knowledge.to_parquet(tmp / KNOWLEDGE_GRAPH_FILE, index=False)
        snapshot = Snapshot(
            data_version=data_version,
            dataset=dataset,
            interactions=target / "interactions.parquet",
            users=target / "users.parquet",
            items=target / "items.parquet",
            quarantine=target / "quarantine.parquet",
            rows_in=rows_in,
            rows_kept=rows_kept,
            rows_quarantined=rows_quarantined,
            quarantine_reasons=counts,
            values_quarantined=len(bad_values),
            schema=target / SCHEMA_FILE,
            time_min=str(inter.time_min),
            time_max=str(inter.time_max),
            knowledge_graph=target / KNOWLEDGE_GRAPH_FILE if knowledge is not None else None,
        )
        snapshot.save(tmp / "snapshot.json")
    return snapshot


def _nothing_kept(inter: _Interactions, staging: Path, counts: dict[str, int], quarantine: Path) -> str:
    """Why no interaction is left, naming the user's input files (not the staging directory)."""
    files = sorted(inter.source_files)
    if not files:
        source = (
            json.loads((staging / "source.json").read_text()) if (staging / "source.json").is_file() else {}
        )
        files = [source.get("path") or f"the {source.get('kind', 'configured')} source"]
    named = ", ".join(files)
    if inter.rows_in == 0:
        return f"{named}: no interaction rows (a header line only?); the source needs at least one event"
    return f"{named}: none of the {inter.rows_in} interaction rows is valid ({counts}); the rows and reasons: {quarantine}"


def validate_knowledge_graph(
    triples: pd.DataFrame, links: pd.DataFrame, known_items: set[str]
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Check the raw triples and item links; return (item-anchored triples, triple reasons, link reasons).

    Links: a blank field, an item absent from the kept items (``unknown_item``) or a second link of
    the same item (``duplicate_item_id``) is rejected. Triples: a blank field, a repeated triple or a
    triple touching no linked entity (``unlinked_triple``: it cannot reach any item in one hop) is
    rejected. Every kept triple is anchored at a linked item: ``(item, relation, tail)`` when the head is
    the item's entity, ``(item, "~relation", head)`` (the inverse relation) when only the tail is. Triples
    between two non-item entities (two hops from any item) are thus not kept; ML-100K has none.

    Output columns: ``item_id``, ``item_entity`` (the item's own linked entity, so an item that is
    another item's neighbour, e.g. a sequel, is the same node), ``relation``, ``entity`` (strings).
    """
    link_reasons = pd.Series(pd.NA, index=links.index, dtype="string")
    _reject(link_reasons, _blank(links["item_id"]), "missing_item_id")
    _reject(link_reasons, _blank(links["entity_id"]), "missing_entity_id")
    link_items = links["item_id"].astype("string").str.strip()
    _reject(link_reasons, ~link_items.isin(known_items), "unknown_item")
    # Among the links still valid, a second link of the same item (rejected rows become NA first).
    _reject(link_reasons, link_items.where(link_reasons.isna()).duplicated(keep="first"), "duplicate_item_id")
    kept_links = pd.DataFrame(
        {"item_id": link_items, "item_entity": links["entity_id"].astype("string").str.strip()}
    )[link_reasons.isna()]

    triple_reasons = pd.Series(pd.NA, index=triples.index, dtype="string")
    clean = pd.DataFrame(
        {c: triples[c].astype("string").str.strip() for c in ("head_id", "relation_id", "tail_id")}
    )
    for column in ("head_id", "relation_id", "tail_id"):
        _reject(triple_reasons, _blank(triples[column]), f"missing_{column}")
    _reject(triple_reasons, clean.duplicated(keep="first") & triple_reasons.isna(), "duplicate_triple")
    linked = set(kept_links["item_entity"])
    head_linked, tail_linked = clean["head_id"].isin(linked), clean["tail_id"].isin(linked)
    _reject(triple_reasons, ~head_linked & ~tail_linked, "unlinked_triple")
    ok = triple_reasons.isna()
    forward = clean[ok & head_linked].rename(
        columns={"head_id": "item_entity", "relation_id": "relation", "tail_id": "entity"}
    )
    inverse = clean[ok & ~head_linked].rename(
        columns={"tail_id": "item_entity", "relation_id": "relation", "head_id": "entity"}
    )
    inverse["relation"] = "~" + inverse["relation"]
    anchored = pd.concat([forward, inverse], ignore_index=True).merge(kept_links, on="item_entity")
    anchored = anchored[["item_id", "item_entity", "relation", "entity"]].astype("string")
    anchored = anchored.sort_values(["item_id", "relation", "entity"], kind="stable").reset_index(drop=True)
    return anchored, triple_reasons, link_reasons


def _quarantine_rows(frame: pd.DataFrame, reasons: pd.Series, table: str) -> pd.DataFrame:
    bad = frame[reasons.notna()]
    if bad.empty:
        return pd.DataFrame()
    data_columns = [c for c in frame.columns if c not in ("source_file", "source_line")]
    return pd.DataFrame(
        {
            "table": table,
            "source_file": bad["source_file"],
            "source_line": bad["source_line"],
            "raw": _joined(bad[data_columns].astype("string").fillna(""), "\t"),
            "reason": reasons[reasons.notna()],
        }
    )


def _joined(frame: pd.DataFrame, separator: str) -> pd.Series:
    """Each row's values joined by ``separator``, column by column (a row-wise ``agg`` builds a Series per row)."""
    first, *others = (frame[column] for column in frame.columns)
    return first.str.cat(others, sep=separator) if others else first


def _normalise_interactions(
    frame: pd.DataFrame, timestamps: pd.Series, ratings: pd.Series, first_event_id: int = 0
) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype("string").str.strip(),
            "item_id": frame["item_id"].astype("string").str.strip(),
            "timestamp": timestamps,
            "rating": ratings.astype("float64"),
        }
    ).reset_index(drop=True)
    out.insert(0, "event_id", np.arange(first_event_id, first_event_id + len(out), dtype="int64"))
    return out


def _normalise_attributes(
    frame: pd.DataFrame, key: str, fields: dict[str, FieldSpec], event_ids: pd.Series, table: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed attribute table (one column per declared field) and the quarantined values.

    numeric -> float64 (NaN unknown), categorical/text -> string, list -> list of strings. Every
    entity that has events (``event_ids``: the ids the kept events name) gets a row (attributes
    unknown when the source has none for it).
    """
    out = pd.DataFrame({key: frame[key].astype("string").str.strip()})
    bad: list[pd.DataFrame] = []
    for name, spec in fields.items():
        raw = frame[name] if name in frame else pd.Series(pd.NA, index=frame.index, dtype="string")
        values, reasons = parse_attribute(raw, spec, name)
        out[name] = values.to_numpy() if spec.type == "list" else values
        flagged = reasons.notna()
        if flagged.any():
            bad.append(
                pd.DataFrame(
                    {
                        "table": table,
                        "source_file": frame.loc[flagged, "source_file"],
                        "source_line": frame.loc[flagged, "source_line"],
                        "raw": raw[flagged].astype("string"),
                        "reason": reasons[flagged],
                        "column": name,
                    }
                )
            )
    return _with_all_ids(out.reset_index(drop=True), event_ids, key, fields), (
        pd.concat(bad, ignore_index=True) if bad else pd.DataFrame()
    )


def parse_attribute(raw: pd.Series, spec: FieldSpec, name: str) -> tuple[pd.Series, pd.Series]:
    """(typed values, reason per bad value or NA) of one raw attribute column (strings)."""
    reasons = pd.Series(pd.NA, index=raw.index, dtype="string")
    blank = _blank(raw)
    if spec.type == "numeric":
        numbers = pd.to_numeric(raw.astype("string").str.strip(), errors="coerce").astype("float64")
        _reject(reasons, numbers.isna() & ~blank, f"{name}_not_a_number")
        low = numbers < spec.min if spec.min is not None else pd.Series(False, index=raw.index)
        high = numbers > spec.max if spec.max is not None else pd.Series(False, index=raw.index)
        _reject(reasons, low | high, f"{name}_out_of_range")
        return numbers.mask(reasons.notna()), reasons
    text = raw.astype("string").str.strip().mask(blank)
    if spec.type == "list":
        tokens = [
            [t.strip() for t in str(v).split(spec.separator) if t.strip()] if v is not pd.NA else []
            for v in text
        ]
        return pd.Series(tokens, index=raw.index, dtype=object), reasons
    return text, reasons


def _with_all_ids(
    table: pd.DataFrame, ids: pd.Series, key: str, fields: dict[str, FieldSpec]
) -> pd.DataFrame:
    """Add attribute-less rows for entities that occur in events but have no attribute row."""
    missing = pd.Index(ids.unique()).difference(pd.Index(table[key]))
    if len(missing):
        table = pd.concat([table, pd.DataFrame({key: pd.Series(missing, dtype="string")})], ignore_index=True)
    for name, spec in fields.items():
        if spec.type == "list":
            table[name] = table[name].apply(lambda v: v if isinstance(v, list) else [])
    return table.sort_values(key, kind="stable").reset_index(drop=True)


class ContentDigest:
    """Hash of kept content (values, not file bytes): the same data gives the same version.

    A table's part is its column names, then one 64-bit hash per row (``pd.util.hash_pandas_object``,
    which hashes each row on its own), so a table added whole or as its chunks' row hashes gives the
    same digest.
    """

    def __init__(self, salt: str = "") -> None:
        self._digest = hashlib.sha256(salt.encode())

    def add(self, frame: pd.DataFrame) -> None:
        hashable = frame.copy()
        for column in hashable.columns:
            if hashable[column].dtype == object:
                hashable[column] = hashable[column].map(
                    lambda v: "\x1f".join(map(str, v)) if isinstance(v, list | np.ndarray) else v
                )
        self.add_rows(list(hashable.columns), [pd.util.hash_pandas_object(hashable, index=False).to_numpy()])

    def add_rows(self, columns: list[str], row_hashes: list[np.ndarray]) -> None:
        """A table given as its columns and its rows' hashes, in order (one array per chunk)."""
        self._digest.update(",".join(columns).encode())
        for hashes in row_hashes:
            self._digest.update(np.ascontiguousarray(hashes, dtype="uint64").tobytes())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:16]


def content_hash(*frames: pd.DataFrame, salt: str = "") -> str:
    """The ``ContentDigest`` of whole tables."""
    digest = ContentDigest(salt)
    for frame in frames:
        digest.add(frame)
    return digest.hexdigest()
