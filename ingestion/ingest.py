"""Ingest: read the configured source into staging Parquet (strings + provenance, not yet validated)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.event_log import EventLog, SqlEventLog, open_event_log
from ingestion.fetch import fetch_ml100k
from ingestion.readers import (
    parquet_events_in_chunks,
    read_events,
    read_grouplens_100k,
    read_movielens_dat,
    read_recbole_atomic,
)
from ingestion.schema import INTERACTION_COLUMNS, IngestError, RawTables, conform, declared_attributes
from pipeline.artifacts import atomic_path, atomic_write_json
from pipeline.config import SourceConfig
from pipeline.layout import Layout
from pipeline.schema import DataSchema

log = logging.getLogger(__name__)

STAGING_TABLES = ("interactions", "users", "items", "malformed")
# Rows of a Parquet events file staged at a time: bounds ingest's memory whatever the log's length.
STREAM_BATCH_ROWS = 500_000
# Staged only when the source has item knowledge; validation reads them when present.
OPTIONAL_STAGING_TABLES = ("knowledge_graph", "item_links")


def read_source(source: SourceConfig, layout: Layout) -> RawTables:
    if problem := source.path_problem():
        raise IngestError(problem)
    if source.kind == "recbole_ml100k":
        directory = Path(source.path) if source.path else fetch_ml100k(layout.cache)
        return read_recbole_atomic(directory, "ml-100k")
    if source.kind == "grouplens_100k":
        return read_grouplens_100k(Path(source.path))
    if source.kind == "movielens_dat":
        return read_movielens_dat(Path(source.path))
    return read_events(
        Path(source.path), source.users and Path(source.users), source.items and Path(source.items)
    )


def keep_declared(raw: RawTables, schema: DataSchema) -> RawTables:
    """Keep the attribute columns the schema declares; name the ones it does not (they are not read)."""
    users, extra_users = declared_attributes(raw.users, "user_id", list(schema.user_features))
    items, extra_items = declared_attributes(raw.items, "item_id", list(schema.item_features))
    for table, extra in (("users", extra_users), ("items", extra_items)):
        if extra:
            log.info(
                "%s columns %s are not in schema %r: not read (declare them in the schema to use them)",
                table,
                extra,
                schema.name,
            )
    return RawTables(
        interactions=raw.interactions,
        users=users,
        items=items,
        malformed=raw.malformed,
        knowledge_graph=raw.knowledge_graph,
        item_links=raw.item_links,
    )


def sample_users(raw: RawTables, n_users: int) -> RawTables:
    """The events and attributes of the first ``n_users`` users by id (numeric ids sort numerically)."""
    ids = raw.interactions["user_id"].dropna().unique()
    numeric = pd.to_numeric(pd.Series(ids), errors="coerce")
    order = numeric.argsort(kind="stable") if numeric.notna().all() else pd.Series(ids).argsort(kind="stable")
    keep = set(pd.Series(ids).iloc[order.to_numpy()[:n_users]])
    return RawTables(
        interactions=raw.interactions[raw.interactions["user_id"].isin(keep)].reset_index(drop=True),
        users=raw.users[raw.users["user_id"].isin(keep)].reset_index(drop=True),
        items=raw.items,
        malformed=raw.malformed,
        knowledge_graph=raw.knowledge_graph,
        item_links=raw.item_links,
    )


def _streamed_events(source: SourceConfig, logged_events: pd.DataFrame | None) -> Path | None:
    """The Parquet events file to stage a chunk at a time, or None when the events must be read whole:
    a CSV source, a user sample, or pushed events to merge in (both need every event at once)."""
    if source.kind != "events" or not source.path or Path(source.path).suffix != ".parquet":
        return None
    if source.sample_users or (logged_events is not None and not logged_events.empty):
        return None
    return Path(source.path)


def ingest(source: SourceConfig, layout: Layout, run_id: str) -> Path:
    """Read the source into staging Parquet (string columns + provenance); return the staging dir.

    The attribute tables keep the columns of the source's schema (``source.schema``). A Parquet events
    file is staged ``STREAM_BATCH_ROWS`` rows at a time (same rows, same columns as a whole-file read).
    """
    event_log = open_event_log(layout) if source.event_log else None
    logged_events = event_log.read() if event_log is not None else None
    streamed = _streamed_events(source, logged_events)
    if streamed is not None:
        if problem := source.path_problem():
            raise IngestError(problem)
        raw = read_events(None, source.users and Path(source.users), source.items and Path(source.items))
    else:
        raw = read_source(source, layout)
    raw = keep_declared(raw, source.data_schema)
    logged = {}
    if event_log is not None and logged_events is not None:
        raw, logged = with_event_log(raw, event_log, logged_events)
    if source.sample_users:
        raw = sample_users(raw, source.sample_users)
    staging = layout.staging(run_id)
    n_interactions = len(raw.interactions)
    with atomic_path(staging) as tmp:
        tmp.mkdir(parents=True)
        for name in STAGING_TABLES + OPTIONAL_STAGING_TABLES:
            table = getattr(raw, name)
            if name == "interactions" and streamed is not None:
                n_interactions = _stage_in_chunks(
                    parquet_events_in_chunks(streamed, STREAM_BATCH_ROWS), tmp / f"{name}.parquet"
                )
            elif table is not None:
                table.to_parquet(tmp / f"{name}.parquet", index=False)
        atomic_write_json(tmp / "source.json", {**source.model_dump(by_alias=True), "event_log_read": logged})
    log.info(
        "staged %d interaction rows (%d malformed lines; %s) in %s",
        n_interactions,
        len(raw.malformed),
        describe_event_log(logged),
        staging,
    )
    return staging


def _stage_in_chunks(chunks: Iterator[pd.DataFrame], path: Path) -> int:
    """Append each chunk to one Parquet file (pandas metadata as ``DataFrame.to_parquet`` writes it);
    return the number of rows. The file lies in the staging temp directory, renamed into place whole."""
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for chunk in chunks:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            rows += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an events file without rows: stage the empty table as before
        conform(pd.DataFrame(columns=INTERACTION_COLUMNS), INTERACTION_COLUMNS).to_parquet(path, index=False)
    return rows


def with_event_log(
    raw: RawTables, event_log: EventLog | SqlEventLog, logged: pd.DataFrame | None = None
) -> tuple[RawTables, dict[str, Any]]:
    """The source's tables plus the logged events it does not hold yet (same user, item and time).

    ``logged``: the event log's events when the caller has read them already.
    """
    from ingestion.validate import parse_timestamps  # validate imports this module

    logged = event_log.read() if logged is None else logged
    if logged.empty:
        return raw, {"source": event_log.location, "events": 0, "already_in_source": 0}
    source_keys = set(
        zip(
            raw.interactions["user_id"].astype("string").str.strip(),
            raw.interactions["item_id"].astype("string").str.strip(),
            parse_timestamps(raw.interactions["timestamp"]),
            strict=True,
        )
    )
    times = parse_timestamps(logged["timestamp"])
    held = [key in source_keys for key in zip(logged["user_id"], logged["item_id"], times, strict=True)]
    new = logged[[not h for h in held]]
    new = new[raw.interactions.columns].astype(raw.interactions.dtypes.to_dict())
    interactions = pd.concat([raw.interactions, new], ignore_index=True)
    summary = {"source": event_log.location, "events": len(logged), "already_in_source": sum(held)}
    return dataclasses.replace(raw, interactions=interactions), summary


def describe_event_log(summary: dict[str, Any]) -> str:
    if not summary or not summary.get("events"):
        return "no pushed events"
    return (
        f"{summary['events']} pushed events in the event log {summary['source']} "
        f"({summary['already_in_source']} already in the source, not ingested twice)"
    )
