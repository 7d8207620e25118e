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


def online_quality_of_home(
    home: Path, k: int = 10, horizon: timedelta = timedelta(days=1), now: datetime | None = None
) -> pd.DataFrame:
    """``online_quality`` of a RECFORGE_HOME's served log and event log."""
    from ingestion.event_log import EventLog
    from pipeline.layout import Layout
    from serving.served_log import read_served

    layout = Layout(Path(home))
    return online_quality(read_served(layout.served_log), EventLog(layout.event_log).read(), k, horizon, now)
