"""The one batched scorer (training.scoring) and the three places that use it agree.

The service, the drift monitor and the evaluator's cross-split judge all score an artifact through
``ArtifactScorer``; these tests pin its rules (who is known, alignment, exclusion, top-k) on a real
ItemKNN artifact and check that the service and the drift monitor return the same top-k for the same
user state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from monitoring.windows import item_descriptions, recommendations_at_window_end
from pipeline.schema import DataSchema
from serving.recommender import HISTORY, KNOWN_USER, load_recommender
from training.artifact import load_model_artifact, save_model_artifact
from training.models import build_model
from training.scoring import UNKNOWN_USER, ArtifactScorer, finite_top_k, top_k

ITEM_IDS = [f"i{j}" for j in range(1, 9)]
# u0..u3 trained; "u_valid_only" is in the split's index but all its events fell outside training.
USER_IDS = ["u0", "u1", "u2", "u3", "u_valid_only"]
ROWS = {0: [1, 2, 3], 1: [1, 2, 4], 2: [5, 6, 7], 3: [5, 6, 8]}


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows, cols = zip(*[(u, i) for u, items in ROWS.items() for i in items], strict=True)
    train = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(USER_IDS), len(ITEM_IDS) + 1)
    )
    module = build_model("itemknn", len(USER_IDS), len(ITEM_IDS), k=4).fit(train)
    out = tmp_path_factory.mktemp("scoring") / "itemknn"
    return save_model_artifact(out, "itemknn", module, {"k": 4}, ITEM_IDS, USER_IDS, train)


@pytest.fixture(scope="module")
def scorer(artifact_dir: Path) -> ArtifactScorer:
    return ArtifactScorer(load_model_artifact(artifact_dir), history_length=3)


def test_a_user_is_known_only_if_the_artifact_trained_on_them(scorer: ArtifactScorer) -> None:
    assert scorer.user_row("u1") == 1
    assert scorer.user_row("u_valid_only") == UNKNOWN_USER  # in the index, untrained row
    assert scorer.user_row("stranger") == UNKNOWN_USER
    assert scorer.user_rows(["u3", "stranger", "u0"]).tolist() == [3, UNKNOWN_USER, 0]


def test_histories_keep_known_items_right_aligned(scorer: ArtifactScorer) -> None:
    assert scorer.item_rows(["i2", "nope", "i5", 7]) == [2, 5]
    aligned = scorer.align([[1, 2, 3, 4], [5], []])
    assert aligned.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_exclusion_removes_training_items_history_and_padding(scorer: ArtifactScorer) -> None:
    rows = np.array([0, UNKNOWN_USER])
    histories = [[8], [5, 6]]
    scores = scorer.exclude(scorer.scores(rows, histories), rows, histories)
    assert scores.shape == (2, len(ITEM_IDS) + 1)
    excluded_0 = {0, 1, 2, 3, 8}  # padding, u0's training items, its history item
    assert {i for i in range(9) if scores[0, i] == -torch.inf} == excluded_0
    assert {i for i in range(9) if scores[1, i] == -torch.inf} >= {0, 5, 6}
    assert torch.isfinite(scores[1, 7])  # co-occurs with 5 and 6, not excluded for a stranger


def test_top_k_is_best_first_and_finite_top_k_drops_excluded() -> None:
    scores = torch.tensor([[-torch.inf, 0.1, 0.9, -torch.inf, 0.5]])
    values, indices = top_k(scores, 3)
    assert indices.tolist() == [[2, 4, 1]] and values[0, 0] == pytest.approx(0.9)
    values, indices = finite_top_k(scores[0], 10)
    assert indices.tolist() == [2, 4, 1] and torch.isfinite(values).all()


def test_service_and_drift_monitor_recommend_the_same_items(
    artifact_dir: Path, scorer: ArtifactScorer
) -> None:
    """Same user state -> same top-k in the service and in the drift monitor's prediction window."""
    rec = load_recommender(artifact_dir)
    rec_scorer = ArtifactScorer(rec.artifact, history_length=rec.history_length)
    # Drift: the state after the window's last event is recent_items + that event's item.
    window = pd.DataFrame(
        {
            "user_id": ["u0", "u_valid_only", "stranger"],
            "item_id": ["i4", "i6", "i1"],
            "recent_items": [["i5"], ["i5"], []],
        }
    )
    schema = DataSchema.model_validate({"name": "ids_only"})
    items = item_descriptions(window, rec_scorer, schema)
    drift_recs = recommendations_at_window_end(rec_scorer, window, max_users=10, items=items)
    for user, history in (("u0", ["i5", "i4"]), ("u_valid_only", ["i5", "i6"]), ("stranger", ["i1"])):
        served = rec.recommend(user, history, k=10)
        monitored = drift_recs[drift_recs["user_id"] == user].sort_values("rank")
        assert [item.item_id for item in served.items] == monitored["item_id"].tolist(), user
        assert [item.score for item in served.items] == pytest.approx(monitored["score"].tolist())
    # The index-only user is served from its history, like a stranger, not from an untrained row.
    assert rec.recommend("u_valid_only", ["i5"], k=3).strategy == HISTORY
    assert rec.recommend("u0", ["i5"], k=3).strategy == KNOWN_USER
