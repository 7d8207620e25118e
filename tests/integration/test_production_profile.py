"""The production profile against real servers: Feast with its SQL registry on PostgreSQL and its online
store on Redis, Airflow's metadata DB and the run index on PostgreSQL. Uses a throwaway database and
Redis DB number.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379, as on the project's
machines; skipped with the reason when they are not reachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from features.store import build_features, feature_store, online_user_features
from pipeline.config import FeatureConfig
from pipeline.layout import Layout
from tests.features_fixtures import write_snapshot

pytestmark = pytest.mark.integration

PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("RECFORGE_TEST_PG_USER", "postgres")}
REDIS_DB = 11  # a Redis database of its own, flushed after the test


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


requires_servers = pytest.mark.skipif(
    not (_reachable(5432) and _reachable(6379)), reason="needs PostgreSQL on :5432 and Redis on :6379"
)


@pytest.fixture
def database():
    import psycopg

    name = f"recforge_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@requires_servers
def test_feast_production_profile_on_postgres_and_redis(tmp_path, database, monkeypatch):
    import redis

    monkeypatch.setenv("RECFORGE_FEAST_PROFILE", "production")
    monkeypatch.setenv("RECFORGE_REDIS", f"127.0.0.1:6379,db={REDIS_DB}")
    for key, value in {
        "USER": PG["user"],
        "PASSWORD": "",
        "HOST": PG["host"],
        "PORT": str(PG["port"]),
        "DB": database,
    }.items():
        monkeypatch.setenv(f"RECFORGE_PG_{key}", value)
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    try:
        layout = Layout(tmp_path / "home")
        snapshot = write_snapshot(layout.home / "data" / "synthetic")
        feature_set = build_features(snapshot, FeatureConfig(history_length=2), layout)
        store = feature_store(layout, feature_set.namespace)
        assert type(store.registry).__name__ == "SqlRegistry"
        assert {fv.name for fv in store.list_feature_views()} >= set(feature_set.feature_views)
        assert client.dbsize() > 0  # materialisation wrote to Redis
        online = online_user_features(store, ["u1"])["u1"]
        assert online["user_interaction_count"] == 5 and online["recent_items"] == ["i4", "i5"]
        # Idempotent: a second build of the same snapshot reuses the registry state in Postgres.
        assert build_features(snapshot, FeatureConfig(history_length=2), layout) == feature_set
        # Other data (u1 has one event less) lands in its own namespace: same Redis, same registry DB,
        # and the first namespace's online values do not move.
        events = pd.read_parquet(snapshot.interactions)
        fewer = events.drop(index=events[events["user_id"] == "u1"].index[-1])
        other = write_snapshot(layout.home / "data" / "fewer", fewer)
        other_set = build_features(other, FeatureConfig(history_length=2), layout)
        assert other_set.namespace != feature_set.namespace
        assert (
            online_user_features(feature_store(layout, other_set.namespace), ["u1"])["u1"][
                "user_interaction_count"
            ]
            == 4
        )
        assert online_user_features(feature_store(layout, feature_set.namespace), ["u1"])["u1"] == online
    finally:
        client.flushdb()


@requires_servers
def test_airflow_metadata_db_on_postgres(tmp_path, database):
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg://{PG['user']}@127.0.0.1:5432/{database}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    check = subprocess.run([airflow, "db", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]


@requires_servers
def test_run_index_on_postgres_has_one_winner_per_race(database):
    """The production run index: concurrent promotions against one champion, exactly one wins."""
    from pipeline.run_index import RunIndex
    from tests.records import make_event, make_record
    from tests.unit.test_run_index import race

    url = f"postgresql+psycopg://{PG['user']}@127.0.0.1:5432/{database}"
    outcomes = race(url)
    winners = [tag for outcome, tag in outcomes if outcome == "won"]
    assert len(winners) == 1
    index = RunIndex(url)
    assert [e.model_tag for e in index.history("default")] == winners
    index.save_run(make_record("bpr/r1"))
    assert index.update_run("bpr/r1", status="completed").status == "completed"
    assert index.append_event(make_event("m:next"), expected_tag=winners[0]).id is not None


@requires_servers
def test_event_and_served_logs_on_postgres(database):
    """The production profile's online logs: two service containers append the same events, the table
    keeps each once; served answers round-trip with their lists."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    from ingestion.event_log import SqlEventLog, check_batch
    from pipeline.config import ValidationConfig
    from serving.served_log import ServedLog, SqlServedStore, read_served, served_now

    url = f"postgresql+psycopg://{PG['user']}@127.0.0.1:5432/{database}"
    batch = [{"user_id": f"u{n % 7}", "item_id": f"i{n}", "timestamp": 1700000000 + n} for n in range(200)]
    events = check_batch(batch, ValidationConfig(), now=datetime(2026, 1, 1, tzinfo=UTC)).events
    with ThreadPoolExecutor(4) as pool:  # four writers race on the same batch
        results = list(pool.map(lambda _: SqlEventLog(url).append(events), range(4)))
    assert sum(r.appended for r in results) == 200 and sum(r.duplicates for r in results) == 600
    logged = SqlEventLog(url).read()
    assert (
        len(logged) == 200 and logged["item_id"].is_unique and "secret" not in logged["source_file"].iloc[0]
    )

    store = SqlServedStore(url)
    log = ServedLog(store, flush_s=3600)
    for n in range(5):
        log.record(request_id=f"r{n}", served_at=served_now(), user_id="u1", items=["i1", "i2"], scores=[0.9, 0.1],
                   k=2, strategy="history", fallback=False, history_used=2, model_tag="m:1", deployment="default")  # fmt: skip
    log.close()
    served = read_served(store)
    assert list(served["request_id"]) == [f"r{n}" for n in range(5)] and list(served.loc[4, "items"]) == [
        "i1",
        "i2",
    ]
