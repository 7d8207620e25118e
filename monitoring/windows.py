"""What the drift monitor compares: the two windows, their monitored columns, and the model's answers.

Windows (read from the split's Parquet examples, train + valid + test, ordered by
``(event_timestamp, event_id)``; see docs/architecture.md):

- **current** = the newest ``current_window_share`` of all events;
- **reference** = the window of the same number of events immediately before it.

Both are counted in events, not in time: a drift test's sensitivity depends on how many events each
side holds, so equal counts keep the two sides equally noisy whatever the traffic did, and the same
definition serves every split protocol. The time bounds of each window are reported next to its size.
Comparing with the whole training part instead would set a long, old window against a short, new one,
which differs even for an unchanged audience.

Monitored columns (``data_drift_frame``) are *per-event* features, whose distribution over a window
does not change with the window's age: the rating, hour of day and day of week; the log of the item's
and of the user's number of events in the window (popularity per event, activity per user);
whether the user and the item were new (no event before the window started); plus the attributes the
schema declares (``drift_columns``; text is not monitored). Cumulative features of the examples (interaction counts,
history length, running mean ratings) are not monitored: they grow with time, so an older and a newer
window always differ in them, and a detector fed with them fires on every run.

Besides their distributions, the monitored columns' shares of missing values are compared
(``missing_shares``): a column an upstream feed stopped filling is a broken feed, not drift, and the
drift test alone does not see it (it ignores missing values).

The model's answers are scored with ``training.scoring.ArtifactScorer``, the scorer the service and
the evaluator use (who is known, history alignment, exclusion):

- ``recommendations_at_window_end``: for a sample of each window's users, the top-10 from the user's
  state at the *end* of the window (``recent_items`` of the user's latest example plus that example's
  item), described by score, training popularity and the items' attributes (numeric ones as numbers,
  categorical and list ones by their first token): the prediction-drift input.
- ``ranking_frame``: for a sample of the current window's users, the ranking from the user's state at
  the *start* of the window (``recent_items`` of the earliest example there, exactly what the feature
  store served then); ground truth = the user's items in the window. Definitions match
  ``training.metrics`` (binary gains, full ranking, items already seen are excluded from ranking but
  still count in the denominator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.artifacts import Split
from pipeline.schema import DataSchema
from training.scoring import ArtifactScorer, top_k

K = 10
SAMPLE_SEED = 2026
# Per-event behaviour columns monitored for every dataset; the schema's attributes are added (see
# drift_columns).
BEHAVIOUR_NUMERICAL = ["rating", "hour_of_day", "log_item_window_events", "log_user_window_events"]
BEHAVIOUR_CATEGORICAL = ["day_of_week", "new_user", "new_item"]
# Columns with one value per user (missing on the user's other events): their missing share says how
# many events a user has, not whether a feed broke, so the broken-feed check leaves them out.
PER_USER_COLUMNS = ["log_user_window_events"]

# ------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    """The compared windows (equal numbers of events, ``reference`` right before ``current``), both sorted
    by (event_timestamp, event_id), and the (user_id, item_id) of every event before ``reference``, which
    says who and what was new in each window."""

    reference: pd.DataFrame
    current: pd.DataFrame
    earlier: pd.DataFrame


def select_windows(split: Split, current_window_share: float) -> Windows:
    """The newest ``current_window_share`` of all events and the equally long window before it."""
    parts = [pd.read_parquet(p) for p in (split.train, split.valid, split.test) if Path(p).exists()]
    timeline = pd.concat(parts, ignore_index=True).drop_duplicates("event_id")
    timeline = timeline.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    n = max(1, math.ceil(current_window_share * len(timeline)))
    if 2 * n > len(timeline):
        raise ValueError(
            f"{split.dir}: {len(timeline)} events cannot hold two windows of {n} events (the newest "
            f"{current_window_share:.0%}); lower monitoring.current_window_share"
        )
    end = len(timeline)
    return Windows(
        reference=timeline.iloc[end - 2 * n : end - n].reset_index(drop=True),
        current=timeline.iloc[end - n :].reset_index(drop=True),
        earlier=timeline.iloc[: end - 2 * n][["user_id", "item_id"]].reset_index(drop=True),
    )


def window_bounds(frame: pd.DataFrame) -> list[str]:
    """[first, last] event timestamp of a window, ISO 8601."""
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    return [ts.min().isoformat(), ts.max().isoformat()]


def max_history(*frames: pd.DataFrame) -> int:
    """Longest ``recent_items`` list in the data (the feature's ``history_length``), at least 1."""
    longest = 1
    for frame in frames:
        if "recent_items" in frame and len(frame):
            longest = max(longest, int(frame["recent_items"].map(lambda r: len(_as_list(r))).max()))
    return longest


# ----------------------------------------------------------------------------------- monitored columns


def drift_columns(schema: DataSchema) -> tuple[list[str], list[str]]:
    """(numerical, categorical) monitored columns of ``data_drift_frame``: behaviour plus attributes.

    Numeric attributes as numbers; categorical ones as categories; a list attribute by its first
    token (``primary_<name>``: the main genre, the main tag); text is not monitored (words drift
    with the catalogue, not with the audience).
    """
    numerical, categorical = list(BEHAVIOUR_NUMERICAL), list(BEHAVIOUR_CATEGORICAL)
    for name, spec in {**schema.user_features, **schema.item_features}.items():
        if spec.type == "numeric":
            numerical.append(name)
        elif spec.type == "categorical":
            categorical.append(name)
        elif spec.type == "list":
            categorical.append(f"primary_{name}")
    return numerical, categorical


def prediction_columns(schema: DataSchema) -> tuple[list[str], list[str]]:
    """(numerical, categorical) columns describing recommended items: score, popularity, attributes."""
    numerical, categorical = ["score", "item_popularity"], []
    for name, spec in schema.item_features.items():
        if spec.type == "numeric":
            numerical.append(f"item_{name}")
        elif spec.type in ("categorical", "list"):
            categorical.append(f"item_{name}")
    return numerical, categorical


def data_drift_frame(
    window: pd.DataFrame, schema: DataSchema, seen_users: pd.Series, seen_items: pd.Series
) -> pd.DataFrame:
    """Monitored columns of one window's events (see module doc).

    ``seen_users`` / ``seen_items``: the ids of every event before the window starts; a user or item
    not among them is new in the window.
    """
    out = pd.DataFrame(index=window.index)
    if "rating" in window:  # implicit-feedback data has none
        out["rating"] = pd.to_numeric(window["rating"], errors="coerce").astype("float64")
    ts = pd.to_datetime(window["event_timestamp"], utc=True)
    out["hour_of_day"] = ts.dt.hour.astype("float64")
    out["day_of_week"] = ts.dt.day_name()
    users, items = window["user_id"].astype(str), window["item_id"].astype(str)
    # Log scale: activity is heavy-tailed (a handful of users rate hundreds of items in a day), and on a
    # raw scale those few set both the distance and its normalising spread; a surge of light visitors
    # or a flattened popularity curve moves the bulk of the distribution, which the log shows.
    out["log_item_window_events"] = np.log(items.map(items.value_counts()).astype("float64"))
    # User activity is a distribution over users, not events: it is set on each user's first event of
    # the window only (the drift test skips missing values), or one heavy user would count once per
    # event and its day's burst would swamp the rest.
    user_events = np.log(users.map(users.value_counts()).astype("float64"))
    out["log_user_window_events"] = user_events.where(~users.duplicated())
    out["new_user"] = np.where(users.isin(set(seen_users.astype(str))), "returning", "new")
    out["new_item"] = np.where(items.isin(set(seen_items.astype(str))), "returning", "new")
    for name, spec in {**schema.user_features, **schema.item_features}.items():
        if name not in window:
            continue
        if spec.type == "numeric":
            out[name] = pd.to_numeric(window[name], errors="coerce").astype("float64")
        elif spec.type == "categorical":
            out[name] = window[name].astype("object").where(window[name].notna(), None)
        elif spec.type == "list":
            out[f"primary_{name}"] = window[name].map(_first_token)
    return out


def window_frames(windows: Windows, schema: DataSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current) ``data_drift_frame``s; each window's "new" is relative to its own start."""
    before_current = pd.concat([windows.earlier, windows.reference[["user_id", "item_id"]]])
    return (
        data_drift_frame(windows.reference, schema, windows.earlier["user_id"], windows.earlier["item_id"]),
        data_drift_frame(windows.current, schema, before_current["user_id"], before_current["item_id"]),
    )


def missing_shares(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> dict[str, tuple[float, float]]:
    """{column: (share missing in reference, share missing in current)} for the columns both frames have,
    except the per-user ones (``PER_USER_COLUMNS``)."""
    return {
        column: (float(reference[column].isna().mean()), float(current[column].isna().mean()))
        for column in columns
        if column in reference
        and column in current
        and column not in PER_USER_COLUMNS
        and len(reference)
        and len(current)
    }


def usable_columns(
    reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]
) -> tuple[list[str], list[str]]:
    """Columns present and not entirely null in both windows (Evidently cannot test an empty column)."""

    def ok(column: str) -> bool:
        return (
            column in reference
            and column in current
            and reference[column].notna().any()
            and current[column].notna().any()
        )

    return [c for c in numerical if ok(c)], [c for c in categorical if ok(c)]


# ---------------------------------------------------------------------------------- model's answers


def item_descriptions(examples: pd.DataFrame, scorer: ArtifactScorer, schema: DataSchema) -> pd.DataFrame:
    """One row per item index (0 = padding) with ``item_<attribute>`` columns (numbers as numbers,
    categories and lists by their first token; NaN/None when unknown), for describing recommendations."""
    out = pd.DataFrame(index=np.arange(scorer.n_items + 1))
    _, categorical = prediction_columns(schema)
    columns = [c for c in ("item_id", *schema.item_features) if c in examples]
    items = examples[columns].drop_duplicates("item_id", keep="last")
    idx = items["item_id"].astype(str).map(scorer.artifact.item_index).fillna(0).astype(int).to_numpy()
    keep = idx > 0
    for name, spec in schema.item_features.items():
        column = f"item_{name}"
        if spec.type == "numeric":
            out[column] = np.nan
            if name in items:
                out.loc[idx[keep], column] = pd.to_numeric(items[name], errors="coerce").to_numpy(
                    dtype=float
                )[keep]
        elif column in categorical:
            out[column] = None
            if name in items:
                values = (
                    items[name].map(_first_token) if spec.type == "list" else items[name].astype("object")
                )
                out.loc[idx[keep], column] = values.to_numpy(dtype=object)[keep]
    return out


def recommendations_at_window_end(
    scorer: ArtifactScorer,
    window: pd.DataFrame,
    max_users: int,
    items: pd.DataFrame,
    seed: int = SAMPLE_SEED,
) -> pd.DataFrame:
    """Top-10 for a sample of the window's users from their state after their last event in the window.

    One row per (user, rank): ``score``, ``item_popularity`` (training interactions of the item), and
    the item's ``item_<attribute>`` columns of ``items`` (``item_descriptions``).
    """
    last = window.drop_duplicates("user_id", keep="last").set_index("user_id")
    last.index = last.index.astype(str)
    users = sample_users(last.index.to_numpy(), max_users, seed)
    histories = [
        scorer.item_rows([*_as_list(last.at[user, "recent_items"]), last.at[user, "item_id"]])
        if "recent_items" in last
        else scorer.item_rows([last.at[user, "item_id"]])
        for user in users
    ]
    frames = []
    for start, scores in scorer.batches(scorer.user_rows(users), histories):
        values, top = top_k(scores, K)
        n, k = top.shape
        frames.append(
            pd.DataFrame(
                {
                    "user_id": np.repeat(users[start : start + n], k),
                    "rank": np.tile(np.arange(1, k + 1), n),
                    "item_index": top.reshape(-1).numpy(),
                    "score": values.reshape(-1).double().numpy(),
                }
            )
        )
    recs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["item_index", "score"])
    recs = recs[np.isfinite(recs["score"].astype(float))].reset_index(drop=True)
    idx = recs["item_index"].to_numpy(dtype=np.int64)
    recs["item_popularity"] = np.asarray(scorer.artifact.popularity)[idx].astype(float)
    for column in items.columns:
        recs[column] = items[column].to_numpy()[idx]
    recs["item_id"] = [scorer.artifact.item_ids[i - 1] for i in idx]
    return recs


def ranking_frame(
    scorer: ArtifactScorer, current: pd.DataFrame, max_users: int, seed: int = SAMPLE_SEED
) -> pd.DataFrame:
    """Rows (user_id, item_id, score, target) for Evidently's recsys metrics on the current window.

    Users: those the model can personalise for (trained on them, or a non-empty history at the window
    start). Relevant items the model never saw or the user had already seen get a score below the
    10th recommendation: they count in the recall/NDCG denominators but can never be hit, as in
    ``training.metrics``. Evidently's ``RecsysPreset`` then needs only the top-10 plus those rows,
    not the whole catalogue per user.
    """
    first = current.drop_duplicates("user_id", keep="first").set_index("user_id")
    first.index = first.index.astype(str)
    truth = current.assign(user_id=current["user_id"].astype(str), item_id=current["item_id"].astype(str))
    truth_items = truth.groupby("user_id")["item_id"].agg(lambda s: list(dict.fromkeys(s)))
    candidates: list[str] = []
    histories: dict[str, list[int]] = {}
    for user, row in first.iterrows():
        history = scorer.item_rows(_as_list(row.get("recent_items")))
        if history or scorer.user_row(user) >= 0:
            candidates.append(user)
            histories[user] = history
    users = sample_users(np.array(candidates, dtype=object), max_users, seed)
    rows: list[pd.DataFrame] = []
    for start, scores in scorer.batches(scorer.user_rows(users), [histories[u] for u in users]):
        values, top = top_k(scores, K)
        for r in range(top.shape[0]):
            user = users[start + r]
            finite = torch.isfinite(values[r])
            rec_idx, rec_scores = top[r][finite].numpy(), values[r][finite].double().numpy()
            rec_items = [scorer.artifact.item_ids[i - 1] for i in rec_idx]
            relevant = truth_items[user]
            floor = (rec_scores.min() if len(rec_scores) else 0.0) - 1.0
            recommended = set(rec_items)
            missed = [item for item in relevant if item not in recommended]
            rel_set = set(relevant)
            rows.append(
                pd.DataFrame(
                    {
                        "user_id": user,
                        "item_id": rec_items + missed,
                        "score": np.concatenate([rec_scores, np.full(len(missed), floor)]),
                        "target": [int(item in rel_set) for item in rec_items] + [1] * len(missed),
                    }
                )
            )
    if not rows:
        return pd.DataFrame({"user_id": [], "item_id": [], "score": [], "target": []})
    return pd.concat(rows, ignore_index=True)


def sample_users(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """Up to ``max_users`` user ids, sorted; a seeded sample when there are more."""
    users = np.sort(np.asarray(users, dtype=object).astype(str))
    if len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def _as_list(value: Any) -> list[Any]:
    """A list column's cell as a list: Parquet gives numpy arrays, Feast may give None for an empty list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def _first_token(tokens: Any) -> str | None:
    tokens = _as_list(tokens)
    return str(tokens[0]) if tokens else None
