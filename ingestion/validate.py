"""Validate: staging -> a validated, content-addressed snapshot.

Every input row ends in exactly one place: the snapshot or the quarantine file (with a reason).
``rows_in == rows_kept + rows_quarantined`` is checked before anything is published, and the run
fails with a message naming the commonest reasons and example lines when the rejected share is
above ``ValidationConfig.max_rejected_share``.

Attribute values are parsed by the type their schema declares (``pipeline/schema.py``). A bad value
(a price that is not a number, an age outside ``min``/``max``) does not reject its row: that would
drop the user's or item's events with it. The value becomes unknown, and the cell goes to the
quarantine file with its column, raw value and reason (``values_quarantined`` in the snapshot).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Container
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

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
    candidate = reasons.isna()
    duplicate = inter[["user_id", "item_id"]].assign(ts=timestamps)[candidate].duplicated(keep="first")
    _reject(reasons, duplicate.reindex(inter.index, fill_value=False), "duplicate_event")
    return reasons, timestamps, ratings


def validate(
    staging: Path,
    cfg: ValidationConfig,
    layout: Layout,
    dataset: str,
    now: datetime | None = None,
    schema: DataSchema | None = None,
) -> Snapshot:
    """Validate the staged tables and publish the snapshot (atomically) under its data version.

    ``schema``: how to parse the attribute columns (default: the built-in movielens schema).
    """
    # Arrow-backed strings: the same values, NA and string methods as Python-backed ones (so the same
    # snapshot and data version) at a fraction of the memory, which bounds validation of long logs.
    with pd.option_context("mode.string_storage", "pyarrow"):
        return _validate(Path(staging), cfg, layout, dataset, now, schema)


def _validate(
    staging: Path,
    cfg: ValidationConfig,
    layout: Layout,
    dataset: str,
    now: datetime | None,
    schema: DataSchema | None,
) -> Snapshot:
    schema = schema or resolve_schema(None)
    tables = {name: pd.read_parquet(staging / f"{name}.parquet") for name in STAGING_TABLES}
    inter, users, items, malformed = (tables[n] for n in STAGING_TABLES)
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
    reasons, timestamps, ratings = interaction_reasons(inter, cfg, now, check_users, check_items)

    kept_inter = _normalise_interactions(
        inter[reasons.isna()], timestamps[reasons.isna()], ratings[reasons.isna()]
    )
    kept_users, user_values = _normalise_attributes(
        users[user_reasons.isna()], "user_id", schema.user_features, kept_inter, "users"
    )
    kept_items, item_values = _normalise_attributes(
        items[item_reasons.isna()], "item_id", schema.item_features, kept_inter, "items"
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
            _quarantine_rows(inter, reasons, "interactions"),
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

    rows_in = len(inter) + len(users) + len(items) + len(malformed) + knowledge_rows_in
    rows_kept = (
        len(kept_inter)
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
    if kept_inter.empty:
        raise ValidationFailed(_nothing_kept(inter, staging, counts, staged_quarantine))

    # Like the other kept tables, the item knowledge is part of the data version (when there is any),
    # and so is the schema: it decides how the models will encode the attributes.
    data_version = content_hash(
        kept_inter,
        kept_users,
        kept_items,
        *([knowledge] if knowledge is not None else []),
        salt=schema.fingerprint(),
    )
    target = layout.snapshot(data_version)
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        kept_inter.to_parquet(tmp / "interactions.parquet", index=False)
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
            time_min=str(kept_inter["timestamp"].min()),
            time_max=str(kept_inter["timestamp"].max()),
            knowledge_graph=target / KNOWLEDGE_GRAPH_FILE if knowledge is not None else None,
        )
        snapshot.save(tmp / "snapshot.json")
    return snapshot


def _nothing_kept(inter: pd.DataFrame, staging: Path, counts: dict[str, int], quarantine: Path) -> str:
    """Why no interaction is left, naming the user's input files (not the staging directory)."""
    files = sorted(set(inter["source_file"].dropna().astype(str)))
    if not files:
        source = (
            json.loads((staging / "source.json").read_text()) if (staging / "source.json").is_file() else {}
        )
        files = [source.get("path") or f"the {source.get('kind', 'configured')} source"]
    named = ", ".join(files)
    if inter.empty:
        return f"{named}: no interaction rows (a header line only?); the source needs at least one event"
    return f"{named}: none of the {len(inter)} interaction rows is valid ({counts}); the rows and reasons: {quarantine}"


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
            "raw": bad[data_columns].astype("string").fillna("").agg("\t".join, axis=1),
            "reason": reasons[reasons.notna()],
        }
    )


def _normalise_interactions(frame: pd.DataFrame, timestamps: pd.Series, ratings: pd.Series) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype("string").str.strip(),
            "item_id": frame["item_id"].astype("string").str.strip(),
            "timestamp": timestamps,
            "rating": ratings.astype("float64"),
        }
    ).reset_index(drop=True)
    out.insert(0, "event_id", np.arange(len(out), dtype="int64"))
    return out


def _normalise_attributes(
    frame: pd.DataFrame, key: str, fields: dict[str, FieldSpec], interactions: pd.DataFrame, table: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed attribute table (one column per declared field) and the quarantined values.

    numeric -> float64 (NaN unknown), categorical/text -> string, list -> list of strings. Every
    entity that has events gets a row (attributes unknown when the source has none for it).
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
    return _with_all_ids(out.reset_index(drop=True), interactions[key], key, fields), (
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


def content_hash(*frames: pd.DataFrame, salt: str = "") -> str:
    """Hash of the kept content (values, not file bytes): the same data gives the same version."""
    digest = hashlib.sha256(salt.encode())
    for frame in frames:
        hashable = frame.copy()
        for column in hashable.columns:
            if hashable[column].dtype == object:
                hashable[column] = hashable[column].map(
                    lambda v: "\x1f".join(map(str, v)) if isinstance(v, list | np.ndarray) else v
                )
        digest.update(",".join(hashable.columns).encode())
        digest.update(pd.util.hash_pandas_object(hashable, index=False).values.tobytes())
    return digest.hexdigest()[:16]
