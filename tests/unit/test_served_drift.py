"""Prediction drift of the served answers: equal windows of the champion's logged answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring.served_drift import served_prediction_drift, served_prediction_frame, served_windows

POPULARITY = {f"i{n}": float(n) for n in range(200)}  # i0 never trained, i199 the most popular


def _answers(n: int, items_from: int, start: str, tag: str = "A", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "model_tag": tag,
            "served_at": pd.date_range(start, periods=n, freq="min", tz="UTC"),
            "items": [[f"i{v}" for v in rng.integers(items_from, items_from + 50, 10)] for _ in range(n)],
            "scores": [sorted(rng.random(10), reverse=True) for _ in range(n)],
            "strategy": rng.choice(["known_user", "history"], n),
            "fallback": False,
            "history_used": rng.integers(0, 20, n),
        }
    )


def test_answer_columns_by_hand() -> None:
    answers = pd.DataFrame(
        {
            "items": [["i0", "i3"]],
            "scores": [[0.9, 0.1]],
            "strategy": ["history"],
            "fallback": [False],
            "history_used": [4],
        }  # fmt: skip
    )
    row = served_prediction_frame(answers, POPULARITY).iloc[0]
    assert row["top_score"] == 0.9 and row["untrained_share"] == 0.5
    assert row["mean_log_popularity"] == np.log1p(3.0) / 2  # log1p(0) = 0 for the untrained item


def test_same_behaviour_is_no_drift_and_a_broken_feature_store_is() -> None:
    calm = pd.concat([_answers(300, 100, "2026-01-01", seed=1), _answers(300, 100, "2026-01-02", seed=2)])
    report = served_prediction_drift(calm, "A", POPULARITY, 300, 0.5, {}, [])
    assert report is not None and report.share <= 0.5, report.distances

    # Lists moving to the tail: the popularity columns drift.
    tail = pd.concat([_answers(300, 100, "2026-01-01", seed=1), _answers(300, 0, "2026-01-02", seed=2)])
    report = served_prediction_drift(tail, "A", POPULARITY, 300, 0.5, {}, [])
    assert {"mean_log_popularity", "untrained_share"} <= set(report.drifted)

    # The feature store went down: every answer is a popularity fallback without history.
    down = _answers(300, 150, "2026-01-02", seed=2).assign(
        strategy="popularity", fallback=True, history_used=0
    )
    report = served_prediction_drift(
        pd.concat([_answers(300, 100, "2026-01-01", seed=1), down]), "A", POPULARITY, 300, 0.5, {}, []
    )
    assert report.share > 0.5 and {"strategy", "fallback", "history_used"} <= set(report.drifted), (
        report.distances
    )


def test_windows_need_enough_answers_of_the_model() -> None:
    answers = pd.concat([_answers(150, 100, "2026-01-01"), _answers(400, 100, "2026-01-02", tag="B")])
    previous, newest = served_windows(answers, "A", 70)
    assert len(previous) == len(newest) == 70 and newest["model_tag"].eq("A").all()
    assert previous["served_at"].max() < newest["served_at"].min()
    assert served_prediction_drift(answers, "A", POPULARITY, 100, 0.5, {}, []) is None  # 150 < 2 x 100
