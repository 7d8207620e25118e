"""Online quality: how good were the lists the service actually served, judged by what users did next.

Each logged answer (``serving.served_log``: user, items in rank order, time, model tag) is joined with
the user's events that arrived after it (``ingestion.event_log``: events pushed to the service) within
``horizon``. An item of the list the user interacted with in that time counts as a hit. Per list:

- hit@k: 1 if any of the first k items was hit;
- NDCG@k: binary gains of the first k items, ideal DCG over min(number of distinct items the user
  interacted with in the horizon, k) (the offline evaluator's definition, ``training.metrics``).

Lists are grouped by ``model_tag`` and UTC day of serving. A list whose horizon has not ended yet (at
``now``) is *pending*: counted, not scored, since the user may still act on it. Popularity fallbacks are
scored too: they are what those users were shown.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["model_tag", "day", "lists", "scored", "pending", "users", "hit_rate", "ndcg"]


def score_lists(
    served: pd.DataFrame, events: pd.DataFrame, k: int, horizon: timedelta, now: datetime | None = None
) -> pd.DataFrame:
    """One row per served list: request_id, model_tag, day, user_id, scored (bool), hit, ndcg."""
    now_ts = pd.Timestamp(now or datetime.now(UTC))
    lists = served[["request_id", "model_tag", "user_id", "served_at", "items"]].copy()
    lists["served_at"] = pd.to_datetime(lists["served_at"], utc=True)
    lists["day"] = lists["served_at"].dt.strftime("%Y-%m-%d")
    lists["scored"] = lists["served_at"] + horizon <= now_ts
    later = events[["user_id", "item_id", "timestamp"]].copy()
    later["time"] = pd.to_datetime(later["timestamp"], utc=True, format="ISO8601")
    joined = lists[["request_id", "user_id", "served_at"]].merge(later, on="user_id")
    joined = joined[
        (joined["time"] > joined["served_at"]) & (joined["time"] <= joined["served_at"] + horizon)
    ]
    acted = joined.groupby("request_id")["item_id"].agg(lambda s: set(s.astype(str)))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits, ndcgs = [], []
    for request_id, items in zip(lists["request_id"], lists["items"], strict=True):
        relevant = acted.get(request_id, set())
        gains = np.array([1.0 if str(i) in relevant else 0.0 for i in list(items)[:k]])
        hits.append(float(gains.any()))
        ideal = discounts[: min(len(relevant), k)].sum()
        ndcgs.append(float((gains * discounts[: len(gains)]).sum() / ideal) if ideal > 0 else 0.0)
    lists["hit"], lists["ndcg"] = hits, ndcgs
    return lists.drop(columns=["items"])


def online_quality(
    served: pd.DataFrame,
    events: pd.DataFrame,
    k: int = 10,
    horizon: timedelta = timedelta(days=1),
    now: datetime | None = None,
) -> pd.DataFrame:
    """hit rate@k and NDCG@k of the served lists per (model_tag, day); see the module docstring."""
    if served.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    lists = score_lists(served, events, k, horizon, now)
    rows = []
    for (tag, day), group in lists.groupby(["model_tag", "day"], sort=True):
        scored = group[group["scored"]]
        rows.append(
            {
                "model_tag": tag,
                "day": day,
                "lists": len(group),
                "scored": len(scored),
                "pending": len(group) - len(scored),
                "users": group["user_id"].nunique(),
                "hit_rate": scored["hit"].mean() if len(scored) else math.nan,
                "ndcg": scored["ndcg"].mean() if len(scored) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def served_quality_drop(
    quality: pd.DataFrame, model_tag: str, max_drop: float, min_lists: int, baseline_days: int = 3
) -> str | None:
    """Why the served lists of ``model_tag`` got worse, or None: its newest scored day's hit rate is
    more than ``max_drop`` below the mean of its first ``baseline_days`` scored days (each day with at
    least ``min_lists`` scored lists; the newest day is never part of its own baseline)."""
    if max_drop <= 0:
        return None
    days = quality[(quality["model_tag"] == model_tag) & (quality["scored"] >= min_lists)].sort_values("day")
    if len(days) < 2:
        return None
    newest = days.iloc[-1]
    baseline = days.iloc[:-1].head(baseline_days)
    reference = float(baseline["hit_rate"].mean())
    if newest["hit_rate"] < reference * (1 - max_drop):
        return (
            f"served quality: hit rate {newest['hit_rate']:.3f} on {newest['day']} ({int(newest['scored'])} "
            f"lists) < {1 - max_drop:.2f} x {reference:.3f}, its first days' ({', '.join(baseline['day'])})"
        )
    return None


# ---- the Evidently workspace -------------------------------------------------------------------

ONLINE_PROJECT = "recforge online quality"
INDEX_FILE = "online_quality_runs.json"  # (model tag, day) -> the run that holds it, and its list count
TAB = "Online quality"
MAX_MODELS_PLOTTED = 6  # the newest model tags get a line each


def publish_online_quality(
    served: pd.DataFrame,
    events: pd.DataFrame,
    workspace: Path,
    k: int = 10,
    horizon: timedelta = timedelta(days=1),
    now: datetime | None = None,
) -> dict[str, int]:
    """One Evidently run per (model tag, day) of scored served lists (hit@k and NDCG@k means, list
    count) in the workspace project ``ONLINE_PROJECT``, and its dashboard: a tab of line plots per
    model tag. A day whose scored lists changed since the last call gets its run replaced; unchanged
    days are left alone. ``served``/``events``: the served log and the event log, as read. Returns counts
    of runs added, replaced and kept."""
    import json

    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, SumValue
    from evidently.ui.workspace import Workspace

    from pipeline.artifacts import atomic_write_text, file_lock

    counts = {"added": 0, "replaced": 0, "kept": 0}
    if served.empty:
        return counts
    lists = score_lists(served, events, k, horizon, now)
    lists = lists[lists["scored"]]
    workspace = Path(workspace)
    with file_lock(workspace / ".recforge.lock"):
        ws = Workspace.create(str(workspace))
        found = ws.search_project(ONLINE_PROJECT)
        project = (
            found[0]
            if found
            else ws.create_project(
                ONLINE_PROJECT,
                description="How the served lists did: hit rate and NDCG of what users did next",
            )
        )
        index_path = workspace / INDEX_FILE
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        for (tag, day), group in lists.groupby(["model_tag", "day"], sort=True):
            key = f"{tag}|{day}"
            known = index.get(key)
            hours = horizon / timedelta(hours=1)
            if known and (known["scored"], known.get("k"), known.get("horizon_hours")) == (
                len(group),
                k,
                hours,
            ):
                counts["kept"] += 1
                continue
            # Columns named per model: the UI tells a panel's lines apart by metric parameters (the
            # first line whose parameters match takes a point), not by run tags.
            hit, ndcg, lists_column = _columns(tag)
            frame = pd.DataFrame(
                {hit: group["hit"].to_numpy(float), ndcg: group["ndcg"].to_numpy(float), lists_column: 1.0}
            )
            dataset = Dataset.from_pandas(
                frame, data_definition=DataDefinition(numerical_columns=[hit, ndcg, lists_column])
            )
            snapshot = Report(
                [MeanValue(column=hit), MeanValue(column=ndcg), SumValue(column=lists_column)]
            ).run(
                dataset,
                None,
                timestamp=datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC),
                tags=["online-quality", tag],
                metadata={
                    "model_tag": tag,
                    "day": day,
                    "k": str(k),
                    "horizon_hours": str(horizon / timedelta(hours=1)),
                },
                name=f"online quality {day} {tag}",
            )
            if known:
                ws.delete_run(project.id, known["run_id"])
                counts["replaced"] += 1
            else:
                counts["added"] += 1
            run = ws.add_run(project.id, snapshot, name=f"online quality {day} {tag}")
            index[key] = {"run_id": str(run.id), "scored": len(group), "k": k, "horizon_hours": hours}
        atomic_write_text(index_path, json.dumps(index, indent=1))
        newest_day: dict[str, str] = {}
        for key in index:
            tag, day = key.rsplit("|", 1)
            newest_day[tag] = max(day, newest_day.get(tag, day))
        tags = sorted(newest_day, key=newest_day.__getitem__)
        ws.save_dashboard(project.id, _dashboard(tags[-MAX_MODELS_PLOTTED:], k))
    return counts


def _dashboard(model_tags: list[str], k: int):
    """The online-quality tab: what it shows, then hit rate, NDCG and lists per day, one line per model."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel, text_panel

    def per_model(metric: str, column: int) -> list[PanelMetric]:
        return [
            PanelMetric(
                legend=tag,
                metric=metric,
                metric_labels={"column": _columns(tag)[column]},
                tags=["online-quality", tag],
            )
            for tag in model_tags
        ]

    panels = [
        text_panel(
            "Served lists, judged by what users did next",
            f"Each point: one model's lists of one day whose horizon has ended. Hit rate@{k}: share of lists "
            f"with an interaction on one of their first {k} items after serving; NDCG@{k}: binary gains. "
            "Events: those pushed to the service (POST /events). recforge status prints the same table.",
        ),
        line_plot_panel(f"Hit rate@{k} of served lists", per_model("MeanValue", 0), size="half"),
        line_plot_panel(f"NDCG@{k} of served lists", per_model("MeanValue", 1), size="half"),
        bar_plot_panel("Lists scored per day", per_model("SumValue", 2), size="full"),
    ]
    tab = DashboardTabModel(title=TAB, panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def _columns(model_tag: str) -> tuple[str, str, str]:
    return f"hit {model_tag}", f"ndcg {model_tag}", f"lists {model_tag}"
