"""Drift monitoring on small synthetic timelines, with real Evidently reports and a real ItemKNN artifact.

The synthetic builders (events -> point-in-time examples -> temporal split -> model artifact) live here,
not in conftest.py, because only the monitoring tests need them; ``build_split`` and
``build_itemknn_artifact`` also serve ad-hoc timing scripts (e.g. run_drift on MovieLens-100K).
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.artifacts import Split
from pipeline.config import MonitoringConfig
from training.artifact import save_model_artifact
from training.models import build_model

HISTORY_LENGTH = 20
GENRES = ["Action", "Comedy", "Drama", "Film-Noir", "Horror"]
OCCUPATIONS = ["student", "engineer", "artist", "retired", "writer"]


# ---------------------------------------------------------------------------------------------- builders


def examples_from_events(
    events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, history_length: int = HISTORY_LENGTH
) -> pd.DataFrame:
    """Examples with the architecture.md schema; aggregates use only events strictly before each event.

    A plain pass in time order: slow for millions of rows, fine for ML-100K and tests.
    """
    events = events.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    user_n: dict[str, int] = defaultdict(int)
    user_sum: dict[str, float] = defaultdict(float)
    item_n: dict[str, int] = defaultdict(int)
    item_sum: dict[str, float] = defaultdict(float)
    recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=history_length))
    cols: dict[str, list] = defaultdict(list)
    for user, item, rating in zip(events["user_id"], events["item_id"], events["rating"], strict=True):
        cols["user_interaction_count"].append(user_n[user])
        cols["user_mean_rating"].append(user_sum[user] / user_n[user] if user_n[user] else np.nan)
        cols["item_interaction_count"].append(item_n[item])
        cols["item_mean_rating"].append(item_sum[item] / item_n[item] if item_n[item] else np.nan)
        cols["recent_items"].append(list(recent[user]))
        user_n[user] += 1
        user_sum[user] += rating
        item_n[item] += 1
        item_sum[item] += rating
        recent[user].append(item)
    out = pd.DataFrame(
        {
            "event_id": np.arange(len(events), dtype=np.int64),
            "user_id": events["user_id"].astype(str),
            "item_id": events["item_id"].astype(str),
            "event_timestamp": pd.to_datetime(events["timestamp"], unit="s", utc=True),
            "rating": events["rating"].astype(float),
        }
    )
    out = out.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    for name, values in cols.items():
        out[name] = values
    out["user_interaction_count"] = out["user_interaction_count"].astype("int64")
    out["item_interaction_count"] = out["item_interaction_count"].astype("int64")
    return out.sort_values("event_id").reset_index(drop=True)


def build_split(
    examples: pd.DataFrame, out: Path, valid_share: float = 0.1, test_share: float = 0.1
) -> Split:
    """Temporal split written as Parquet + a ``Split`` manifest (the index covers every id seen)."""
    out.mkdir(parents=True, exist_ok=True)
    ordered = examples.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    n = len(ordered)
    n_test, n_valid = int(n * test_share), int(n * valid_share)
    parts = {
        "train": ordered.iloc[: n - n_test - n_valid],
        "valid": ordered.iloc[n - n_test - n_valid : n - n_test],
        "test": ordered.iloc[n - n_test :],
    }
    for name, frame in parts.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    item_ids = sorted(ordered["item_id"].unique().tolist())
    user_ids = sorted(ordered["user_id"].unique().tolist())
    (out / "item_ids.json").write_text(json.dumps(item_ids))
    (out / "user_ids.json").write_text(json.dumps(user_ids))
    return Split(
        data_version="synthetic",
        protocol="temporal",
        seed=0,
        dir=out,
        train=out / "train.parquet",
        valid=out / "valid.parquet",
        test=out / "test.parquet",
        item_ids=out / "item_ids.json",
        user_ids=out / "user_ids.json",
        counts={name: len(frame) for name, frame in parts.items()},
    )


def build_itemknn_artifact(split: Split, out: Path, k: int = 50) -> Path:
    """Fit ItemKNN on the split's train part and save it as a model artifact."""
    item_ids = json.loads(Path(split.item_ids).read_text())
    user_ids = json.loads(Path(split.user_ids).read_text())
    item_index = {item: i + 1 for i, item in enumerate(item_ids)}
    user_index = {user: u for u, user in enumerate(user_ids)}
    train = pd.read_parquet(split.train, columns=["user_id", "item_id"])
    rows = train["user_id"].map(user_index).to_numpy()
    cols = train["item_id"].map(item_index).to_numpy()
    matrix = sp.csr_matrix(
        (np.ones(len(train), dtype=np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids) + 1)
    )
    matrix.data[:] = 1.0
    model = build_model("itemknn", len(user_ids), len(item_ids), k=k).fit(matrix)
    return save_model_artifact(out, "itemknn", model, {"k": k}, item_ids, user_ids, matrix)


def synthetic_events(
    seed: int,
    shifted: bool,
    n_users: int = 100,
    n_niche_users: int = 20,
    n_items: int = 200,
    n_events: int = 3000,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, users, items): a timeline with a mainstream and a niche audience.

    Niche users are older retired women who watch old Film-Noir titles at night and rate them low.
    Stationary: niche events are 8% of the traffic throughout. Shifted: from 70% of the timeline on,
    all traffic is niche (an audience-mix change: every feature moves, and so do the recommendations,
    because the model learned from the few niche users of the training window what they like).
    """
    rng = np.random.default_rng(seed)
    n_all = n_users + n_niche_users
    niche_user = np.arange(n_all) >= n_users
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_all)],
            "age": pd.array(
                np.where(niche_user, rng.integers(60, 80, n_all), rng.integers(18, 45, n_all)), "Int64"
            ),
            "gender": np.where(niche_user, "F", rng.choice(["M", "F"], n_all, p=[0.7, 0.3])),
            "occupation": np.where(niche_user, "retired", rng.choice(OCCUPATIONS[:3], n_all)),
        }
    )
    n_niche_items = 40
    niche_item = np.arange(n_items) >= n_items - n_niche_items
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"Movie {i}" for i in range(n_items)],
            "release_year": pd.array(
                np.where(niche_item, rng.integers(1940, 1955, n_items), rng.integers(1985, 2000, n_items)),
                "Int64",
            ),
            "genres": [
                ["Film-Noir"] if niche_item[i] else [GENRES[i % 3], GENRES[(i + 1) % 3]]
                for i in range(n_items)
            ],
        }
    )
    # Zipf-like popularity within each audience's catalogue; mainstream users have one of two taste
    # clusters, so ItemKNN has signal to learn.
    main_items, niche_items = np.flatnonzero(~niche_item), np.flatnonzero(niche_item)
    main_w = 1.0 / np.arange(1, len(main_items) + 1) ** 0.8
    probs = [main_w * np.where(main_items % 2 == c, 3.0, 1.0) for c in (0, 1)]
    probs = [p / p.sum() for p in probs]
    niche_w = 1.0 / np.arange(1, n_niche_items + 1) ** 0.5
    niche_w /= niche_w.sum()
    t = np.sort(rng.uniform(0, 86400 * 60, n_events)).astype(np.int64)
    late = np.arange(n_events) >= int(n_events * 0.7)
    is_niche = (rng.random(n_events) < 0.08) | (late & shifted)
    u = np.where(is_niche, rng.integers(n_users, n_all, n_events), rng.integers(0, n_users, n_events))
    i = np.where(
        is_niche,
        rng.choice(niche_items, n_events, p=niche_w),
        np.where(
            u % 2 == 0,
            rng.choice(main_items, n_events, p=probs[0]),
            rng.choice(main_items, n_events, p=probs[1]),
        ),
    )
    r = np.where(is_niche, rng.choice([1.0, 2.0, 3.0], n_events), rng.integers(1, 6, n_events).astype(float))
    # Niche users watch at night (00:00-04:00 UTC), the others at any time.
    t = np.where(is_niche, (t // 86400) * 86400 + rng.integers(0, 4 * 3600, n_events), t)
    events = pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in u],
            "item_id": [f"i{x}" for x in i],
            "rating": r,
            "timestamp": t + 1_600_000_000,
        }
    )
    # One event per (user, item): a user rates a movie once, as in MovieLens.
    events = events.drop_duplicates(["user_id", "item_id"], keep="first")
    return events, users, items


def _scenario(tmp_path: Path, shifted: bool) -> tuple[Split, Path]:
    events, users, items = synthetic_events(seed=7, shifted=shifted)
    examples = examples_from_events(events, users, items)
    split = build_split(examples, tmp_path / "split")
    model_dir = build_itemknn_artifact(split, tmp_path / "model")
    return split, model_dir


# ------------------------------------------------------------------------------------------------- tests

# The synthetic windows hold far fewer events than the windows the default thresholds were calibrated
# on (bench/bench_drift.py), so their distances are noisier and the tests set wider thresholds.
CFG = MonitoringConfig(
    drift_share_threshold=0.5,
    min_current_ndcg10=0.0,
    current_window_share=0.2,
    max_users=200,
    num_drift_threshold=0.2,
    cat_drift_threshold=0.2,
)
CUMULATIVE = {
    "user_interaction_count",
    "item_interaction_count",
    "history_length",
    "user_mean_rating",
    "item_mean_rating",
}


@pytest.fixture(scope="module")
def stationary(tmp_path_factory: pytest.TempPathFactory):
    from monitoring.drift import run_drift

    tmp = tmp_path_factory.mktemp("stationary")
    split, model_dir = _scenario(tmp, shifted=False)
    result = run_drift(split, model_dir, CFG, tmp / "out", tmp / "evidently", "recforge-test")
    return split, model_dir, tmp, result


@pytest.mark.slow  # the drift monitor end to end: Evidently reports and workspace
def test_stationary_timeline_reports_no_drift(stationary) -> None:
    _, _, _, result = stationary
    assert result.drift_detected is False, result.reasons
    assert result.reasons == []
    assert result.data_drift_share == 0.0 and result.data_drifted_columns == []
    assert result.prediction_drift_share <= CFG.drift_share_threshold
    assert result.verdict == "no drift" and result.action == "nothing to do"
    assert {"rating", "age", "gender", "occupation", "log_item_window_events", "new_user"} <= set(
        result.data_columns
    )
    # Cumulative features grow with time: they are not tested for drift.
    assert not CUMULATIVE & set(result.data_columns)
    assert result.reference_rows == result.current_rows
    assert {"score", "item_popularity"} <= set(result.prediction_columns)
    # Ranking quality was measured by Evidently on real recommendations of the current window.
    assert result.ranking_users > 0
    assert 0.0 < result.current_ndcg10 <= 1.0
    assert {"ndcg@10", "recall@10", "hitrate@10", "novelty@10"} <= set(result.ranking_metrics)


@pytest.mark.slow
def test_reports_json_and_workspace_runs_are_written(stationary) -> None:
    from evidently.ui.workspace import Workspace

    from monitoring.drift import DriftResult

    _, _, tmp, result = stationary
    for path in (
        result.data_drift_html,
        result.data_drift_json,
        result.prediction_drift_html,
        result.prediction_drift_json,
        result.ranking_html,
        result.ranking_json,
    ):
        assert path is not None and path.exists() and path.stat().st_size > 0, path
    payload = json.loads(result.data_drift_json.read_text())
    assert any(m["config"]["type"].endswith("DriftedColumnsCount") for m in payload["metrics"])
    # drift.json round-trips through the Manifest mixin.
    loaded = DriftResult.load(tmp / "out" / "drift.json")
    assert loaded == result
    assert isinstance(loaded.ranking_html, Path)
    # The workspace holds one project of that name with the three runs.
    ws = Workspace(str(tmp / "evidently"))
    projects = ws.search_project("recforge-test")
    assert [str(p.id) for p in projects] == [result.project_id]
    runs = {str(r) for r in ws.list_runs(result.project_id)}
    assert set(result.run_ids) == {"data_drift", "prediction_drift", "ranking"}
    assert set(result.run_ids.values()) <= runs


@pytest.mark.slow
def test_second_run_reuses_the_project_and_a_quality_floor_fires(stationary) -> None:
    from monitoring.drift import run_drift

    split, model_dir, tmp, first = stationary
    strict = CFG.model_copy(update={"min_current_ndcg10": 0.99})
    result = run_drift(split, model_dir, strict, tmp / "out2", tmp / "evidently", "recforge-test")
    assert result.project_id == first.project_id
    assert result.drift_detected is True
    assert len(result.reasons) == 1 and result.reasons[0].startswith("ranking quality: ndcg@10")


@pytest.mark.slow
def test_shifted_current_window_is_detected(tmp_path: Path) -> None:
    from monitoring.drift import run_drift

    split, model_dir = _scenario(tmp_path, shifted=True)
    result = run_drift(split, model_dir, CFG, tmp_path / "out", tmp_path / "evidently", "recforge-test")
    assert result.drift_detected is True
    assert result.data_drift_share > CFG.data_drift_share_threshold
    assert any(r.startswith("data drift:") for r in result.reasons)
    assert result.verdict.startswith("data drift in ") and "rating" in result.verdict
    assert result.action.endswith("retrain on recent data (requested)")
    assert {"age", "gender", "occupation", "rating", "hour_of_day", "primary_genres"} <= set(
        result.data_drifted_columns
    )
    # What the model serves moved too: the niche audience gets different items than the training users.
    assert result.prediction_drifted_columns
    assert (tmp_path / "out" / "drift.json").exists()


def test_windows_are_equal_consecutive_and_current_is_newest(tmp_path: Path) -> None:
    from monitoring.drift import select_windows

    split, _ = _scenario(tmp_path, shifted=False)
    windows = select_windows(split, 0.2)
    reference, current, earlier = windows.reference, windows.current, windows.earlier
    total = sum(split.counts.values())
    assert len(current) == len(reference) == int(np.ceil(0.2 * total))
    assert not set(reference["event_id"]) & set(current["event_id"])
    # Consecutive: reference ends where current starts, and everything else came before reference.
    assert reference["event_timestamp"].max() <= current["event_timestamp"].min()
    assert len(earlier) == total - 2 * len(current)
    with pytest.raises(ValueError, match="two windows"):
        select_windows(split, 0.6)


@pytest.mark.slow
def test_evidently_ndcg_matches_training_metrics(stationary) -> None:
    """The rows handed to Evidently reproduce the project's own full-ranking NDCG@10 definition."""
    import torch

    from monitoring.drift import select_windows
    from training.artifact import load_model_artifact
    from training.metrics import per_user_metrics

    split, model_dir, _, result = stationary
    artifact = load_model_artifact(model_dir)
    current = select_windows(split, CFG.current_window_share).current
    first = current.drop_duplicates("user_id", keep="first").set_index("user_id")
    seen_counts = np.diff(artifact.seen.indptr)
    users, histories = [], []
    for user, row in first.iterrows():
        history = [artifact.item_index[i] for i in row["recent_items"] if i in artifact.item_index]
        u = artifact.user_index.get(user, -1)
        trained = u >= 0 and seen_counts[u] > 0
        if history or trained:
            users.append((user, u if trained else -1))
            histories.append(history)
    assert len(users) == result.ranking_users <= CFG.max_users
    n = artifact.n_items + 1
    history_t = torch.zeros(len(users), HISTORY_LENGTH, dtype=torch.long)
    truth = torch.zeros(len(users), n, dtype=torch.bool)
    exclude = torch.zeros(len(users), n, dtype=torch.bool)
    for row, ((user, u), history) in enumerate(zip(users, histories, strict=True)):
        if history:
            history_t[row, -len(history[-HISTORY_LENGTH:]) :] = torch.tensor(history[-HISTORY_LENGTH:])
        exclude[row, history] = True
        if u >= 0:
            exclude[row, artifact.seen[u].indices] = True
        items = current.loc[current["user_id"] == user, "item_id"]
        truth[row, [artifact.item_index[i] for i in items if i in artifact.item_index]] = True
    scores = artifact.score(torch.tensor([u for _, u in users]), history_t)
    metrics, _ = per_user_metrics(scores, truth, exclude, [10])
    assert result.current_ndcg10 == pytest.approx(metrics["ndcg@10"].mean().item(), abs=1e-6)
    assert result.ranking_metrics["recall@10"] == pytest.approx(metrics["recall@10"].mean().item(), abs=1e-6)


@pytest.mark.slow
def test_reports_carry_the_verdict_in_the_workspace(stationary) -> None:
    from evidently.ui.workspace import Workspace

    _, _, tmp, result = stationary
    ws = Workspace(str(tmp / "evidently"))
    run = ws.get_run(result.project_id, result.run_ids["data_drift"])
    assert run.metadata["verdict"] == result.verdict == "no drift"
    assert run.metadata["action"] == "nothing to do"
    assert run.metadata["reference_window"].endswith(f"({result.reference_rows} events)")
    assert run.metadata["current_window"].startswith(result.current_window[0])
    assert "no-drift" in run.tags


# ------------------------------------------------------------------ the data-drift decision, no model


def _session_halves(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two disjoint halves of one stationary timeline, split by whole (user, day) sessions, equal size."""
    events, users, items = synthetic_events(seed=seed, shifted=False)
    examples = examples_from_events(events, users, items)
    session = examples["user_id"] + "@" + examples["event_timestamp"].dt.strftime("%Y-%m-%d")
    rng = np.random.default_rng(seed)
    sides = pd.Series(rng.random(session.nunique()) < 0.5, index=session.unique())
    in_a = session.map(sides).to_numpy()
    a, b = examples[in_a], examples[~in_a]
    size = min(len(a), len(b))
    return a.iloc[:size].reset_index(drop=True), b.iloc[:size].reset_index(drop=True)


def _data_decision(a: pd.DataFrame, b: pd.DataFrame, cfg: MonitoringConfig):
    from monitoring.drift import Checks, data_thresholds, decide
    from monitoring.reports import DriftReport, column_drift_report
    from monitoring.windows import data_drift_frame, drift_columns, missing_shares, usable_columns
    from pipeline.schema import DataSchema

    schema = DataSchema.load(Path(__file__).resolve().parents[2] / "configs" / "schemas" / "movielens.yaml")
    none = pd.Series([], dtype=object)
    ref, cur = data_drift_frame(a, schema, none, none), data_drift_frame(b, schema, none, none)
    num, cat = usable_columns(ref, cur, *drift_columns(schema))
    data = column_drift_report(
        ref,
        cur,
        num,
        cat,
        cfg.data_drift_share_threshold,
        {},
        [],
        cfg.num_drift_threshold,
        cfg.cat_drift_threshold,
    )
    quiet = DriftReport(snapshot=None, columns=[], share=0.0, drifted=[], distances={})
    checks = Checks(
        data, quiet, True, 1.0, data_thresholds(num + cat, num, cfg), missing_shares(ref, cur, num + cat)
    )
    return data, decide(checks, cfg)


@pytest.mark.slow  # a real Evidently column drift report per seed
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stationary_resample_is_not_drift(seed: int) -> None:
    a, b = _session_halves(seed)
    assert len(a) == len(b)
    data, decision = _data_decision(a, b, CFG)
    assert data.drifted == [], data.distances
    assert decision.reasons == [] and decision.retrain is False
    assert (decision.verdict, decision.action) == ("no drift", "nothing to do")


@pytest.mark.slow  # a real Evidently column drift report
def test_rating_scale_shift_is_drift_naming_the_rating() -> None:
    a, b = _session_halves(1)
    data, decision = _data_decision(a, b.assign(rating=b["rating"] * 2), CFG)
    assert data.drifted == ["rating"], data.distances
    assert decision.retrain is True
    assert decision.reasons[0].startswith("data drift: 1 of ") and "rating" in decision.reasons[0]
    assert decision.verdict == "data drift in rating"
    assert "ratings moved" in decision.action and decision.action.endswith(
        "retrain on recent data (requested)"
    )


@pytest.mark.slow
def test_surge_of_light_visitors_is_drift_in_user_activity() -> None:
    """New visitors with one or two events each take a third of the window: the bulk of the activity
    distribution moves, which the log scale shows (on a raw scale the heavy users' tail hides it)."""
    a, b = _session_halves(3)
    taken = np.arange(len(b)) % 3 == 0
    visitors = [f"visitor-{i // 2}" for i in range(int(taken.sum()))]
    surge = b.assign(user_id=b["user_id"].astype(object))
    surge.loc[taken, "user_id"] = visitors
    data, decision = _data_decision(a, surge, CFG)
    assert "log_user_window_events" in data.drifted, data.distances
    assert "user activity" in decision.verdict
    assert decision.action.startswith("the audience changed")


@pytest.mark.slow
def test_broken_column_is_reported_and_holds_retraining_back() -> None:
    a, b = _session_halves(2)
    broken = b.assign(occupation=b["occupation"].where(np.arange(len(b)) % 10 == 0, None))
    _, decision = _data_decision(a, broken, CFG)
    assert decision.broken_columns == ["occupation"]
    assert decision.retrain is False
    assert any(r.startswith("broken feed: occupation is missing in 90%") for r in decision.reasons)
    assert decision.verdict.startswith("broken upstream column: occupation")
    assert decision.action.startswith("fix the upstream feed of occupation")


def test_verdict_names_what_moved_and_what_to_do() -> None:
    from monitoring.drift import Checks, decide
    from monitoring.reports import DriftReport

    def checks(drifted: list[str], ndcg: float = 0.5) -> Checks:
        columns = ["rating", "log_item_window_events", "new_user", "age", "hour_of_day"]
        data = DriftReport(None, columns, len(drifted) / len(columns), drifted, dict.fromkeys(columns, 0.3))
        quiet = DriftReport(None, [], 0.0, [], {})
        return Checks(data, quiet, True, ndcg, dict.fromkeys(columns, 0.2), {}, frozenset({"age"}))

    taste = decide(checks(["log_item_window_events", "rating"]), CFG)
    assert taste.verdict == "data drift in item popularity, rating"
    assert taste.action.startswith("the audience's taste moved; ratings moved")
    audience = decide(checks(["age", "new_user"]), CFG)
    assert audience.verdict == "data drift in age, share of new users"
    assert audience.action == "the audience changed: retrain on recent data (requested)"
    floor = CFG.model_copy(update={"min_current_ndcg10": 0.9})
    quality = decide(checks([]), floor)
    assert quality.retrain and quality.verdict == "ranking quality below the floor"
    assert decide(checks([]), CFG).verdict == "no drift"
