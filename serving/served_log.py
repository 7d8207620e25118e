"""The served-recommendations log: every ``/recommend`` answer, kept for online quality and drift.

One record per answer: ``request_id`` (also in the response, so a client can tie its clicks to it),
``served_at`` (UTC), ``user_id``, the ``items`` and their ``scores`` in rank order, ``k``, ``strategy``,
``fallback``, ``history_used``, ``model_tag`` and ``deployment``.

Bounded overhead. A request only appends its record to an in-memory buffer under a lock; a writer
thread turns the buffer into a Parquet file every ``flush_s`` seconds or as soon as it holds
``flush_rows`` records. When the buffer is full (``max_buffer``: the disk is full or too slow), new
records are counted as ``dropped`` and not kept: logging never blocks or fails a request. Pending
records are written when the service shuts down.

Files: ``$RECFORGE_HOME/served_log/date=<YYYY-MM-DD>/part-<time>-<pid>-<seq>.parquet`` (a new directory
per UTC day, one file per flush, each written to a temporary name and renamed), the same home as the
event log; ``read_served`` (or any Parquet reader, the directory being a Hive-partitioned dataset)
reads them back. With ``RECFORGE_ONLINE_LOG_URL`` (the production profile) the records go to the
table ``recforge_served`` of that database instead, beside the event log (``served_store``).
``RECFORGE_LOG_SERVED=0`` turns logging off.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ingestion.event_log import SqlLogTable

log = logging.getLogger(__name__)

ENABLED_ENV = "RECFORGE_LOG_SERVED"
COLUMNS = [
    "request_id",
    "served_at",
    "user_id",
    "items",
    "scores",
    "k",
    "strategy",
    "fallback",
    "history_used",
    "model_tag",
    "deployment",
]


def new_request_id() -> str:
    return uuid.uuid4().hex


def logging_enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class ServedLog:
    """Buffered, rotated Parquet writer of served recommendations (see the module docstring)."""

    def __init__(
        self,
        store: Path | ParquetServedStore | SqlServedStore,
        flush_s: float = 5.0,
        flush_rows: int = 5000,
        max_buffer: int = 100_000,
    ) -> None:
        self.store = ParquetServedStore(store) if isinstance(store, Path | str) else store
        self.flush_s, self.flush_rows, self.max_buffer = flush_s, flush_rows, max_buffer
        self.written = 0
        self.dropped = 0
        self.files = 0
        self.last_error: str | None = None
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recforge-served-log", daemon=True)
        self._thread.start()

    def record(self, **fields: Any) -> None:
        """Queue one answer's record (never blocks on I/O)."""
        with self._lock:
            if len(self._buffer) >= self.max_buffer:
                self.dropped += 1
                return
            self._buffer.append(fields)
            full = len(self._buffer) >= self.flush_rows
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what the buffer holds (one file); a failed write keeps the records for the next try."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            frame = pd.DataFrame(batch, columns=COLUMNS)
            frame["served_at"] = pd.to_datetime(frame["served_at"], utc=True)
            self.store.write(frame)
        except Exception as exc:  # noqa: BLE001 - never let the writer thread die
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("served log: %d records not written yet: %s", len(batch), self.last_error)
            with self._lock:
                room = self.max_buffer - len(self._buffer)
                self._buffer[:0] = batch[:room]
                self.dropped += max(0, len(batch) - room)
            return
        self.written += len(batch)
        self.files += 1
        self.last_error = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the writer and write what is pending."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self.flush()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._buffer)
        return {
            "store": self.store.location,
            "written": self.written,
            "pending": pending,
            "dropped": self.dropped,
            "files": self.files,
            "last_error": self.last_error,
        }


class ParquetServedStore:
    """Records as Parquet files: one per flush, in a directory per UTC day (temp + rename)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._seq = 0

    @property
    def location(self) -> str:
        return str(self.directory)

    def write(self, frame: pd.DataFrame) -> None:
        now = datetime.now(UTC)
        day = self.directory / f"date={now.strftime('%Y-%m-%d')}"
        day.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"part-{now.strftime('%H%M%S%f')}-{os.getpid()}-{self._seq}.parquet"
        tmp = day / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, day / name)

    def read(self) -> pd.DataFrame:
        files = sorted(self.directory.glob("date=*/part-*.parquet"))
        if not files:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


class SqlServedStore(SqlLogTable):
    """Records as rows of the table ``recforge_served`` (``RECFORGE_ONLINE_LOG_URL``, the production
    profile): several service containers write one log; items and scores as JSON arrays."""

    TABLE = "recforge_served"

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        super().__init__(
            url,
            sa.Column("request_id", sa.Text, primary_key=True),
            sa.Column("served_at", sa.DateTime(timezone=True), index=True),
            sa.Column("user_id", sa.Text),
            sa.Column("items", sa.JSON),
            sa.Column("scores", sa.JSON),
            sa.Column("k", sa.Integer),
            sa.Column("strategy", sa.Text),
            sa.Column("fallback", sa.Boolean),
            sa.Column("history_used", sa.Integer),
            sa.Column("model_tag", sa.Text, index=True),
            sa.Column("deployment", sa.Text),
        )

    def write(self, frame: pd.DataFrame) -> None:
        rows = frame.astype({"k": int, "history_used": int, "fallback": bool}).to_dict("records")
        for row in rows:
            row["served_at"] = row["served_at"].to_pydatetime()
            row["items"], row["scores"] = list(row["items"]), [float(v) for v in row["scores"]]
        with self.engine.begin() as connection:
            connection.execute(self.table.insert(), rows)

    def read(self) -> pd.DataFrame:
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(self.table)).mappings().all()
        frame = pd.DataFrame(rows, columns=COLUMNS)
        frame["served_at"] = pd.to_datetime(frame["served_at"], utc=True)
        return frame


def served_store(layout: Any) -> ParquetServedStore | SqlServedStore:
    """The served log of this environment: ``RECFORGE_ONLINE_LOG_URL``'s table, else the home's files."""
    from ingestion.event_log import ONLINE_LOG_URL_ENV

    url = os.environ.get(ONLINE_LOG_URL_ENV, "").strip()
    return SqlServedStore(url) if url else ParquetServedStore(layout.served_log)


def read_served(
    store: Path | ParquetServedStore | SqlServedStore, since: datetime | None = None
) -> pd.DataFrame:
    """Every logged answer (oldest first); ``since``: only those served at or after it."""
    store = ParquetServedStore(store) if isinstance(store, Path | str) else store
    frame = store.read()
    if frame.empty:
        return frame
    if since is not None:
        frame = frame[frame["served_at"] >= pd.Timestamp(since)]
    return frame.sort_values("served_at", kind="stable").reset_index(drop=True)


def served_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
