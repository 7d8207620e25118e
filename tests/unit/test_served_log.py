"""The served-recommendations log: buffered, written in daily directories, bounded when the disk fails."""

from __future__ import annotations

import time
from pathlib import Path

from serving.served_log import COLUMNS, ServedLog, new_request_id, read_served, served_now


def _record(log: ServedLog, user: str) -> str:
    request_id = new_request_id()
    log.record(
        request_id=request_id,
        served_at=served_now(),
        user_id=user,
        items=["a", "b"],
        scores=[0.9, 0.5],
        k=2,
        strategy="known_user",
        fallback=False,
        history_used=3,
        model_tag="recforge-bpr:abc",
        deployment="default",
    )
    return request_id


def test_records_are_written_on_flush_and_read_back_in_order(tmp_path: Path) -> None:
    log = ServedLog(tmp_path / "served", flush_s=3600)
    ids = [_record(log, f"u{i}") for i in range(5)]
    assert read_served(tmp_path / "served").empty  # buffered, nothing on disk yet
    log.flush()
    frame = read_served(tmp_path / "served")
    assert list(frame.columns) == COLUMNS and list(frame["request_id"]) == ids
    assert list(frame.loc[0, "items"]) == ["a", "b"] and list(frame.loc[0, "scores"]) == [0.9, 0.5]
    assert (
        str(frame["served_at"].dtype).startswith("datetime64") and frame["served_at"].is_monotonic_increasing
    )
    (day,) = (tmp_path / "served").glob("date=*")
    assert len(list(day.glob("part-*.parquet"))) == 1 and not list(day.glob(".*.tmp"))
    assert log.describe()["written"] == 5 and log.describe()["pending"] == 0
    log.close()


def test_a_full_buffer_is_written_without_waiting_and_close_writes_the_rest(tmp_path: Path) -> None:
    log = ServedLog(tmp_path / "served", flush_s=3600, flush_rows=3)
    for i in range(3):
        _record(log, f"u{i}")
    deadline = time.monotonic() + 10
    while log.describe()["written"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.describe()["written"] == 3
    _record(log, "late")
    log.close()
    assert list(read_served(tmp_path / "served")["user_id"]) == ["u0", "u1", "u2", "late"]


def test_when_writing_fails_records_are_kept_up_to_the_bound_then_dropped(tmp_path: Path) -> None:
    blocked = tmp_path / "served"
    blocked.write_text("a file where the directory should be")
    log = ServedLog(blocked, flush_s=3600, max_buffer=4)
    for i in range(3):
        _record(log, f"u{i}")
    log.flush()  # fails: kept for the next try
    assert log.describe()["pending"] == 3 and log.describe()["last_error"]
    for i in range(3, 6):
        _record(log, f"u{i}")
    assert log.describe()["pending"] == 4 and log.dropped == 2  # never blocks, counts what it lost
    blocked.unlink()
    log.close()
    assert list(read_served(blocked)["user_id"]) == ["u0", "u1", "u2", "u3"] and log.last_error is None


def test_the_database_store_round_trips_records(tmp_path: Path) -> None:
    from serving.served_log import SqlServedStore

    store = SqlServedStore(f"sqlite:///{tmp_path / 'online.db'}")
    log = ServedLog(store, flush_s=3600)
    ids = [_record(log, f"u{i}") for i in range(3)]
    log.close()
    frame = read_served(store)
    assert list(frame["request_id"]) == ids and list(frame.columns) == COLUMNS
    assert list(frame.loc[0, "items"]) == ["a", "b"] and list(frame.loc[0, "scores"]) == [0.9, 0.5]
    assert frame["served_at"].dt.tz is not None and not frame["fallback"].any()
