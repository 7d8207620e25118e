"""Online quality of served lists against the events that followed them, checked by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from monitoring.online_quality import online_quality

NOW = datetime(2026, 1, 5, tzinfo=UTC)


def _served(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "request_id": r,
                "model_tag": tag,
                "user_id": u,
                "served_at": pd.Timestamp(t, tz="UTC"),
                "items": items,
            }
            for r, tag, u, t, items in rows
        ]
    )


def _events(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(
        [{"user_id": u, "item_id": i, "timestamp": pd.Timestamp(t, tz="UTC").isoformat()} for u, i, t in rows]
    )


def test_hits_and_ndcg_per_model_and_day() -> None:
    served = _served(
        ("r1", "A", "u1", "2026-01-01 10:00", ["a", "b", "c"]),
        ("r2", "A", "u2", "2026-01-01 10:00", ["d", "e"]),
        ("r3", "B", "u1", "2026-01-02 09:00", ["b", "x"]),
        ("r4", "B", "u3", "2026-01-04 23:30", ["a"]),  # its day is not over at NOW: pending
    )
    events = _events(
        ("u1", "a", "2026-01-01 09:00"),  # before r1: not a response to it
        ("u1", "b", "2026-01-01 10:30"),
        ("u1", "c", "2026-01-01 11:00"),
        ("u2", "e", "2026-01-03 10:00"),  # after r2's one-day horizon
        ("u1", "x", "2026-01-02 10:00"),
    )
    quality = online_quality(served, events, k=2, horizon=timedelta(days=1), now=NOW).set_index(
        ["model_tag", "day"]
    )
    a = quality.loc[("A", "2026-01-01")]
    # r1: top-2 [a, b], relevant {b, c}: DCG 1/log2(3), ideal 1 + 1/log2(3). r2: nothing relevant.
    r1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert (a["lists"], a["scored"], a["pending"], a["users"]) == (2, 2, 0, 2)
    assert a["hit_rate"] == pytest.approx(0.5) and a["ndcg"] == pytest.approx(r1 / 2)
    b = quality.loc[("B", "2026-01-02")]
    assert b["hit_rate"] == 1.0 and b["ndcg"] == pytest.approx(
        1 / math.log2(3)
    )  # x at rank 2, alone relevant
    pending = quality.loc[("B", "2026-01-04")]
    assert (pending["lists"], pending["scored"], pending["pending"]) == (1, 0, 1) and math.isnan(
        pending["hit_rate"]
    )


def test_nothing_served_gives_an_empty_table() -> None:
    empty = pd.DataFrame(columns=["request_id", "model_tag", "user_id", "served_at", "items"])
    assert online_quality(empty, _events(("u1", "a", "2026-01-01"))).empty


def test_published_to_the_evidently_workspace_with_a_dashboard(tmp_path) -> None:
    import asyncio

    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local import create_local_project_manager
    from evidently.ui.workspace import Workspace

    from ingestion.event_log import EventLog
    from monitoring.online_quality import ONLINE_PROJECT, publish_online_quality
    from pipeline.layout import Layout
    from serving.served_log import ServedLog, read_served

    layout = Layout(tmp_path / "home")
    log = ServedLog(layout.served_log, flush_s=3600)
    for r, tag, user, when, items in (
        ("r1", "A", "u1", "2026-01-01T10:00:00+00:00", ["a", "b"]),
        ("r2", "A", "u2", "2026-01-01T10:00:00+00:00", ["c", "d"]),
        ("r3", "B", "u1", "2026-01-02T09:00:00+00:00", ["b", "x"]),
    ):
        log.record(request_id=r, served_at=when, user_id=user, items=items, scores=[1.0, 0.5], k=2,
                   strategy="known_user", fallback=False, history_used=0, model_tag=tag, deployment="default")  # fmt: skip
    log.close()
    events = _events(("u1", "b", "2026-01-01 10:30"), ("u1", "x", "2026-01-02 10:00"))
    EventLog(layout.event_log).directory.mkdir(parents=True)
    events.assign(rating="").to_parquet(layout.event_log / "events-test.parquet", index=False)

    workspace = tmp_path / "evidently"

    def logs():
        return read_served(layout.served_log), EventLog(layout.event_log).read()

    assert publish_online_quality(*logs(), workspace, k=2, now=NOW) == {
        "added": 2,
        "replaced": 0,
        "kept": 2 - 2,
    }
    assert publish_online_quality(*logs(), workspace, k=2, now=NOW)["kept"] == 2  # idempotent

    ws = Workspace.create(str(workspace))
    (project,) = ws.search_project(ONLINE_PROJECT)
    assert len(ws.list_runs(project.id)) == 2
    dashboard = project.dashboard.model()
    assert [t.title for t in dashboard.tabs] == ["Online quality"] and len(dashboard.panels) == 4
    # The hit-rate panel's series, as the UI asks for them: one point per model and day.
    hit_panel = dashboard.panels[1]
    filters = [SeriesFilter(metric=m.metric, metric_labels=m.metric_labels, tags=m.tags, metadata={})
               for m in hit_panel.values]  # fmt: skip
    storage = create_local_project_manager(str(workspace), False).data_storage  # what `evidently ui` reads
    series = asyncio.run(storage.get_data_series(project.id, filters, None, None))
    values = sorted(v for s in series.series for v in s.values if v is not None)
    assert values == pytest.approx(
        [0.5, 1.0]
    )  # A on Jan 1: one of two lists followed; B on Jan 2: one of one


def test_a_drop_in_served_quality_is_a_reason_to_retrain() -> None:
    from monitoring.online_quality import served_quality_drop

    def days(*rates: float, lists: int = 200) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "model_tag": "A",
                "day": [f"2026-01-0{i + 1}" for i in range(len(rates))],
                "lists": lists,
                "scored": lists,
                "pending": 0,
                "users": lists,
                "hit_rate": list(rates),
                "ndcg": 0.1,
            }  # fmt: skip
        )

    reason = served_quality_drop(days(0.30, 0.32, 0.28, 0.18), "A", max_drop=0.3, min_lists=100)
    assert reason and "hit rate 0.180 on 2026-01-04" in reason and "0.300" in reason  # 0.18 < 0.7 x 0.30
    assert served_quality_drop(days(0.30, 0.32, 0.28, 0.25), "A", 0.3, 100) is None  # within 30 %
    assert served_quality_drop(days(0.30, 0.10, lists=50), "A", 0.3, 100) is None  # too few lists to judge
    assert served_quality_drop(days(0.30, 0.10), "B", 0.3, 100) is None  # another model's lists
    assert served_quality_drop(days(0.30, 0.10), "A", 0.0, 100) is None  # switched off
