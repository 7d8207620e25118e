"""The online event log: interactions pushed to the service (``POST /events``, ``recforge push-events``),
kept durably until the batch pipeline ingests them as part of its source.

Layout: ``$RECFORGE_HOME/event_log/events-<UTC stamp>-<8 hex>.parquet``, one file per accepted batch,
written under a temporary name, flushed to disk and renamed, so a crash never leaves a partial file.
Columns: the interaction columns as strings (as every reader emits them; the timestamp in ISO-8601 UTC
with microseconds, the rating empty when none) and ``received_at``.

A batch is checked with the rules every interaction meets (``ingestion.validate.interaction_reasons``)
and appended only if every row passes: a bad batch changes nothing and names each bad row's reason.

Production profile: with ``RECFORGE_ONLINE_LOG_URL`` set (a SQLAlchemy URL, e.g.
``postgresql+psycopg://...``) the log is the table ``recforge_events`` there instead
(``SqlEventLog``): the key is a unique constraint and an insert skips the keys it holds, so several
service containers append to one log. ``open_event_log`` picks the one the environment asks for.

Exactly once. An event is its (user_id, item_id, timestamp) key. The log appends only keys it does not
hold yet (a retried batch appends nothing and reports its rows as duplicates); several service workers
append under one file lock. The batch pipeline reads the whole log with the source on every run
(``ingestion.ingest``) and drops logged events that the source already holds (the shop's own export
caught up with them), so each event reaches a snapshot once.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ingestion.schema import INTERACTION_COLUMNS, PROVENANCE
from pipeline.artifacts import file_lock
from pipeline.config import ValidationConfig
from pipeline.run_index import sql_engine

KEY = ["user_id", "item_id", "timestamp"]
ONLINE_LOG_URL_ENV = "RECFORGE_ONLINE_LOG_URL"  # a database for the event and served logs (production)
MAX_BATCH = 1000  # events per request: bounded memory and lock time per call


@dataclass
class BadEvent:
    row: int  # 0-based position in the pushed batch
    reason: str
    event: dict[str, Any]


@dataclass
class Intake:
    """A checked batch: the normalised events when every row passed, else the bad rows."""

    events: pd.DataFrame | None
    bad: list[BadEvent] = field(default_factory=list)


@dataclass
class Appended:
    appended: int
    duplicates: int  # rows whose event the log already held
    file: str | None
    events: pd.DataFrame  # the rows appended (the batch minus the duplicates)


def check_batch(
    records: list[dict[str, Any]],
    cfg: ValidationConfig,
    known_items: Container[str] | None = None,
    now: datetime | None = None,
) -> Intake:
    """Check pushed events with the ingestion rules; ``known_items``: the catalogue an event must name
    (None: any item). Users are not checked: a visitor's first events are how a new user arrives."""
    from ingestion.validate import interaction_reasons

    if not records:
        return Intake(None, [BadEvent(0, "empty_batch", {})])
    if len(records) > MAX_BATCH:
        return Intake(None, [BadEvent(MAX_BATCH, f"batch_too_large: at most {MAX_BATCH} events", {})])
    frame = pd.DataFrame(
        {column: [_as_text(record.get(column)) for record in records] for column in INTERACTION_COLUMNS}
    )
    reasons, timestamps, ratings = interaction_reasons(
        frame, cfg, now or datetime.now(UTC), None, known_items
    )
    # JSON may carry lone surrogates (the escape \ud800 alone): no file of the log could store them.
    encodable = frame.map(lambda v: v is None or _encodable(v)).all(axis=1)
    reasons[~encodable] = "invalid_unicode"
    if reasons.notna().any():
        bad = [
            BadEvent(
                int(row),
                str(reasons[row]),
                {k: v for k, v in records[row].items() if k in INTERACTION_COLUMNS},
            )
            for row in reasons.index[reasons.notna()]
        ]
        return Intake(None, bad)
    events = pd.DataFrame(
        {
            "user_id": frame["user_id"].str.strip(),
            "item_id": frame["item_id"].str.strip(),
            "timestamp": timestamps.map(lambda t: t.isoformat(timespec="microseconds")),
            "rating": ratings.map(lambda r: "" if pd.isna(r) else repr(float(r))),
        }
    )
    return Intake(events)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


class EventLog:
    """Append-only Parquet log of pushed events (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._keys: set[tuple[str, str, str]] = set()
        self._read_files: set[str] = set()
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return str(self.directory)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("events-*.parquet")) if self.directory.is_dir() else []

    def _refresh_keys(self) -> None:
        """Learn the keys of files written since the last look (by this or another process)."""
        for path in self.files():
            if path.name not in self._read_files:
                frame = pd.read_parquet(path, columns=KEY)
                self._keys.update(zip(frame["user_id"], frame["item_id"], frame["timestamp"], strict=True))
                self._read_files.add(path.name)

    def append(self, events: pd.DataFrame) -> Appended:
        """Append the events (``check_batch``'s output) the log does not hold yet, durably."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock, file_lock(self.directory / ".lock"):
            self._refresh_keys()
            keys = list(zip(events["user_id"], events["item_id"], events["timestamp"], strict=True))
            fresh = events[[key not in self._keys for key in keys]]
            if fresh.empty:
                return Appended(0, len(events), None, fresh)
            received = datetime.now(UTC)
            name = f"events-{received.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = self.directory / f".{name}.tmp"
            fresh.assign(received_at=received.isoformat(timespec="microseconds")).to_parquet(tmp, index=False)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / name)
            self._keys.update(zip(fresh["user_id"], fresh["item_id"], fresh["timestamp"], strict=True))
            self._read_files.add(name)
        return Appended(len(fresh), len(events) - len(fresh), str(self.directory / name), fresh)

    def read(self) -> pd.DataFrame:
        """Every logged event as raw interaction rows (strings) with provenance (file, row number)."""
        frames = []
        for path in self.files():
            frame = pd.read_parquet(path, columns=INTERACTION_COLUMNS)
            frame["source_file"] = str(path)
            frame["source_line"] = range(1, len(frame) + 1)
            frames.append(frame)
        if not frames:
            frames = [pd.DataFrame({c: pd.Series(dtype="string") for c in INTERACTION_COLUMNS + PROVENANCE})]
        text = {c: "string" for c in INTERACTION_COLUMNS + ["source_file"]}
        return pd.concat(frames, ignore_index=True).astype({**text, "source_line": "int64"})


class SqlLogTable:
    """A log kept as one database table (``RECFORGE_ONLINE_LOG_URL``): created on first use, named in
    provenance without its password."""

    TABLE = ""

    def __init__(self, url: str, *columns: Any) -> None:
        import sqlalchemy as sa

        self.url = url
        self.engine = sql_engine(url)
        metadata = sa.MetaData()
        self.table = sa.Table(self.TABLE, metadata, *columns)
        create_tables(self.engine, metadata)

    @property
    def location(self) -> str:
        import sqlalchemy as sa

        return f"{sa.engine.make_url(self.url).render_as_string(hide_password=True)}#{self.TABLE}"


class SqlEventLog(SqlLogTable):
    """The event log as a database table (see the module docstring); same interface as ``EventLog``."""

    TABLE = "recforge_events"

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        super().__init__(
            url,
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            *(sa.Column(c, sa.Text, nullable=c == "rating") for c in [*INTERACTION_COLUMNS, "received_at"]),
            sa.UniqueConstraint(*KEY, name="recforge_events_key"),
        )

    def append(self, events: pd.DataFrame) -> Appended:
        """Insert the events whose key the table does not hold yet (one statement, atomic)."""
        received = datetime.now(UTC).isoformat(timespec="microseconds")
        rows = events.assign(received_at=received)[[*INTERACTION_COLUMNS, "received_at"]].to_dict("records")
        insert = _insert_for(self.engine.dialect.name)
        statement = (
            insert(self.table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=KEY)
            .returning(*(self.table.c[c] for c in KEY))
        )
        with self.engine.begin() as connection:
            inserted = {tuple(row) for row in connection.execute(statement)}
        fresh = events[
            [
                key in inserted
                for key in zip(events["user_id"], events["item_id"], events["timestamp"], strict=True)
            ]
        ]
        return Appended(len(fresh), len(events) - len(fresh), self.location if len(fresh) else None, fresh)

    def read(self) -> pd.DataFrame:
        """Every logged event as raw interaction rows with provenance (this table, the row's sequence)."""
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(self.table).order_by(self.table.c.seq)).mappings().all()
        frame = pd.DataFrame(rows, columns=["seq", *INTERACTION_COLUMNS, "received_at"])
        text = {c: "string" for c in INTERACTION_COLUMNS}
        out = frame[INTERACTION_COLUMNS].astype(text)
        out["source_file"] = pd.Series([self.location] * len(frame), dtype="string")
        out["source_line"] = frame["seq"].astype("int64")
        return out


def open_event_log(layout: Any) -> EventLog | SqlEventLog:
    """The event log of this environment: ``RECFORGE_ONLINE_LOG_URL``'s table, else the home's files."""
    url = os.environ.get(ONLINE_LOG_URL_ENV, "").strip()
    return SqlEventLog(url) if url else EventLog(layout.event_log)


def _insert_for(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the profiles use Postgres (production) or SQLite (tests)
        raise ValueError(f"{ONLINE_LOG_URL_ENV}: {dialect} is not supported (postgresql or sqlite)")
    return insert


_CREATE = threading.Lock()


def create_tables(engine: Any, metadata: Any) -> None:
    """Create the tables that do not exist yet. Several containers may start at once: the loser of a
    creation race finds the table there and goes on."""
    import sqlalchemy as sa

    with _CREATE:
        try:
            metadata.create_all(engine, checkfirst=True)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            missing = [t.name for t in metadata.sorted_tables if not sa.inspect(engine).has_table(t.name)]
            if missing:
                raise
