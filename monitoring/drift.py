"""Drift monitoring with Evidently 0.7: data drift, prediction drift and ranking quality on the newest window.

Why three reports: data drift says *the inputs changed*, prediction drift says *what we serve changed*
(popularity and scores of the recommended items), ranking quality says *whether it still works* on
labelled recent interactions. Any of the three over its threshold sets ``drift_detected``, which the
drift DAG turns into an Asset event that schedules retraining.

Windows (both read from the split's Parquet examples, see docs/architecture.md):

- **reference** = the training window: ``split.train`` examples, minus any event that also lies in
  the current window (under ``random_holdout``/``leave_last_out`` the training part spans the whole
  timeline; keeping the two windows disjoint stops the newest events being compared with themselves).
- **current** = the newest ``cfg.current_window_share`` of *all* examples (train + valid + test),
  ordered by ``(event_timestamp, event_id)``. A share of rows rather than a time span keeps the window
  size predictable whatever the traffic, and it is the same definition for every split protocol; under
  the default temporal split with ``test_share == current_window_share`` it is the test period.

Prediction drift: for up to ``cfg.max_users`` users of each window, the model recommends top-10 from
the user's state at the *end* of that window (``recent_items`` of the user's latest example plus that
example's item), excluding items the user has already seen, as the service would. The recommended
items' training popularity, their attributes (numeric ones as numbers, categorical and list ones by
their first token) and the scores are compared with DataDriftPreset.

Which columns: behaviour (ratings, counts, history length, time of day, day of week) for every dataset,
plus the attributes its schema declares (``drift_columns``; text attributes are not monitored).

Ranking quality: for up to ``cfg.max_users`` users with events in the current window, the model ranks
the catalogue from the user's state at the *start* of the window (``recent_items`` of the earliest
example there, exactly what the feature store served then); ground truth = the user's items in the
window. Definitions match ``training.metrics`` (binary gains, full ranking, items already seen are
excluded from ranking but still count in the denominator). Evidently's ``RecsysPreset`` computes them
from rows (user, item, score, target): the top-10 with their scores, plus every relevant item outside
the top-10 with a score below the 10th, so recall/NDCG denominators are right without feeding Evidently
the whole catalogue per user.

Known behaviour worth reading the numbers with: the cumulative features (``user_interaction_count``,
``item_interaction_count``, ``history_length``, and the running means, which are noisy early on) grow
over time and differ between an older and a newer window even for a stationary audience, so the share
threshold fires only when several other columns (audience, ratings, catalogue, time of day) move as
well; measured shares are in the drift reports, not here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from evidently import DataDefinition, Dataset, Recsys, Report
from evidently.presets import DataDriftPreset, RecsysPreset
from evidently.ui.workspace import Workspace

from pipeline.artifacts import DriftResult, Split, atomic_write_text, file_lock
from pipeline.config import MonitoringConfig
from pipeline.schema import DataSchema, load_schema
from training.artifact import ModelArtifact, load_model_artifact

log = logging.getLogger(__name__)

K = 10
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
SAMPLE_SEED = 2026
# Drift methods fixed by us, not chosen by Evidently from the row count: Evidently's defaults switch from
# p-value tests (K-S, chi-square) to distances at 1000 rows, so the same shift would be judged
# differently in a small test window and a production one, and p-values flag negligible shifts at
# large n. Distances measure effect size: normed Wasserstein (in reference standard deviations) for
# numbers, Jensen-Shannon for categories; drift when the distance reaches the threshold.
NUM_METHOD, CAT_METHOD, DRIFT_DISTANCE_THRESHOLD = "wasserstein", "jensenshannon", 0.1


# --------------------------------------------------------------------------------------------- windows


def _read_part(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


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


def select_windows(split: Split, current_window_share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current) example frames, both sorted by (event_timestamp, event_id); see module doc."""
    train = _read_part(split.train)
    parts = [train] + [_read_part(p) for p in (split.valid, split.test) if Path(p).exists()]
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


def _as_list(value: Any) -> list[Any]:
    """A list column's cell as a list: Parquet gives numpy arrays, Feast may give None for an empty list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def _first_token(tokens: Any) -> str | None:
    tokens = _as_list(tokens)
    return str(tokens[0]) if tokens else None


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


def _usable_columns(
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


# ------------------------------------------------------------------------------------------ scoring


def _map_history(artifact: ModelArtifact, items: list[Any]) -> list[int]:
    index = artifact.item_index
    return [i for i in (index.get(str(item), 0) for item in items) if i > 0]


def _right_align(histories: list[list[int]], length: int) -> torch.Tensor:
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, seq in enumerate(histories):
        tail = seq[-length:]
        if tail:
            out[row, length - len(tail) :] = tail
    return torch.from_numpy(out)


def _score_users(
    artifact: ModelArtifact,
    users: list[str],
    histories: list[list[int]],
    history_length: int,
    batch_users: int = 256,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row offset, scores of a batch) with seen and history items set to -inf.

    Exclusion mirrors the service: a user is never recommended what they already interacted with.
    A user in the index without training interactions (the split's index covers every user of the
    split, train or not) is scored as unknown (-1), so models use the history instead of an untrained
    user row (ItemKNN, for instance, would score every item 0 from the empty training row).
    """
    n_seen_users = artifact.seen.shape[0]
    seen_counts = np.diff(artifact.seen.indptr)
    user_idx = np.array([artifact.user_index.get(str(u), -1) for u in users], dtype=np.int64)
    in_range = (user_idx >= 0) & (user_idx < n_seen_users)
    user_idx[in_range & (seen_counts[np.clip(user_idx, 0, n_seen_users - 1)] == 0)] = -1
    user_idx[~in_range] = -1
    for start in range(0, len(users), batch_users):
        stop = min(start + batch_users, len(users))
        batch_users_idx = torch.from_numpy(user_idx[start:stop])
        history = _right_align(histories[start:stop], history_length)
        scores = artifact.score(batch_users_idx, history).numpy().astype(np.float64, copy=True)
        for row in range(stop - start):
            u = user_idx[start + row]
            if 0 <= u < n_seen_users:
                seen = artifact.seen.indices[artifact.seen.indptr[u] : artifact.seen.indptr[u + 1]]
                scores[row, seen] = -np.inf
            scores[row, histories[start + row]] = -np.inf
        scores[:, 0] = -np.inf
        yield start, scores


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the k best columns per row, best first."""
    k = min(k, scores.shape[1] - 1)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def _sample_users(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    users = np.sort(np.asarray(users, dtype=object).astype(str))
    if len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def item_descriptions(examples: pd.DataFrame, artifact: ModelArtifact, schema: DataSchema) -> pd.DataFrame:
    """One row per item index (0 = padding) with ``item_<attribute>`` columns (numbers as numbers,
    categories and lists by their first token; NaN/None when unknown), for describing recommendations."""
    out = pd.DataFrame(index=np.arange(artifact.n_items + 1))
    _, categorical = prediction_columns(schema)
    columns = [c for c in ("item_id", *schema.item_features) if c in examples]
    items = examples[columns].drop_duplicates("item_id", keep="last")
    idx = items["item_id"].astype(str).map(artifact.item_index).fillna(0).astype(int).to_numpy()
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
    artifact: ModelArtifact,
    window: pd.DataFrame,
    max_users: int,
    history_length: int,
    items: pd.DataFrame,
    seed: int = SAMPLE_SEED,
) -> pd.DataFrame:
    """Top-10 for a sample of the window's users from their state after their last event in the window.

    One row per (user, rank): ``score``, ``item_popularity`` (training interactions of the item), and
    the item's ``item_<attribute>`` columns of ``items`` (``item_descriptions``).
    """
    last = window.drop_duplicates("user_id", keep="last").set_index("user_id")
    last.index = last.index.astype(str)
    users = _sample_users(last.index.to_numpy(), max_users, seed)
    histories: list[list[int]] = []
    for user in users:
        row = last.loc[user]
        recent = _as_list(row.get("recent_items"))
        histories.append(_map_history(artifact, [*recent, row["item_id"]]))
    frames = []
    for start, scores in _score_users(artifact, list(users), histories, history_length):
        top, top_scores = _top_k(scores, K)
        n = top.shape[0]
        frames.append(
            pd.DataFrame(
                {
                    "user_id": np.repeat(users[start : start + n], top.shape[1]),
                    "rank": np.tile(np.arange(1, top.shape[1] + 1), n),
                    "item_index": top.ravel(),
                    "score": top_scores.ravel(),
                }
            )
        )
    recs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    recs = recs[np.isfinite(recs["score"])].reset_index(drop=True)
    idx = recs["item_index"].to_numpy()
    recs["item_popularity"] = artifact.popularity[idx].astype(float)
    for column in items.columns:
        recs[column] = items[column].to_numpy()[idx]
    recs["item_id"] = [artifact.item_ids[i - 1] for i in idx]
    return recs


def ranking_frame(
    artifact: ModelArtifact,
    current: pd.DataFrame,
    max_users: int,
    history_length: int,
    seed: int = SAMPLE_SEED,
) -> pd.DataFrame:
    """Rows (user_id, item_id, score, target) for Evidently's recsys metrics on the current window.

    Users: those the model can personalise for (training interactions or a non-empty history at the
    window start). Relevant items the model never saw or the user had already seen get a score below
    the 10th recommendation: they count in the recall/NDCG denominators but can never be hit, as in
    ``training.metrics``.
    """
    first = current.drop_duplicates("user_id", keep="first").set_index("user_id")
    first.index = first.index.astype(str)
    truth = current.assign(user_id=current["user_id"].astype(str), item_id=current["item_id"].astype(str))
    truth_items = truth.groupby("user_id")["item_id"].agg(lambda s: list(dict.fromkeys(s)))
    candidates: list[str] = []
    histories: dict[str, list[int]] = {}
    seen_counts = np.diff(artifact.seen.indptr)
    for user, row in first.iterrows():
        history = _map_history(artifact, _as_list(row.get("recent_items")))
        u = artifact.user_index.get(user, -1)
        if history or (0 <= u < len(seen_counts) and seen_counts[u] > 0):
            candidates.append(user)
            histories[user] = history
    users = _sample_users(np.array(candidates, dtype=object), max_users, seed)
    rows: list[pd.DataFrame] = []
    for start, scores in _score_users(artifact, list(users), [histories[u] for u in users], history_length):
        top, top_scores = _top_k(scores, K)
        for r in range(top.shape[0]):
            user = users[start + r]
            finite = np.isfinite(top_scores[r])
            rec_idx, rec_scores = top[r][finite], top_scores[r][finite]
            rec_items = [artifact.item_ids[i - 1] for i in rec_idx]
            relevant = truth_items[user]
            rel_set = set(relevant)
            floor = (rec_scores.min() if len(rec_scores) else 0.0) - 1.0
            recommended = set(rec_items)
            missed = [item for item in relevant if item not in recommended]
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


# --------------------------------------------------------------------------------------- Evidently


def _drift_preset(columns: list[str], cfg: MonitoringConfig) -> DataDriftPreset:
    return DataDriftPreset(
        columns=columns,
        drift_share=cfg.drift_share_threshold,
        num_method=NUM_METHOD,
        cat_method=CAT_METHOD,
        num_threshold=DRIFT_DISTANCE_THRESHOLD,
        cat_threshold=DRIFT_DISTANCE_THRESHOLD,
    )


def _drift_summary(snapshot: Any) -> tuple[float, list[str]]:
    """(share of drifted columns, names of drifted columns) from a DataDriftPreset snapshot's dict.

    The drifted names come from the per-column ValueDrift tests (``include_tests=True``), so they agree
    with the report's own verdict per column (methods and thresholds: ``_drift_preset``).
    """
    payload = snapshot.dict()
    share = next(
        float(m["value"]["share"])
        for m in payload["metrics"]
        if m["config"]["type"] == "evidently:metric_v2:DriftedColumnsCount"
    )
    drifted = [
        t["metric_config"]["params"]["column"]
        for t in payload.get("tests", [])
        if t["metric_config"]["params"].get("type") == "evidently:metric_v2:ValueDrift"
        and t["status"] == "FAIL"
    ]
    return share, sorted(drifted)


def _ranking_summary(snapshot: Any) -> dict[str, float]:
    """Metric values at k=10 (and the single-value ones) from a RecsysPreset snapshot's dict."""
    out: dict[str, float] = {}
    names = {
        "PrecisionTopK": "precision@10",
        "RecallTopK": "recall@10",
        "FBetaTopK": "f1@10",
        "MAP": "map@10",
        "NDCG": "ndcg@10",
        "MRR": "mrr@10",
        "HitRate": "hitrate@10",
        "Personalization": "personalization@10",
        "Novelty": "novelty@10",
        "PopularityBiasMetric": "popularity_bias_arp@10",
        "ScoreDistribution": "score_entropy@10",
    }
    for metric in snapshot.dict()["metrics"]:
        kind = metric["config"]["type"].rsplit(":", 1)[-1]
        if kind not in names:
            continue
        value = metric["value"]
        if isinstance(value, dict | list):
            # DataframeValue {"rank": ..., "value": ...}, one row per cut-off k = 1, 2, ... in order.
            # Take the k-th row by position, not the row labelled rank == k: Evidently 0.7.23 adds 1
            # to an index that is already 1-based for NDCG and MRR (metrics/recsys.py,
            # LegacyTopKCalculation.calculate_value), so their labels run 2..k+1 while Precision,
            # Recall, MAP and HitRate run 1..k. Positions agree for all of them (checked against
            # training.metrics in tests/unit/test_drift.py).
            frame = pd.DataFrame(value)
            if "value" not in frame or len(frame) < K:
                continue
            value = frame["value"].iloc[K - 1]
        try:
            out[names[kind]] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _save(snapshot: Any, out_dir: Path, stem: str) -> tuple[Path, Path]:
    html, js = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    snapshot.save_html(str(html))
    atomic_write_text(js, snapshot.json())
    return html, js


def add_to_workspace(
    workspace: Path, project: str, snapshots: dict[str, Any], description: str = ""
) -> tuple[str, dict[str, str]]:
    """Add the snapshots to the local workspace project named ``project`` (found by name, else created).

    Returns (project id, {report name: run id}).
    """
    workspace = Path(workspace)
    with file_lock(workspace / ".recforge.lock"):  # two DAG runs must not both create the project
        ws = Workspace.create(str(workspace))
        found = ws.search_project(project)
        proj = found[0] if found else ws.create_project(project, description=description or None)
        run_ids = {name: str(ws.add_run(proj.id, snap, name=name).id) for name, snap in snapshots.items()}
    return str(proj.id), run_ids


def _window_bounds(frame: pd.DataFrame) -> list[str]:
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    return [ts.min().isoformat(), ts.max().isoformat()]


# ---------------------------------------------------------------------------------------------- entry


def run_drift(
    split: Split, model_dir: Path, cfg: MonitoringConfig, out_dir: Path, workspace: Path, project: str
) -> DriftResult:
    """Run the three Evidently reports, save them (HTML + JSON) and to the workspace, write drift.json."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    mark = t0

    def lap(step: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[step] = round(now - mark, 3)
        mark = now

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = load_model_artifact(model_dir)
    reference, current = select_windows(split, cfg.current_window_share)
    log.info("drift windows: reference %d rows, current %d rows", len(reference), len(current))
    metadata = {"model": artifact.name, "data_version": split.data_version, "protocol": split.protocol}
    tags = ["recforge", artifact.name, split.data_version]

    lap("load")

    # 1. Data drift.
    schema = load_schema(split.schema)
    ref_data, cur_data = data_drift_frame(reference, schema), data_drift_frame(current, schema)
    num, cat = _usable_columns(ref_data, cur_data, *drift_columns(schema))
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    data_snapshot = Report(
        [_drift_preset(num + cat, cfg)],
        metadata={**metadata, "report": "data_drift"},
        tags=tags,
        include_tests=True,
    ).run(
        Dataset.from_pandas(cur_data[num + cat], data_definition=definition),
        Dataset.from_pandas(ref_data[num + cat], data_definition=definition),
    )
    data_share, data_drifted = _drift_summary(data_snapshot)

    lap("data_drift")

    # 2. Prediction drift.
    # The length the model was trained on (sequential models truncate to it), else the data's longest.
    history_length = artifact.history_length or _max_history(reference, current)
    timeline = pd.concat([reference, current], ignore_index=True)
    items = item_descriptions(timeline, artifact, schema)
    ref_recs = recommendations_at_window_end(artifact, reference, cfg.max_users, history_length, items)
    cur_recs = recommendations_at_window_end(artifact, current, cfg.max_users, history_length, items)
    p_num, p_cat = _usable_columns(ref_recs, cur_recs, *prediction_columns(schema))
    p_definition = DataDefinition(numerical_columns=p_num, categorical_columns=p_cat)
    prediction_snapshot = Report(
        [_drift_preset(p_num + p_cat, cfg)],
        metadata={**metadata, "report": "prediction_drift"},
        tags=tags,
        include_tests=True,
    ).run(
        Dataset.from_pandas(cur_recs[p_num + p_cat], data_definition=p_definition),
        Dataset.from_pandas(ref_recs[p_num + p_cat], data_definition=p_definition),
    )
    pred_share, pred_drifted = _drift_summary(prediction_snapshot)

    lap("prediction_drift")

    # 3. Ranking quality on the current window (skipped when no current user is known to the model:
    # that is itself a reason to retrain, so it is reported as a failed check, not raised).
    ranked = ranking_frame(artifact, current, cfg.max_users, history_length)
    ranking_snapshot = None
    ranking: dict[str, float] = {}
    if not ranked.empty:
        r_definition = DataDefinition(
            numerical_columns=["score", "target"],
            categorical_columns=["user_id", "item_id"],
            ranking=[Recsys(user_id="user_id", item_id="item_id", target="target", prediction="score")],
        )
        train_interactions = reference[["user_id", "item_id"]].astype(str)
        ranking_snapshot = Report(
            [RecsysPreset(k=K)], metadata={**metadata, "report": "ranking"}, tags=tags, include_tests=True
        ).run(
            Dataset.from_pandas(ranked, data_definition=r_definition),
            None,
            additional_data={
                "current_train_data": Dataset.from_pandas(
                    train_interactions,
                    data_definition=DataDefinition(categorical_columns=["user_id", "item_id"]),
                )
            },
        )
        ranking = _ranking_summary(ranking_snapshot)
    ndcg10 = ranking.get("ndcg@10", float("nan"))

    lap("ranking")

    # Decision.
    reasons: list[str] = []
    if data_share > cfg.drift_share_threshold:
        reasons.append(
            f"data drift: {data_share:.2f} of {len(num + cat)} columns drifted "
            f"(> {cfg.drift_share_threshold:.2f}): {', '.join(data_drifted)}"
        )
    if pred_share > cfg.drift_share_threshold:
        reasons.append(
            f"prediction drift: {pred_share:.2f} of {len(p_num + p_cat)} recommendation columns drifted "
            f"(> {cfg.drift_share_threshold:.2f}): {', '.join(pred_drifted)}"
        )
    if ranking_snapshot is None:
        reasons.append("ranking quality: not measurable, no user of the current window is known to the model")
    elif not ndcg10 >= cfg.min_current_ndcg10:  # NaN counts as a failure
        reasons.append(
            f"ranking quality: ndcg@10 {ndcg10:.4f} on the current window < {cfg.min_current_ndcg10:.4f}"
        )

    # Artifacts: HTML + JSON, workspace runs, drift.json.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    snapshots = {"data_drift": data_snapshot, "prediction_drift": prediction_snapshot}
    if ranking_snapshot is not None:
        snapshots["ranking"] = ranking_snapshot
    paths: dict[str, tuple[Path | None, Path | None]] = {"ranking": (None, None)}
    paths.update({name: _save(snap, out_dir, name) for name, snap in snapshots.items()})
    project_id, run_ids = add_to_workspace(
        Path(workspace),
        project,
        {f"{artifact.name} {name} {stamp}": snap for name, snap in snapshots.items()},
        description="recforge drift monitoring: data drift, prediction drift, ranking quality",
    )
    lap("save")
    result = DriftResult(
        drift_detected=bool(reasons),
        reasons=reasons,
        model=artifact.name,
        data_version=split.data_version,
        created_at=datetime.now(UTC).isoformat(),
        reference_rows=len(reference),
        current_rows=len(current),
        reference_window=_window_bounds(reference),
        current_window=_window_bounds(current),
        data_drift_share=float(data_share),
        data_drifted_columns=data_drifted,
        data_columns=num + cat,
        prediction_drift_share=float(pred_share),
        prediction_drifted_columns=pred_drifted,
        prediction_columns=p_num + p_cat,
        prediction_users={
            "reference": int(ref_recs["user_id"].nunique()),
            "current": int(cur_recs["user_id"].nunique()),
        },
        current_ndcg10=float(ndcg10),
        ranking_metrics=ranking,
        ranking_users=int(ranked["user_id"].nunique()),
        thresholds={
            "drift_share_threshold": cfg.drift_share_threshold,
            "min_current_ndcg10": cfg.min_current_ndcg10,
            "current_window_share": cfg.current_window_share,
            "max_users": float(cfg.max_users),
        },
        out_dir=out_dir,
        data_drift_html=paths["data_drift"][0],
        data_drift_json=paths["data_drift"][1],
        prediction_drift_html=paths["prediction_drift"][0],
        prediction_drift_json=paths["prediction_drift"][1],
        ranking_html=paths["ranking"][0],
        ranking_json=paths["ranking"][1],
        workspace=Path(workspace),
        project=project,
        project_id=project_id,
        run_ids={name.split(" ")[1]: run_id for name, run_id in run_ids.items()},
        seconds=round(time.perf_counter() - t0, 3),
        timings=timings,
    )
    result.save(out_dir / "drift.json")
    log.info("drift: detected=%s %s", result.drift_detected, "; ".join(reasons) or "no check fired")
    return result


def _max_history(*frames: pd.DataFrame) -> int:
    """Longest ``recent_items`` list in the data (the feature's ``history_length``), at least 1."""
    longest = 1
    for frame in frames:
        if "recent_items" in frame and len(frame):
            longest = max(longest, int(frame["recent_items"].map(lambda r: len(_as_list(r))).max()))
    return longest
