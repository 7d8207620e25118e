"""What the drift monitor compares: the two windows, their monitored columns, and the model's answers.

Windows (both read from the split's Parquet examples, see docs/architecture.md):

- **reference** = the training window: ``split.train`` examples, minus any event that also lies in
  the current window (under ``random_holdout``/``leave_last_out`` the training part spans the whole
  timeline; keeping the two windows disjoint stops the newest events being compared with themselves).
- **current** = the newest ``current_window_share`` of *all* examples (train + valid + test),
  ordered by ``(event_timestamp, event_id)``. A share of rows rather than a time span keeps the window
  size predictable whatever the traffic, and it is the same definition for every split protocol; under
  the default temporal split with ``test_share == current_window_share`` it is the test period.

Monitored columns (``data_drift_frame``): behaviour (ratings, counts, history length, time of day, day
of week) for every dataset, plus the attributes its schema declares (``drift_columns``; text
attributes are not monitored).

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

Known behaviour worth reading the numbers with: the cumulative features (``user_interaction_count``,
``item_interaction_count``, ``history_length``, and the running means, which are noisy early on) grow
over time and differ between an older and a newer window even for a stationary audience, so the share
threshold fires only when several other columns (audience, ratings, catalogue, time of day) move as
well; measured shares are in the drift reports, not here.
"""

from __future__ import annotations

import math
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
# Behaviour columns monitored for every dataset; the schema's attributes are added (see drift_columns).
BEHAVIOUR_NUMERICAL = [
    "rating",
    "user_interaction_count",
    "user_mean_rating",
    "history_length",
    "item_interaction_count",
    "item_mean_rating",
    "hour_of_day",
]
BEHAVIOUR_CATEGORICAL = ["day_of_week"]

# ------------------------------------------------------------------------------------------- windows


def select_windows(split: Split, current_window_share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current) example frames, both sorted by (event_timestamp, event_id); see module doc."""
    train = pd.read_parquet(split.train)
    parts = [train] + [pd.read_parquet(p) for p in (split.valid, split.test) if Path(p).exists()]
    timeline = pd.concat(parts, ignore_index=True).drop_duplicates("event_id")
    timeline = timeline.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    n_current = max(1, math.ceil(current_window_share * len(timeline)))
    current = timeline.iloc[len(timeline) - n_current :].reset_index(drop=True)
    reference = train[~train["event_id"].isin(current["event_id"])]
    reference = reference.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    if reference.empty:
        raise ValueError(
            f"{split.train}: no training event lies before the newest {current_window_share:.0%} of the "
            "timeline; lower monitoring.current_window_share so the reference window is not empty"
        )
    return reference, current


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


def data_drift_frame(examples: pd.DataFrame, schema: DataSchema) -> pd.DataFrame:
    """Monitored columns of an examples frame: features as stored, plus derived ones (why: history length,
    time of day and the main category mix shift with the audience even when raw ids do not)."""
    out = pd.DataFrame(index=examples.index)
    numerical, _ = drift_columns(schema)
    for column in numerical:
        if column in examples:
            out[column] = pd.to_numeric(examples[column], errors="coerce").astype("float64")
    if "recent_items" in examples:
        out["history_length"] = examples["recent_items"].map(lambda r: len(_as_list(r))).astype(float)
    ts = pd.to_datetime(examples["event_timestamp"], utc=True)
    out["hour_of_day"] = ts.dt.hour.astype("float64")
    out["day_of_week"] = ts.dt.day_name()
    for name, spec in {**schema.user_features, **schema.item_features}.items():
        if name not in examples:
            continue
        if spec.type == "categorical":
            out[name] = examples[name].astype("object").where(examples[name].notna(), None)
        elif spec.type == "list":
            out[f"primary_{name}"] = examples[name].map(_first_token)
    return out


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
