"""The run index: one record per run and every deployment's history, in SQLite or PostgreSQL.

Why a database and not the run directories: "which model is live, and why" must have one answer that
every process agrees on at once: the gate, the package stage, the CLI, the Airflow run-note listener
and the running service. Directory globbing answered it differently depending on what had finished.

Two tables:
- ``runs``: one ``RunRecord`` per run (key columns for queries, the whole record as JSON);
- ``deployment_events``: the append-only history of each deployment (``DeploymentEvent``: promotions
  and rollbacks). A deployment's champion is its newest event, so a promotion or rollback is a single
  INSERT: the live service sees either the old champion or the new one, never a mix.

Where: ``RECFORGE_RUN_INDEX_URL`` (environment, so credentials stay out of the repo), else
``run_index.url`` in the pipeline config, else ``sqlite:///$RECFORGE_HOME/run_index.db``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.artifacts import DeploymentEvent, RunRecord, file_lock
from pipeline.layout import Layout

URL_ENV = "RECFORGE_RUN_INDEX_URL"

metadata = sa.MetaData()
runs_table = sa.Table(
    "recforge_runs",
    metadata,
    sa.Column("run_uid", sa.String(400), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("deployment", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("run_key", sa.String(600), nullable=False, index=True),
    sa.Column("record", sa.Text, nullable=False),
)
events_table = sa.Table(
    "recforge_deployment_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("deployment", sa.String(200), nullable=False, index=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model_tag", sa.String(400), nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)


class ChampionChanged(RuntimeError):
    """The deployment's champion is not the one the caller judged against (another run got there first)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def index_url(layout: Layout, configured: str = "") -> str:
    return os.environ.get(URL_ENV) or configured or f"sqlite:///{layout.run_index}"


@cache
def sql_engine(url: str) -> sa.Engine:
    """One engine (connection pool) per database URL and process, for the run index and the online logs."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several processes (Airflow tasks, the service's watcher, the CLI) share the file: wait for
        # a writer instead of failing, and let readers go on while one writes (WAL).
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    return engine


@cache
def _engine(url: str) -> sa.Engine:
    engine = sql_engine(url)
    metadata.create_all(engine)
    return engine


class RunIndex:
    """Reads and writes runs and deployment histories; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    @classmethod
    def for_layout(cls, layout: Layout, configured_url: str = "") -> RunIndex:
        return cls(index_url(layout, configured_url))

    def describe(self) -> str:
        """The URL without a password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    # ------------------------------------------------------------------------------------- runs

    def save_run(self, record: RunRecord) -> RunRecord:
        row = {
            "model": record.model,
            "deployment": record.deployment,
            "status": record.status,
            "started_at": record.started_at,
            "run_key": record.run_key,
            "record": json.dumps(record.to_dict(), sort_keys=True, default=str),
        }
        with self.engine.begin() as conn:
            updated = conn.execute(
                runs_table.update().where(runs_table.c.run_uid == record.run_uid).values(**row)
            ).rowcount
            if not updated:
                conn.execute(runs_table.insert().values(run_uid=record.run_uid, **row))
        return record

    def update_run(self, run_uid: str, **fields: Any) -> RunRecord:
        """Merge ``fields`` into the run's record (read-modify-write of one row)."""
        current = self.run(run_uid)
        if current is None:
            raise KeyError(f"run {run_uid!r} is not in the run index {self.describe()}")
        return self.save_run(RunRecord.from_dict({**current.to_dict(), **fields}))

    def run(self, run_uid: str) -> RunRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table.c.record).where(runs_table.c.run_uid == run_uid)).first()
        return RunRecord.from_dict(json.loads(row[0])) if row else None

    def runs(
        self, model: str | None = None, deployment: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs, newest first."""
        query = sa.select(runs_table.c.record).order_by(runs_table.c.started_at.desc())
        if model is not None:
            query = query.where(runs_table.c.model == model)
        if deployment is not None:
            query = query.where(runs_table.c.deployment == deployment)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [RunRecord.from_dict(json.loads(r[0])) for r in conn.execute(query)]

    # ------------------------------------------------------------------------------ deployments

    def champion(self, deployment: str) -> DeploymentEvent | None:
        """The deployment's newest event (its live champion), or None before the first promotion."""
        query = (
            sa.select(events_table.c.id, events_table.c.record)
            .where(events_table.c.deployment == deployment)
            .order_by(events_table.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _event(row) if row else None

    def history(self, deployment: str) -> list[DeploymentEvent]:
        """Every promotion and rollback of the deployment, oldest first."""
        query = (
            sa.select(events_table.c.id, events_table.c.record)
            .where(events_table.c.deployment == deployment)
            .order_by(events_table.c.id)
        )
        with self.engine.connect() as conn:
            return [_event(row) for row in conn.execute(query)]

    def deployments(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sa.select(events_table.c.deployment).distinct()))

    def append_event(self, event: DeploymentEvent, expected_tag: str | None) -> DeploymentEvent:
        """Make ``event`` the deployment's champion if the champion is still ``expected_tag``.

        Compare-and-swap under a per-deployment lock, so two runs judged against the same champion
        cannot both replace it: the second gets ``ChampionChanged`` and must be judged again.
        """
        with self._locked(event.deployment) as conn:
            row = conn.execute(
                sa.select(events_table.c.model_tag)
                .where(events_table.c.deployment == event.deployment)
                .order_by(events_table.c.id.desc())
                .limit(1)
            ).first()
            current = row[0] if row else None
            if current != expected_tag:
                raise ChampionChanged(
                    f"deployment {event.deployment!r}: champion is {current or 'none'}, "
                    f"not {expected_tag or 'none'} as judged"
                )
            body = json.dumps(event.to_dict(), sort_keys=True, default=str)
            inserted = conn.execute(
                events_table.insert().values(
                    deployment=event.deployment,
                    at=event.at,
                    action=event.action,
                    model_tag=event.model_tag,
                    record=body,
                )
            ).inserted_primary_key
            if inserted is None:  # a single-row insert into a table with a primary key always has one
                raise RuntimeError(f"deployment {event.deployment!r}: the database returned no event id")
            new_id = inserted[0]
        return DeploymentEvent.from_dict({**event.to_dict(), "id": int(new_id)})

    @contextmanager
    def _locked(self, deployment: str) -> Iterator[sa.Connection]:
        """A transaction holding the deployment's lock: a file lock beside SQLite, an advisory lock in PostgreSQL."""
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database or ""
            lock = Path(f"{database}.{deployment}.lock") if database else None
            if lock is None or database == ":memory:":
                with self.engine.begin() as conn:
                    yield conn
                return
            with file_lock(lock), self.engine.begin() as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"recforge-deployment:{deployment}"},
                )
            yield conn


def _event(row: Any) -> DeploymentEvent:
    return DeploymentEvent.from_dict({**json.loads(row[1]), "id": int(row[0])})
