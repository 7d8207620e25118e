"""Ingest + validate: every row lands in the snapshot or the quarantine, with a reason; bad files fail clearly."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingestion.ingest import ingest
from ingestion.schema import IngestError
from ingestion.validate import ValidationFailed, validate
from pipeline.config import SourceConfig, ValidationConfig
from pipeline.layout import Layout

NOW = datetime(2026, 1, 1, tzinfo=UTC)
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def write_recbole(directory: Path, inter_lines: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ml-100k.inter").write_bytes(
        ("\n".join([INTER_HEADER, *inter_lines]) + "\n").encode("utf-8")
    )
    (directory / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n3\tnot-a-number\tM\twriter\t32067\n"
    )
    (directory / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tGoldenEye\t1995\tAction Thriller\n12\tHeat\t1995\tCrime\n"
    )
    return directory


GOOD = ["1\t10\t4\t881250949", "1\t11\t3\t881250950", "2\t10\t5\t881250951", "3\t12\t1\t881250952"]
BAD = {
    "missing_user_id": "\t10\t4\t881250960",
    "unparseable_timestamp": "1\t12\t4\tyesterday",
    "future_timestamp": "2\t12\t4\t4102444800",  # 2100-01-01
    "unparseable_rating": "2\t11\tfive\t881250961",
    "rating_out_of_range": "2\t11\t7\t881250962",
    "unknown_item": "1\t999\t4\t881250963",
    "unknown_user": "77\t10\t4\t881250964",
    "duplicate_event": "1\t10\t4\t881250949",
    "malformed_line: expected 4 fields, found 3": "3\t10\t4",
}


def run(tmp_path: Path, lines: list[str], max_share: float = 1.0):
    source = SourceConfig(kind="recbole_ml100k", path=str(write_recbole(tmp_path / "raw", lines)))
    layout = Layout(tmp_path / "home")
    staging = ingest(source, layout, "run-1")
    cfg = ValidationConfig(max_rejected_share=max_share, rating_min=1, rating_max=5)
    return validate(staging, cfg, layout, "ml-100k", now=NOW), layout


def test_every_rejected_row_is_quarantined_with_its_reason(tmp_path):
    snapshot, _ = run(tmp_path, GOOD + list(BAD.values()))
    # 4 good + 9 bad interaction lines, 3 users, 3 items.
    assert snapshot.rows_in == 13 + 3 + 3
    assert snapshot.rows_quarantined == len(BAD)
    assert snapshot.rows_in == snapshot.rows_kept + snapshot.rows_quarantined
    # User 3's age "not-a-number" is a bad VALUE: quarantined as such, the user and events stay.
    assert snapshot.values_quarantined == 1
    assert snapshot.quarantine_reasons == {**{reason: 1 for reason in BAD}, "age_not_a_number": 1}
    quarantine = pd.read_parquet(snapshot.quarantine)
    assert set(quarantine["reason"]) == {*BAD, "age_not_a_number"}
    value = quarantine[quarantine["reason"] == "age_not_a_number"].iloc[0]
    assert (value["table"], value["column"], value["raw"]) == ("users", "age", "not-a-number")
    assert int(value["source_line"]) == 4  # header + users 1, 2, then 3
    # The duplicate is the later line (line 10 of the file: header + 4 good + 5 bad before it).
    duplicate = quarantine[quarantine["reason"] == "duplicate_event"].iloc[0]
    assert int(duplicate["source_line"]) == 1 + len(GOOD) + list(BAD).index("duplicate_event") + 1
    kept = pd.read_parquet(snapshot.interactions)
    assert len(kept) == len(GOOD)
    assert list(kept["event_id"]) == [0, 1, 2, 3]
    assert str(kept["timestamp"].dtype) == "datetime64[us, UTC]"
    assert kept["rating"].tolist() == [4.0, 3.0, 5.0, 1.0]


def test_attribute_glitches_keep_the_entity(tmp_path):
    snapshot, _ = run(tmp_path, GOOD)
    users = pd.read_parquet(snapshot.users).set_index("user_id")
    assert pd.isna(users.loc["3", "age"])  # "not-a-number" became unknown, the user stays
    items = pd.read_parquet(snapshot.items).set_index("item_id")
    assert list(items.loc["10", "genres"]) == ["Animation", "Children's", "Comedy"]


def test_rejected_share_over_the_limit_fails_and_publishes_nothing(tmp_path):
    with pytest.raises(ValidationFailed, match=r"rejected, above the limit.*rating_out_of_range"):
        run(tmp_path, GOOD + list(BAD.values()), max_share=0.1)
    layout = Layout(tmp_path / "home")
    assert not (layout.home / "data").exists()
    assert len(pd.read_parquet(layout.staging("run-1") / "quarantine.parquet")) == len(BAD) + 1  # + the age


def test_data_version_is_a_content_hash(tmp_path):
    first, _ = run(tmp_path / "a", GOOD)
    again, _ = run(tmp_path / "b", GOOD + ["3\t10\t4"])  # a malformed line changes no kept content
    changed, _ = run(tmp_path / "c", GOOD[:-1])
    assert first.data_version == again.data_version
    assert first.data_version != changed.data_version


def test_a_log_validated_in_chunks_gives_the_snapshot_of_the_whole_table(tmp_path):
    # Repeats of an event two and five chunks after it (chunks of 3 rows), and bad rows in between:
    # the chunked pass must find the same repeats, keep the same rows with the same event ids, and
    # list the quarantine in the order of the log.
    lines = GOOD + list(BAD.values()) + [GOOD[2], "2\t11\t2\t881250970", GOOD[0], "2\t11\t2\t881250970"]
    source = SourceConfig(kind="recbole_ml100k", path=str(write_recbole(tmp_path / "raw", lines)))
    cfg = ValidationConfig(max_rejected_share=1.0, rating_min=1, rating_max=5)
    snapshots = {}
    for chunk_rows in (3, 1_000):
        layout = Layout(tmp_path / f"home-{chunk_rows}")
        staging = ingest(source, layout, "run-1")
        snapshots[chunk_rows] = validate(staging, cfg, layout, "ml-100k", now=NOW, chunk_rows=chunk_rows)
        assert not list(staging.glob(".validate-*")), "the spilled chunks are removed"
    chunked, whole = snapshots[3], snapshots[1_000]
    assert chunked.data_version == whole.data_version
    assert chunked.quarantine_reasons == whole.quarantine_reasons
    assert chunked.quarantine_reasons["duplicate_event"] == 4
    assert (chunked.rows_kept, chunked.time_min, chunked.time_max) == (
        whole.rows_kept,
        whole.time_min,
        whole.time_max,
    )
    for table in ("interactions", "users", "items", "quarantine"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(getattr(chunked, table)), pd.read_parquet(getattr(whole, table))
        )
    kept = pd.read_parquet(chunked.interactions)
    assert list(kept["event_id"]) == list(range(len(GOOD) + 1))
    repeats = pd.read_parquet(chunked.quarantine).query("reason == 'duplicate_event'")
    assert list(repeats["source_line"].astype(int)) == [13, 15, 17, 18]  # in the order of the file


def test_chunked_repeats_are_decided_by_value_when_hashes_collide(tmp_path, monkeypatch):
    # Every row gets the same hash: only the value comparison can tell repeats from other events.
    import ingestion.validate as validation

    monkeypatch.setattr(validation, "_event_hashes", lambda inter, _: np.zeros(len(inter), dtype="uint64"))
    lines = GOOD + [GOOD[1], "1\t11\t3\t881250951", GOOD[3]]  # 2 repeats, 1 new event (1 s later)
    source = SourceConfig(kind="recbole_ml100k", path=str(write_recbole(tmp_path / "raw", lines)))
    layout = Layout(tmp_path / "home")
    cfg = ValidationConfig(max_rejected_share=1.0, rating_min=1, rating_max=5)
    snapshot = validate(ingest(source, layout, "run-1"), cfg, layout, "ml-100k", now=NOW, chunk_rows=2)
    assert snapshot.quarantine_reasons == {"duplicate_event": 2, "age_not_a_number": 1}
    assert len(pd.read_parquet(snapshot.interactions)) == len(GOOD) + 1


def test_invalid_utf8_line_is_quarantined_not_fatal(tmp_path):
    raw = write_recbole(tmp_path / "raw", GOOD)
    path = raw / "ml-100k.inter"
    path.write_bytes(path.read_bytes() + b"1\t\xff\xfe\t4\t881250999\n")
    staging = ingest(SourceConfig(path=str(raw)), Layout(tmp_path / "home"), "r")
    snapshot = validate(
        staging, ValidationConfig(max_rejected_share=1.0), Layout(tmp_path / "home"), "x", now=NOW
    )
    quarantine = pd.read_parquet(snapshot.quarantine)
    assert quarantine["reason"].str.contains("not valid utf-8").sum() == 1
    assert int(quarantine["source_line"].iloc[0]) == len(GOOD) + 2


def test_missing_required_column_names_file(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(IngestError, match=r"events.csv: missing required column\(s\) \['user_id'\]"):
        ingest(SourceConfig(kind="events", path=str(events)), Layout(tmp_path / "home"), "r")


def test_truncated_gzip_fails_with_file_and_line(tmp_path):
    events = tmp_path / "events.csv.gz"
    body = "user_id,item_id,timestamp\n" + "".join(
        f"{i % 7},{i % 11},{1_600_000_000 + i}\n" for i in range(20000)
    )
    data = gzip.compress(body.encode())
    events.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match=r"events.csv.gz: unreadable after line \d+"):
        ingest(SourceConfig(kind="events", path=str(events)), Layout(tmp_path / "home"), "r")


def test_corrupt_parquet_fails_with_file(tmp_path):
    events = tmp_path / "events.parquet"
    events.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestError, match="events.parquet: not a readable Parquet file"):
        ingest(SourceConfig(kind="events", path=str(events)), Layout(tmp_path / "home"), "r")


def test_generic_events_with_iso_timestamps_and_no_attributes(tmp_path):
    events = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "item_id": ["x", "y", "x"],
            "timestamp": ["2024-01-01T10:00:00Z", "2024-01-02T10:00:00+02:00", "2024-01-03"],
        }
    ).to_parquet(events)
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="events", path=str(events), name="shop"), layout, "r")
    snapshot = validate(staging, ValidationConfig(), layout, "shop", now=NOW)
    kept = pd.read_parquet(snapshot.interactions)
    assert kept["timestamp"].dt.strftime("%Y-%m-%d %H").tolist() == [
        "2024-01-01 10",
        "2024-01-02 08",
        "2024-01-03 00",
    ]
    assert kept["rating"].isna().all()
    assert sorted(pd.read_parquet(snapshot.users)["user_id"]) == ["a", "b"]
    assert sorted(pd.read_parquet(snapshot.items)["item_id"]) == ["x", "y"]


def test_grouplens_layout(tmp_path):
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    (raw / "u.data").write_text("1\t10\t4\t881250949\n2\t10\t3\t881250950\n")
    (raw / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (raw / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (raw / "u.item").write_bytes("10|Caf\xe9 Society (1995)|01-Jan-1995||http://x|0|1|1\n".encode("latin-1"))
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="grouplens_100k", path=str(raw)), layout, "r")
    snapshot = validate(staging, ValidationConfig(), layout, "ml-100k", now=NOW)
    item = pd.read_parquet(snapshot.items).iloc[0]
    assert (item["title"], item["release_year"], list(item["genres"])) == (
        "Café Society",
        1995,
        ["Action", "Comedy"],
    )
    assert snapshot.rows_kept == 2 + 2 + 1


def test_movielens_1m_layout(tmp_path):
    """A synthetic file in the ML-1M layout (ML-1M itself is not available offline here)."""
    raw = tmp_path / "ml-1m"
    raw.mkdir()
    (raw / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n2::661\n"
    )
    (raw / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (raw / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::"
        "Animation|Children's|Musical\n".encode("latin-1")
    )
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="movielens_dat", path=str(raw), name="ml-1m"), layout, "r")
    cfg = ValidationConfig(rating_min=1, rating_max=5, max_rejected_share=0.2)
    snapshot = validate(staging, cfg, layout, "ml-1m", now=NOW)
    assert snapshot.rows_quarantined == 1 and next(iter(snapshot.quarantine_reasons)).startswith(
        "malformed_line"
    )
    items = pd.read_parquet(snapshot.items).set_index("item_id")
    assert (items.loc["661", "title"], items.loc["661", "release_year"]) == (
        "James and the Giant Peach",
        1996,
    )
    assert list(items.loc["661", "genres"]) == ["Animation", "Children's", "Musical"]
    users = pd.read_parquet(snapshot.users).set_index("user_id")
    assert (users.loc["2", "gender"], users.loc["2", "age"]) == ("M", 56)
    assert len(pd.read_parquet(snapshot.interactions)) == 3


def test_a_csv_starting_with_a_byte_order_mark_is_read(tmp_path):
    events = tmp_path / "events.csv"
    events.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\r\n1,10,881250949\r\n2,10,881250950\r\n")
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="events", path=str(events)), layout, "r")
    snapshot = validate(staging, ValidationConfig(), layout, "shop", now=NOW)
    assert sorted(pd.read_parquet(snapshot.interactions)["user_id"]) == ["1", "2"]


def test_an_overlong_id_is_quarantined_in_files_and_in_pushed_events(tmp_path):
    from ingestion.event_log import check_batch
    from ingestion.schema import MAX_ID_LENGTH

    long_id = "u" * (MAX_ID_LENGTH + 1)
    events = tmp_path / "events.csv"
    rows = ["1,10,881250949", "2,10,881250950", f"{long_id},10,881250951", f"1,{long_id},881250952"]
    events.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="events", path=str(events)), layout, "r")
    snapshot = validate(staging, ValidationConfig(max_rejected_share=1.0), layout, "shop", now=NOW)
    reasons = snapshot.quarantine_reasons
    assert reasons == {
        f"user_id_too_long: longer than {MAX_ID_LENGTH} characters": 1,
        f"item_id_too_long: longer than {MAX_ID_LENGTH} characters": 1,
    }
    assert long_id not in set(pd.read_parquet(snapshot.users)["user_id"])
    assert long_id not in set(pd.read_parquet(snapshot.items)["item_id"])

    pushed = check_batch([{"user_id": long_id, "item_id": "10", "timestamp": 881250953}], ValidationConfig())
    assert pushed.events is None
    assert pushed.bad[0].reason == f"user_id_too_long: longer than {MAX_ID_LENGTH} characters"


def test_a_header_only_file_is_named_in_the_error(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n")
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="events", path=str(events), event_log=False), layout, "r")
    with pytest.raises(ValidationFailed) as failure:
        validate(staging, ValidationConfig(), layout, "shop", now=NOW)
    message = str(failure.value)
    assert message.startswith(f"{events}: no interaction rows") and str(staging) not in message


def test_a_missing_column_message_lists_only_the_users_columns(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(IngestError) as failure:
        ingest(SourceConfig(kind="events", path=str(events)), Layout(tmp_path / "home"), "r")
    assert "found ['user', 'item_id', 'timestamp']." in str(failure.value)
    assert "source_file" not in str(failure.value) and "source_line" not in str(failure.value)


def test_a_parquet_log_staged_in_chunks_equals_the_whole_file_read(tmp_path, monkeypatch):
    """Chunked staging keeps every row, its row number across chunk edges, and the quarantine reasons."""
    import ingestion.ingest as ingest_module
    from ingestion.readers import read_table
    from ingestion.schema import INTERACTION_COLUMNS, conform

    events = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": ["a", "", "b", "c", "a"],
            "item_id": ["x", "y", "x", "z", "x"],
            "timestamp": [1_700_000_000, 1_700_000_001, 1_700_000_002, 99_999_999_999_999, 1_700_000_000],
        }
    ).to_parquet(events)
    monkeypatch.setattr(ingest_module, "STREAM_BATCH_ROWS", 2)  # three chunks, two edges
    layout = Layout(tmp_path / "home")
    staging = ingest(SourceConfig(kind="events", path=str(events), name="shop"), layout, "r")
    staged = pd.read_parquet(staging / "interactions.parquet")
    whole = conform(read_table(events)[0], INTERACTION_COLUMNS)
    pd.testing.assert_frame_equal(staged, whole)
    assert staged["source_line"].tolist() == [1, 2, 3, 4, 5]

    snapshot = validate(staging, ValidationConfig(max_rejected_share=1.0), layout, "shop", now=NOW)
    quarantine = pd.read_parquet(snapshot.quarantine).set_index("source_line")["reason"].to_dict()
    assert quarantine == {2: "missing_user_id", 4: "unparseable_timestamp", 5: "duplicate_event"}
    assert snapshot.quarantine_reasons == {
        "missing_user_id": 1,
        "unparseable_timestamp": 1,
        "duplicate_event": 1,
    }
