"""The features stage: offline tables -> Feast apply -> point-in-time training examples -> online store.

``build_features`` is the stage function (see docs/architecture.md); ``feature_store``,
``online_user_features`` and ``online_item_features`` are what the service and the monitors use to
reach the same Feast store.

Why it is shaped like this:
- Every data version (with its feature config) gets a Feast *namespace* of its own: a Feast project
  ``recforge_<data version>_h<history length>`` with its own registry, online store and offline tables
  under ``$RECFORGE_HOME/feast/<namespace>/`` (in the production profile: its own Redis keys and SQL
  registry entries). A run on new or different data therefore never rewrites the online values that a
  deployment's service reads: the service reads its champion's namespace, and a namespace, once
  built, is never rebuilt with other data.
- The Feast repo (``feature_repo/``) holds only definitions. They read ``RECFORGE_FEAST_DIR`` when
  imported, and ``feature_store.yaml`` expands ``${RECFORGE_FEAST_PROJECT}``/``${RECFORGE_FEAST_DIR}``,
  so this module sets both while it loads them (and loads the definitions afresh each time, never from
  ``sys.modules``, so two namespaces in one process do not bleed into each other).
- Two DAGs (recsys_bpr, recsys_sasrec) build features for the same data version. A file lock per
  namespace serialises them (the file registry cannot take concurrent writers) and the second one finds the
  manifest, the registry tags and the materialisation record of the first and returns at once.
- A failed build leaves the previous state alone: tables are written to a temporary directory; they
  replace the live ones only when complete; examples are drawn before anything is materialised; on
  any error the previous tables and registry entries are put back. Temporary directories left by a
  killed build are removed by the next build of the namespace.
- Feast collapses duplicate (entity key, timestamp) rows of an entity frame, so the entity frame holds
  each distinct (user, item, timestamp) once with a row number, and every interaction takes its
  features back by that number — one example per event, always.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureStore, FeatureView
from feast.data_source import DataSource
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

from features.tables import (
    ARROW_TYPES,
    TS_TYPE,
    build_tables,
    feature_views,
    read_snapshot,
    write_tables,
)
from pipeline.arrow_ids import ARROW_ID_STRINGS, arrow_strings
from pipeline.artifacts import FeatureSet, Snapshot, atomic_path, atomic_write_json, file_lock
from pipeline.config import REPO_ROOT, FeatureConfig
from pipeline.duckdb_connection import connection, quote_identifier, sql_literal
from pipeline.layout import Layout
from pipeline.schema import DataSchema, load_schema

log = logging.getLogger(__name__)

PROFILE_ENV = "RECFORGE_FEAST_PROFILE"  # "production" selects profiles/production/feature_store.yaml
PROJECT_ENV = "RECFORGE_FEAST_PROJECT"  # the namespace (Feast project) feature_store.yaml expands
DIR_ENV = "RECFORGE_FEAST_DIR"  # the namespace's directory (registry, SQLite online store, offline tables)
TRAINING_SERVICE = "recsys_training"
ONLINE_SERVICE = "recsys_online"
DATA_VERSION_TAG = "recforge_data_version"
MANIFEST = "feature_set.json"
EXAMPLES = "examples.parquet"
SCHEMA_ENV = "RECFORGE_FEAST_SCHEMA"  # the schema JSON the definitions generate the profile views from
SCHEMA_FILE = "schema.json"  # the namespace's copy of its data schema
EXAMPLE_BATCH_ROWS = 128 * 1024  # rows per Parquet write of the examples file (bounds its memory)

# Columns of every examples file before and around the schema's attributes (docs/architecture.md).
EVENT_COLUMNS = [
    ("event_id", pa.int64()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("event_timestamp", TS_TYPE),
    ("rating", pa.float64()),
]
USER_ACTIVITY_COLUMNS = [
    ("user_interaction_count", pa.int64()),
    ("user_mean_rating", pa.float64()),
    ("recent_items", pa.list_(pa.string())),
]
ITEM_POPULARITY_COLUMNS = [("item_interaction_count", pa.int64()), ("item_mean_rating", pa.float64())]


def example_schema(schema: DataSchema) -> pa.Schema:
    """Columns of the examples Parquet: the event, then its features point-in-time (user attributes,
    user activity, item attributes, item popularity)."""
    return pa.schema(
        [
            *EVENT_COLUMNS,
            *[(n, ARROW_TYPES[f.type]) for n, f in schema.user_features.items()],
            *USER_ACTIVITY_COLUMNS,
            *[(n, ARROW_TYPES[f.type]) for n, f in schema.item_features.items()],
            *ITEM_POPULARITY_COLUMNS,
        ]
    )


def item_online_features(schema: DataSchema) -> list[str]:
    """``view:feature`` references of everything Feast holds per item."""
    refs = [f"item_profile:{name}" for name in schema.item_features]
    return refs + [f"item_popularity:{name}" for name, _ in ITEM_POPULARITY_COLUMNS]


class FeatureBuildError(RuntimeError):
    """The features stage failed; the message names the file or field at fault."""


# --------------------------------------------------------------------------- the Feast repo


def repo_path(feature_repo: FeatureConfig | str | Path | None = None) -> Path:
    """The Feast repo directory (``FeatureConfig.feature_repo``, relative paths from the repo root)."""
    value = feature_repo.feature_repo if isinstance(feature_repo, FeatureConfig) else feature_repo
    path = Path(value or "feature_repo")
    path = path if path.is_absolute() else REPO_ROOT / path
    if not (path / "feature_store.yaml").exists():
        raise FeatureBuildError(
            f"{path}: not a Feast repo (no feature_store.yaml); check features.feature_repo"
        )
    return path


def store_yaml(repo: Path, profile: str | None = None) -> Path:
    """``feature_store.yaml`` of the profile: ``None``/"embedded" = the repo's own, else ``profiles/<p>/``."""
    profile = profile if profile is not None else os.environ.get(PROFILE_ENV, "")
    if profile in ("", "embedded", "default"):
        return repo / "feature_store.yaml"
    path = repo / "profiles" / profile / "feature_store.yaml"
    if not path.exists():
        known = sorted(p.name for p in (repo / "profiles").glob("*") if (p / "feature_store.yaml").exists())
        raise FeatureBuildError(
            f"{path}: no such Feast profile {profile!r} (set {PROFILE_ENV} to one of {known})"
        )
    return path


def namespace_for(data_version: str, cfg: FeatureConfig) -> str:
    """The Feast namespace of a data version built with ``cfg``: ``recforge_<data version>_h<history>``.

    The history length is part of it because it changes the online values (``recent_items``).
    """
    version = re.sub(r"[^A-Za-z0-9_]", "_", data_version)
    return f"recforge_{version}_h{cfg.history_length}"


def history_length_of(namespace: str) -> int | None:
    """The history length a namespace's ``recent_items`` hold (its ``_h<N>`` suffix), or None."""
    match = re.search(r"_h(\d+)$", namespace)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def _feast_env(home: Path, namespace: str) -> Iterator[None]:
    """Set what ``feature_store.yaml`` and the definitions expand while Feast reads them; restore after."""
    directory = Layout(home).feast_namespace(namespace)
    values = {
        "RECFORGE_HOME": str(home),
        PROJECT_ENV: namespace,
        DIR_ENV: str(directory),
        SCHEMA_ENV: str(directory / SCHEMA_FILE) if (directory / SCHEMA_FILE).is_file() else "",
    }
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_definitions(repo: Path, home: Path, namespace: str) -> list[Any]:
    """Every Feast object defined in ``repo``'s ``.py`` files, imported afresh for ``namespace`` (whose
    ``schema.json``, when the namespace has one, decides the profile views)."""
    objects: list[Any] = []
    with _feast_env(home, namespace):
        for file in sorted(repo.rglob("*.py")):
            if any(part.startswith(".") or part == "__pycache__" for part in file.relative_to(repo).parts):
                continue
            spec = importlib.util.spec_from_file_location(f"_recforge_feast_{uuid.uuid4().hex}", file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise FeatureBuildError(f"{file}: importing the Feast definitions failed: {exc}") from exc
            for value in vars(module).values():
                if isinstance(value, Entity | DataSource | FeatureView | FeatureService) and not any(
                    value is o for o in objects
                ):
                    objects.append(value)
    names = {o.name for o in objects if isinstance(o, FeatureView)}
    missing = set(feature_views(namespace_schema(home, namespace))) - names
    if missing:
        raise FeatureBuildError(f"{repo}: feature view(s) {sorted(missing)} are not defined")
    return objects


def feature_store(
    where: Layout | Path | str,
    namespace: str,
    feature_repo: FeatureConfig | str | Path | None = None,
    profile: str | None = None,
) -> FeatureStore:
    """A ``FeatureStore`` of ``namespace`` on the layout's home (``Layout``) or a Feast repo directory.

    With a repo directory, ``RECFORGE_HOME`` (or ``<repo root>/.recforge``) is the home. The profile
    comes from ``profile`` or ``$RECFORGE_FEAST_PROFILE`` (default: the embedded SQLite/DuckDB one).
    """
    if isinstance(where, Layout):
        home, repo = where.home, repo_path(feature_repo)
    elif (Path(where) / "feature_store.yaml").exists():
        home = Path(os.environ.get("RECFORGE_HOME") or REPO_ROOT / ".recforge")
        repo = Path(where).resolve()
    else:
        home, repo = Path(where), repo_path(feature_repo)
    home = home.resolve()
    Layout(home).feast_namespace(namespace).mkdir(parents=True, exist_ok=True)
    with _feast_env(home, namespace):
        return FeatureStore(repo_path=str(repo), fs_yaml_file=store_yaml(repo, profile))


# --------------------------------------------------------------------------- the stage


def namespace_schema(home: Path, namespace: str) -> DataSchema:
    """The data schema a namespace was built with (the default schema for namespaces without a copy)."""
    path = Layout(home).feast_namespace(namespace) / SCHEMA_FILE
    return load_schema(path if path.is_file() else None)


def _examples_dir(layout: Layout, namespace: str) -> Path:
    return layout.features(namespace)


def _clean_leftovers(namespace_dir: Path) -> None:
    """Remove temporary table directories of builds whose process is gone (killed mid-build)."""
    for path in namespace_dir.glob(".offline.*"):
        match = re.match(r"\.offline\.(?:tmp|prev)-(\d+)", path.name)
        if match and not _alive(int(match.group(1))):
            log.info("features: removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state_matches(store: FeatureStore, layout: Layout, feature_set: FeatureSet) -> bool:
    """True when the registry, the offline tables and the online store hold this feature set's data."""
    if not feature_set.examples.exists():
        return False
    until = datetime.fromisoformat(feature_set.materialized_until)
    for name in feature_set.feature_views:
        if not (layout.feast_offline(feature_set.namespace) / f"{name}.parquet").exists():
            return False
        try:
            view = store.get_feature_view(name)
        except Exception:  # noqa: BLE001 - any registry miss means "rebuild"
            return False
        if view.tags.get(DATA_VERSION_TAG) != feature_set.data_version:
            return False
        if not any(end >= until for _, end in view.materialization_intervals):
            return False
    online = store.config.online_store
    if getattr(online, "type", "") == "sqlite" and not Path(online.path).exists():
        return False
    return True


def _existing(layout: Layout, namespace: str, cfg: FeatureConfig) -> FeatureSet | None:
    manifest = _examples_dir(layout, namespace) / MANIFEST
    if not manifest.exists():
        return None
    feature_set = FeatureSet.load(manifest)
    if feature_set.namespace == namespace and _state_matches(
        feature_store(layout, namespace, cfg), layout, feature_set
    ):
        return feature_set
    log.info("features %s: manifest found but Feast state differs; rebuilding", namespace)
    return None


def _time_span(snapshot: Snapshot, events: pa.Table) -> tuple[datetime, datetime]:
    """Materialisation window: from before the first event (profiles) to after the last one (+1 µs rows).

    Taken from the events themselves, widened by the manifest's ``time_min``/``time_max`` when those are
    wider, so a manifest rounded to seconds can never cut off the final history rows.
    """
    span = pc.min_max(events["event_timestamp"])
    lo, hi = pd.Timestamp(span["min"].as_py()), pd.Timestamp(span["max"].as_py())
    for field in ("time_min", "time_max"):
        try:
            value = pd.Timestamp(getattr(snapshot, field))
        except ValueError as exc:
            raise FeatureBuildError(
                f"snapshot {snapshot.data_version}: {field}={getattr(snapshot, field)!r} is not a timestamp"
            ) from exc
        value = value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")
        lo, hi = (min(lo, value), hi) if field == "time_min" else (lo, max(hi, value))
    return (lo - pd.Timedelta(seconds=1)).to_pydatetime(), (hi + pd.Timedelta(seconds=1)).to_pydatetime()


def build_features(snapshot: Snapshot, cfg: FeatureConfig, layout: Layout) -> FeatureSet:
    """Build the offline tables, apply and materialise Feast, and draw the point-in-time examples.

    Idempotent per data version: when the manifest exists and Feast still holds that version (registry
    tags, materialisation record, offline tables), it returns the manifest without work.
    """
    timings: dict[str, float] = {}
    namespace = namespace_for(snapshot.data_version, cfg)
    namespace_dir = layout.feast_namespace(namespace)
    namespace_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(namespace_dir)
    existing = _existing(layout, namespace, cfg)
    if existing is not None:
        log.info("features %s: up to date, reusing %s", namespace, existing.examples)
        return existing

    # 1. Tables, outside the lock and away from the live ones (a failure here touches nothing).
    started = time.perf_counter()
    schema = load_schema(snapshot.schema)
    frames = read_snapshot(snapshot.interactions, snapshot.users, snapshot.items)
    tables = build_tables(frames, cfg.history_length, schema)
    staging = namespace_dir / f".offline.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_tables(tables, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    timings["tables_s"] = time.perf_counter() - started
    rows = {name: table.num_rows for name, table in tables.items()}
    # The history state behind the tables and the pandas frame are each as large as the log: keep only
    # the compact Arrow event columns the retrieval needs.
    events = event_table(frames.interactions)
    del tables, frames
    log.info("features %s: built tables %s in %.2fs", snapshot.data_version, rows, timings["tables_s"])

    try:
        # One builder per namespace: the file registry and SQLite take one writer.
        with file_lock(namespace_dir / ".build.lock"):
            existing = _existing(layout, namespace, cfg)  # another DAG may have finished it
            if existing is not None:
                log.info("features %s: built concurrently by another run; reusing", namespace)
                return existing
            return _publish(snapshot, schema, cfg, layout, namespace, events, staging, timings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(
    snapshot: Snapshot,
    schema: DataSchema,
    cfg: FeatureConfig,
    layout: Layout,
    namespace: str,
    events: pa.Table,
    staging: Path,
    timings: dict[str, float],
) -> FeatureSet:
    """Swap the tables in, apply, retrieve, materialise; put the previous tables/registry back on error."""
    repo = repo_path(cfg)
    views = list(feature_views(schema))
    schema.save(layout.feast_namespace(namespace) / SCHEMA_FILE)  # what the definitions generate from
    store = feature_store(layout, namespace, cfg)
    previous: list[Any] = []
    with contextlib.suppress(Exception):  # first build: nothing registered yet
        previous = [store.get_feature_view(name) for name in views]

    offline = layout.feast_offline(namespace)
    backup = layout.feast_namespace(namespace) / f".offline.prev-{os.getpid()}"
    shutil.rmtree(backup, ignore_errors=True)
    if offline.exists():
        os.replace(offline, backup)
    os.replace(staging, offline)
    try:
        started = time.perf_counter()
        objects = load_definitions(repo, layout.home, namespace)
        for obj in objects:
            if isinstance(obj, FeatureView):
                obj.tags = {**obj.tags, DATA_VERSION_TAG: snapshot.data_version}
        store.apply(objects)
        timings["apply_s"] = time.perf_counter() - started
        log.info(
            "features %s: feast apply (%d objects) in %.2fs",
            snapshot.data_version,
            len(objects),
            timings["apply_s"],
        )

        started = time.perf_counter()
        examples_path = _examples_dir(layout, namespace) / EXAMPLES
        n_examples = _write_examples(store, events, examples_path, schema)
        timings["historical_s"] = time.perf_counter() - started
        log.info(
            "features %s: %d examples via get_historical_features in %.2fs -> %s",
            snapshot.data_version,
            n_examples,
            timings["historical_s"],
            examples_path,
        )

        # Every history row lies at or before the last event + 1 µs; profiles at the first event.
        start, until = _time_span(snapshot, events)
        started = time.perf_counter()
        store.materialize(start_date=start, end_date=until, feature_views=views)
        timings["materialize_s"] = time.perf_counter() - started
        log.info(
            "features %s: materialised [%s, %s] in %.2fs",
            snapshot.data_version,
            start,
            until,
            timings["materialize_s"],
        )
    except BaseException:
        log.exception(
            "features %s: build failed; restoring the previous offline tables and registry",
            snapshot.data_version,
        )
        shutil.rmtree(offline, ignore_errors=True)
        if backup.exists():
            os.replace(backup, offline)
        if previous:
            with contextlib.suppress(Exception):
                store.apply(previous)
        raise
    shutil.rmtree(backup, ignore_errors=True)

    feature_set = FeatureSet(
        data_version=snapshot.data_version,
        feature_repo=repo,
        examples=examples_path,
        feature_views=views,
        feature_service=TRAINING_SERVICE,
        materialized_until=until.isoformat(),
        knowledge_graph=snapshot.knowledge_graph,
        namespace=namespace,
        schema=layout.feast_namespace(namespace) / SCHEMA_FILE,
        users=snapshot.users,
        items=snapshot.items,
    )
    directory = _examples_dir(layout, namespace)
    atomic_write_json(
        directory / "build_stats.json",
        {"timings_s": timings, "examples": n_examples, "profile": os.environ.get(PROFILE_ENV, "")},
    )
    feature_set.save(directory / MANIFEST)
    log.info("features %s: done %s", snapshot.data_version, {k: round(v, 2) for k, v in timings.items()})
    return feature_set


def event_table(interactions: pd.DataFrame) -> pa.Table:
    """The snapshot's events as Arrow columns named as in the examples (``EVENT_COLUMNS``), in event_id
    order (ids as Arrow strings: no Python object per row)."""
    ordered = interactions["event_id"].is_monotonic_increasing  # as validation writes it: no copy
    inter = interactions if ordered else interactions.sort_values("event_id", kind="stable")
    return pa.Table.from_arrays(
        [
            pa.array(inter["event_id"].to_numpy(dtype="int64")),
            arrow_strings(inter["user_id"]),
            arrow_strings(inter["item_id"]),
            pa.array(inter["timestamp"]).cast(TS_TYPE),
            pa.array(inter["rating"].to_numpy(dtype="float64", na_value=np.nan), from_pandas=True),
        ],
        schema=pa.schema(EVENT_COLUMNS),
    )


def distinct_keys(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(key row of every event, first event of every key row) for the distinct (user_id, item_id,
    event_timestamp) keys, numbered in order of first appearance."""
    columns = [
        events["event_timestamp"].cast(pa.int64()).to_numpy(),
        events["item_id"].combine_chunks().dictionary_encode().indices.to_numpy(),
        events["user_id"].combine_chunks().dictionary_encode().indices.to_numpy(),
    ]
    order = np.lexsort(columns)  # stable: the first event of a key comes first in its run
    ts, item, user = (c[order] for c in columns)
    new_key = np.ones(len(order), dtype=bool)
    new_key[1:] = (ts[1:] != ts[:-1]) | (item[1:] != item[:-1]) | (user[1:] != user[:-1])
    del ts, item, user, columns
    first = order[new_key]
    rank = np.empty(len(first), dtype="int64")
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    key_row = np.empty(len(order), dtype="int64")
    key_row[order] = rank[np.cumsum(new_key) - 1]
    return key_row, np.sort(first)


def _write_examples(store: FeatureStore, events: pa.Table, path: Path, schema: DataSchema) -> int:
    """One example per event (``event_table`` columns), features point-in-time from ``recsys_training``.

    The point-in-time result is persisted to a Parquet file next to ``path`` (the ASOF store streams it
    there, spilling to disk) and joined back to the events by DuckDB, which the examples file is written
    from a batch at a time: neither the training set nor its history lists are ever held whole in memory.
    """
    columns_schema = example_schema(schema)
    key_row, first = distinct_keys(events)
    firsts = events.select(["user_id", "item_id", "event_timestamp"]).take(pa.array(first))
    entity_df = pd.DataFrame(
        {
            "user_id": firsts["user_id"].to_pandas(types_mapper=ARROW_ID_STRINGS.get),
            "item_id": firsts["item_id"].to_pandas(types_mapper=ARROW_ID_STRINGS.get),
            "event_timestamp": firsts["event_timestamp"].to_pandas(),
            "key_row": np.arange(len(first), dtype="int64"),
        }
    )
    del firsts
    events = events.append_column("key_row", pa.array(key_row, type=pa.int64()))
    del key_row

    job = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(TRAINING_SERVICE)
    )
    del entity_df  # the job holds its own Arrow copy of the entity rows
    path.parent.mkdir(parents=True, exist_ok=True)
    retrieved = path.parent / f".retrieved-{os.getpid()}.parquet"
    try:
        job.persist(SavedDatasetFileStorage(path=str(retrieved)), allow_overwrite=True)
        del job
        with atomic_path(path) as tmp:
            n_rows = _join_examples(events, retrieved, len(first), columns_schema, tmp)
    finally:
        retrieved.unlink(missing_ok=True)
    return n_rows


def _join_examples(
    events: pa.Table, retrieved: Path, n_keys: int, columns_schema: pa.Schema, out: Path
) -> int:
    """Write ``out``: every event with the features of its key row in ``retrieved``, in (time, event_id)
    order, the order the split reads them in (so it streams the file rather than sorting it)."""
    features = columns_schema.names[len(EVENT_COLUMNS) :]
    got = set(pq.read_schema(retrieved).names)
    for name in features:
        if name not in got:
            raise FeatureBuildError(
                f"get_historical_features: feature {name!r} missing from {TRAINING_SERVICE}"
            )
    with connection(spill_beside=out.parent) as con:
        con.register("events", events)
        source = f"read_parquet({sql_literal(str(retrieved))})"
        counted = con.execute(f"SELECT count(*), count(DISTINCT key_row) FROM {source}").fetchall()
        rows, distinct = counted[0]
        if rows != n_keys or distinct != n_keys:
            raise FeatureBuildError(
                f"get_historical_features returned {rows} rows ({distinct} distinct) for "
                f"{n_keys} distinct (user_id, item_id, event_timestamp) keys"
            )
        selected = [f"e.{name}" for name, _ in EVENT_COLUMNS] + [f"f.{quote_identifier(n)}" for n in features]
        reader = con.sql(
            f"SELECT {', '.join(selected)} FROM events e JOIN {source} f ON f.key_row = e.key_row "
            "ORDER BY e.event_timestamp, e.event_id"
        ).to_arrow_reader(EXAMPLE_BATCH_ROWS)
        n_rows = 0
        with pq.ParquetWriter(out, columns_schema) as writer:
            for batch in reader:
                columns = [
                    batch.column(i).cast(columns_schema.field(i).type) for i in range(batch.num_columns)
                ]
                columns = [_empty_for_null(c) if pa.types.is_list(c.type) else c for c in columns]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=columns_schema))
                n_rows += batch.num_rows
    if n_rows != events.num_rows:
        raise FeatureBuildError(f"examples: wrote {n_rows} rows for {events.num_rows} events")
    return n_rows


def _empty_for_null(column: pa.ListArray) -> pa.ListArray:
    """Null lists -> empty lists (Feast may turn ``[]`` into null; consumers expect a list)."""
    if column.null_count == 0:
        return column
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("int32")
    return pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(column))


# --------------------------------------------------------------------------- online reads


def _rows(response: dict[str, list[Any]], key: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    names = [n for n in response if n != key]
    for i, entity_id in enumerate(response[key]):
        out[str(entity_id)] = {n: response[n][i] for n in names}
    return {i: out.get(i, dict.fromkeys(names)) for i in ids}


def online_user_features(store: FeatureStore, user_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``{user_id: {<user attributes>, user_interaction_count, user_mean_rating, recent_items}}``.

    Reads the ``recsys_online`` service (user_profile + user_activity): the state after each user's last
    materialised event. Unknown users get ``None`` values and ``recent_items == []`` (cold start).
    """
    if not user_ids:
        return {}
    response = store.get_online_features(
        features=store.get_feature_service(ONLINE_SERVICE),
        entity_rows=[{"user_id": str(u)} for u in user_ids],
    ).to_dict()
    rows = _rows(response, "user_id", [str(u) for u in user_ids])
    for row in rows.values():
        row["recent_items"] = list(row.get("recent_items") or [])
    return rows


def online_item_features(
    store: FeatureStore, item_ids: list[str], schema: DataSchema
) -> dict[str, dict[str, Any]]:
    """``{item_id: {<item attributes>, item_interaction_count, item_mean_rating}}`` (online); list
    attributes as lists ([] when unknown).

    Meant for refreshing an in-memory item table in the service, not per request (docs/architecture.md,
    "Performance notes").
    """
    if not item_ids:
        return {}
    response = store.get_online_features(
        features=item_online_features(schema), entity_rows=[{"item_id": str(i)} for i in item_ids]
    ).to_dict()
    rows = _rows(response, "item_id", [str(i) for i in item_ids])
    lists = [name for name, spec in schema.item_features.items() if spec.type == "list"]
    for row in rows.values():
        for name in lists:
            row[name] = list(row.get(name) or [])
    return rows
