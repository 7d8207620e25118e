"""Prediction drift of what was actually served: the champion's logged answers, not a re-scoring.

The served log (``serving.served_log``) holds every answer. The newest ``window`` answers of the
champion are compared with the ``window`` answers just before them (equal sizes, in serving order),
one row per answer:

- ``strategy`` and ``fallback``: how the user was represented (known, history, attributes, popularity);
- ``history_used``: how much online history the answer read;
- ``top_score``: the first item's score;
- ``mean_log_popularity``: the mean log training count of the listed items (what the model pushes:
  head or tail);
- ``untrained_share``: the share of listed items without a training interaction.

Each column against the other window, as the data-drift report does (``monitoring.reports``), with
the prediction-drift share threshold. Too few answers: no report (and the monitor says so).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

NUMERICAL = ["history_used", "top_score", "mean_log_popularity", "untrained_share"]
CATEGORICAL = ["strategy", "fallback"]


def served_prediction_frame(answers: pd.DataFrame, popularity: dict[str, float]) -> pd.DataFrame:
    """One row per logged answer, the columns above; ``popularity``: item id -> training count."""

    def listed(items: Any) -> tuple[float, float]:
        counts = np.array([popularity.get(str(i), 0.0) for i in list(items)], dtype=float)
        if not len(counts):
            return 0.0, 0.0
        return float(np.log1p(counts).mean()), float((counts == 0).mean())

    described = [listed(items) for items in answers["items"]]
    return pd.DataFrame(
        {
            "strategy": answers["strategy"].astype(str).to_numpy(),
            "fallback": answers["fallback"].astype(str).to_numpy(),
            "history_used": answers["history_used"].astype(float).to_numpy(),
            "top_score": [float(list(s)[0]) if len(s) else 0.0 for s in answers["scores"]],
            "mean_log_popularity": [d[0] for d in described],
            "untrained_share": [d[1] for d in described],
        }
    )


def served_windows(
    served: pd.DataFrame, model_tag: str, window: int
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(previous, newest) ``window`` answers of ``model_tag``, or None when it served fewer than 2 x window."""
    mine = served[served["model_tag"] == model_tag].sort_values("served_at", kind="stable")
    if len(mine) < 2 * window:
        return None
    return mine.iloc[-2 * window : -window], mine.iloc[-window:]


def served_prediction_drift(
    served: pd.DataFrame,
    model_tag: str,
    popularity: dict[str, float],
    window: int,
    drift_share: float,
    metadata: dict[str, str],
    tags: list[str],
) -> Any:
    """The ``DriftReport`` of the newest window of served answers against the previous one, or None."""
    from monitoring.reports import column_drift_report
    from monitoring.windows import usable_columns

    windows = served_windows(served, model_tag, window)
    if windows is None:
        return None
    reference, current = (served_prediction_frame(w, popularity) for w in windows)
    numerical, categorical = usable_columns(reference, current, NUMERICAL, CATEGORICAL)
    bounds = {
        "reference_window": f"{windows[0]['served_at'].min()} .. {windows[0]['served_at'].max()}",
        "current_window": f"{windows[1]['served_at'].min()} .. {windows[1]['served_at'].max()}",
        "answers_per_window": str(window),
    }
    return column_drift_report(
        reference, current, numerical, categorical, drift_share, {**metadata, **bounds}, tags
    )
