"""Ingest: read the configured source into staging Parquet (strings + provenance, not yet validated)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from ingestion.event_log import EventLog, SqlEventLog, open_event_log
from ingestion.fetch import fetch_ml100k
from ingestion.readers import read_events, read_grouplens_100k, read_movielens_dat, read_recbole_atomic
from ingestion.schema import IngestError, RawTables, declared_attributes
from pipeline.artifacts import atomic_path, atomic_write_json
from pipeline.config import SourceConfig
from pipeline.layout import Layout
from pipeline.schema import DataSchema

log = logging.getLogger(__name__)

STAGING_TABLES = ("interactions", "users", "items", "malformed")
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


def ingest(source: SourceConfig, layout: Layout, run_id: str) -> Path:
    """Read the source into staging Parquet (string columns + provenance); return the staging dir.

    The attribute tables keep the columns of the source's schema (``source.schema``).
    """
    raw = keep_declared(read_source(source, layout), source.data_schema)
    logged = {}
    if source.event_log:
        raw, logged = with_event_log(raw, open_event_log(layout))
    if source.sample_users:
        raw = sample_users(raw, source.sample_users)
    staging = layout.staging(run_id)
    with atomic_path(staging) as tmp:
        tmp.mkdir(parents=True)
        for name in STAGING_TABLES + OPTIONAL_STAGING_TABLES:
            table = getattr(raw, name)
            if table is not None:
                table.to_parquet(tmp / f"{name}.parquet", index=False)
        atomic_write_json(tmp / "source.json", {**source.model_dump(by_alias=True), "event_log_read": logged})
    log.info(
        "staged %d interaction rows (%d malformed lines; %s) in %s",
        len(raw.interactions),
        len(raw.malformed),
        describe_event_log(logged),
        staging,
    )
    return staging


def with_event_log(raw: RawTables, event_log: EventLog | SqlEventLog) -> tuple[RawTables, dict[str, Any]]:
    """The source's tables plus the logged events it does not hold yet (same user, item and time)."""
    from ingestion.validate import parse_timestamps  # validate imports this module

    logged = event_log.read()
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
