"""The online event log: pushed batches checked with the ingestion rules, appended durably and once,
and ingested by the batch pipeline exactly once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ingestion.event_log import EventLog, check_batch
from ingestion.ingest import ingest
from ingestion.validate import validate
from pipeline.config import SourceConfig, ValidationConfig
from pipeline.layout import Layout
from tests.unit.test_ingestion import GOOD, NOW, write_recbole

CFG = ValidationConfig(rating_min=1, rating_max=5, max_rejected_share=1.0)
ITEMS = {"10", "11", "12"}


def _events(*rows: tuple) -> list[dict]:
    return [dict(zip(("user_id", "item_id", "timestamp", "rating"), row, strict=False)) for row in rows]


def test_a_bad_batch_names_each_bad_row_and_is_not_applied(tmp_path: Path) -> None:
    batch = _events(
        ("1", "10", 1700000000, 4),
        ("", "10", 1700000001),
        ("1", "11", "yesterday"),
        ("1", "11", 4102444800),  # 2100
        ("1", "11", 1700000002, 9),
        ("1", "999", 1700000003),
        ("1", "10", 1700000000, 4),  # the first row again
        ("1", "12", 1.5e240),
        ("\ud869", "12", 1700000004),
    )
    intake = check_batch(batch, CFG, ITEMS, now=NOW)
    assert intake.events is None
    assert [(b.row, b.reason) for b in intake.bad] == [
        (1, "missing_user_id"),
        (2, "unparseable_timestamp"),
        (3, "future_timestamp"),
        (4, "rating_out_of_range"),
        (5, "unknown_item"),
        (6, "duplicate_event"),
        (7, "unparseable_timestamp"),
        (8, "invalid_unicode"),
    ]
    assert intake.bad[3].event == {"user_id": "1", "item_id": "11", "timestamp": 1700000002, "rating": 9}
    assert check_batch([], CFG, ITEMS).bad[0].reason == "empty_batch"
    assert not EventLog(tmp_path / "log").files()


def test_appended_once_whatever_the_timestamp_format_and_the_writer(tmp_path: Path) -> None:
    first = check_batch(_events(("7", "10", 1700000000, 4), ("7", "11", 1700000060)), CFG, ITEMS, now=NOW)
    assert first.events is not None and list(first.events["timestamp"]) == [
        "2023-11-14T22:13:20.000000+00:00",
        "2023-11-14T22:14:20.000000+00:00",
    ]
    log = EventLog(tmp_path / "log")
    done = log.append(first.events)
    assert (done.appended, done.duplicates) == (2, 0) and Path(done.file).is_file()

    # The same events again, one written as ISO-8601, through another writer (another service worker).
    again = check_batch(
        _events(("7", "10", "2023-11-14T22:13:20Z", 4), ("7", "12", 1700000120)), CFG, ITEMS, now=NOW
    )
    other = EventLog(tmp_path / "log").append(again.events)
    assert (other.appended, other.duplicates) == (1, 1)
    assert log.append(again.events).appended == 0  # the first writer learns the other's file

    logged = log.read()
    assert len(logged) == 3 and len(log.files()) == 2
    assert list(logged["item_id"]) == ["10", "11", "12"] and list(logged["rating"]) == ["4.0", "", ""]
    assert logged["source_file"].str.endswith(".parquet").all() and list(logged["source_line"]) == [1, 2, 1]
    assert not list((tmp_path / "log").glob(".*.tmp"))


def test_the_pipeline_ingests_pushed_events_exactly_once(tmp_path: Path) -> None:
    source = SourceConfig(kind="recbole_ml100k", path=str(write_recbole(tmp_path / "raw", GOOD)))
    layout = Layout(tmp_path / "home")
    log = EventLog(layout.event_log)
    # One new event, and one the source already holds (user 1, item 10 at 881250949).
    pushed = check_batch(
        _events(("2", "12", 881250990, 3), ("1", "10", "1997-12-04T15:55:49Z", 4)), CFG, ITEMS, now=NOW
    )
    log.append(pushed.events)
    log.append(pushed.events)  # a retried push

    def snapshot(run_id: str):
        staging = ingest(source, layout, run_id)
        read = json.loads((staging / "source.json").read_text())["event_log_read"]
        return validate(staging, CFG, layout, "ml-100k", now=NOW), read

    first, read = snapshot("run-1")
    assert read == {"source": str(layout.event_log), "events": 2, "already_in_source": 1}
    events = pd.read_parquet(first.interactions)
    assert len(events) == len(GOOD) + 1 and first.rows_quarantined == 0
    assert len(events[(events["user_id"] == "2") & (events["item_id"] == "12")]) == 1
    # Nothing new pushed: the next run sees the same data.
    second, _ = snapshot("run-2")
    assert second.data_version == first.data_version

    # Without the event log the source alone.
    alone = ingest(source.model_copy(update={"event_log": False}), layout, "run-3")
    assert len(pd.read_parquet(alone / "interactions.parquet")) == len(GOOD)


def test_check_batch_takes_any_user(tmp_path: Path) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    intake = check_batch(_events(("brand-new-visitor", "10", 1700000000)), CFG, ITEMS, now=now)
    assert intake.events is not None and intake.bad == []


def test_the_database_log_appends_each_event_once_across_writers(tmp_path: Path, monkeypatch) -> None:
    """The production profile's log (a table; SQLite here, Postgres in test_production_profile.py)."""
    from ingestion.event_log import ONLINE_LOG_URL_ENV, SqlEventLog, open_event_log

    url = f"sqlite:///{tmp_path / 'online.db'}"
    monkeypatch.setenv(ONLINE_LOG_URL_ENV, url)
    log = open_event_log(Layout(tmp_path / "home"))
    assert isinstance(log, SqlEventLog) and log.location.endswith("online.db#recforge_events")
    first = check_batch(_events(("7", "10", 1700000000, 4), ("7", "11", 1700000060)), CFG, ITEMS, now=NOW)
    assert log.append(first.events).appended == 2
    again = check_batch(
        _events(("7", "10", "2023-11-14T22:13:20Z", 4), ("7", "12", 1700000120)), CFG, ITEMS, now=NOW
    )
    other = SqlEventLog(url).append(again.events)  # another service container
    assert (other.appended, other.duplicates, list(other.events["item_id"])) == (1, 1, ["12"])
    logged = log.read()
    assert list(logged["item_id"]) == ["10", "11", "12"] and list(logged["rating"]) == ["4.0", "", ""]
    assert (
        list(logged["source_line"]) == [1, 2, 3]
        and logged["source_file"].str.endswith("#recforge_events").all()
    )

    # The pipeline reads it like the files.
    source = SourceConfig(kind="recbole_ml100k", path=str(write_recbole(tmp_path / "raw", GOOD)))
    staging = ingest(source, Layout(tmp_path / "home"), "run-db")
    assert json.loads((staging / "source.json").read_text())["event_log_read"]["events"] == 3
