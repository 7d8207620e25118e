"""Small synthetic snapshots for the feature tests (kept out of conftest.py, which others also edit).

``write_snapshot`` writes the three Parquet files in the normalised schema of docs/architecture.md
and returns the ``Snapshot`` manifest that ``features.store.build_features`` takes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import Snapshot

T0 = pd.Timestamp("2024-01-01T00:00:00Z")


def at(minutes: float) -> pd.Timestamp:
    """A timestamp ``minutes`` after ``T0`` (keeps test tables readable)."""
    return T0 + pd.Timedelta(minutes=minutes)


# user u1: i1 @1, i2 @2, i3 @3 and i4 @3 (same instant), i5 @5; u2: i2 @2, i1 @4; u3: i3 @6 (no rating)
EVENTS: list[tuple[str, str, float, float]] = [
    ("u1", "i1", 1, 4.0),
    ("u1", "i2", 2, 2.0),
    ("u2", "i2", 2, 5.0),
    ("u1", "i3", 3, 3.0),
    ("u1", "i4", 3, 1.0),
    ("u2", "i1", 4, 4.0),
    ("u1", "i5", 5, 5.0),
    ("u3", "i3", 6, float("nan")),
]


def interactions_frame(events: list[tuple[str, str, float, float]] = EVENTS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": pd.Series(range(len(events)), dtype="int64"),
            "user_id": [e[0] for e in events],
            "item_id": [e[1] for e in events],
            "timestamp": pd.to_datetime([at(e[2]) for e in events], utc=True).as_unit("us"),
            "rating": [e[3] for e in events],
        }
    )


def users_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "age": pd.array([31, None, 45], dtype="Int64"),
            "gender": ["F", "M", "F"],
            "occupation": ["engineer", "artist", "other"],
            "zip_code": ["10001", "94043", "00000"],
        }
    )


def items_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4", "i5"],
            "title": ["One", "Two", "Three", "Four", "Five"],
            "release_year": pd.array([1990, 1991, None, 1993, 1994], dtype="Int64"),
            "genres": [["Drama"], ["Comedy", "Drama"], [], ["Action"], ["Horror"]],
        }
    )


def write_snapshot(
    directory: Path,
    interactions: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    dataset: str = "synthetic",
) -> Snapshot:
    """Write a snapshot (Parquet in the normalised schema) and return its manifest."""
    interactions = interactions_frame() if interactions is None else interactions
    users = users_frame() if users is None else users
    items = items_frame() if items is None else items
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in (("interactions", interactions), ("users", users), ("items", items)):
        paths[name] = directory / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), paths[name])
    digest = hashlib.sha256(
        pd.util.hash_pandas_object(interactions.drop(columns=[]), index=False).to_numpy().tobytes()
    ).hexdigest()[:16]
    quarantine = directory / "quarantine.parquet"
    return Snapshot(
        data_version=digest,
        dataset=dataset,
        interactions=paths["interactions"],
        users=paths["users"],
        items=paths["items"],
        quarantine=quarantine,
        rows_in=len(interactions),
        rows_kept=len(interactions),
        rows_quarantined=0,
        quarantine_reasons={},
        time_min=interactions["timestamp"].min().isoformat(),
        time_max=interactions["timestamp"].max().isoformat(),
    )
