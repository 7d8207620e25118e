"""Session-based protocol on a hand-built timeline: the cut by inactivity gap, the test sessions,
the (prefix, next item) examples, and the metrics against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from training.session_eval import cut_sessions, evaluate_next_items, first_test_start, next_item_examples

T0 = pd.Timestamp("2026-01-01", tz="UTC")
GAP = pd.Timedelta(minutes=30)


def _timeline() -> pd.DataFrame:
    rows = [  # (user, item, minutes after T0)
        ("a", 1, 0),
        ("a", 2, 10),
        ("a", 3, 20),
        ("a", 4, 120),  # 100 min after the previous: a new session
        ("a", 5, 125),
        ("b", 2, 30),
        ("b", 4, 60),  # exactly the gap: the same session
        ("b", 1, 100),  # 40 min: a new session
        ("b", 3, 101),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "minutes"])
    frame["event_timestamp"] = T0 + pd.to_timedelta(frame.pop("minutes"), unit="min")
    frame["event_id"] = np.arange(len(frame))
    return frame.sample(frac=1.0, random_state=0)  # the cut must not depend on the input order


def _items(cut: pd.DataFrame) -> dict[int, list[int]]:
    return {int(s): g["item_id"].tolist() for s, g in cut.groupby("session")}


def test_sessions_are_cut_at_gaps_longer_than_the_threshold_and_numbered_by_start() -> None:
    cut = cut_sessions(_timeline(), GAP)
    assert _items(cut) == {0: [1, 2, 3], 1: [2, 4], 2: [1, 3], 3: [4, 5]}
    assert _items(cut_sessions(_timeline(), pd.Timedelta(minutes=29))) == {
        0: [1, 2, 3],
        1: [2],
        2: [4],
        3: [1, 3],
        4: [4, 5],
    }
    # The last half of the 4 sessions by start time: b's second session (minute 100) and a's (120).
    assert first_test_start(cut, 0.5) == T0 + pd.Timedelta(minutes=100)


def test_every_next_item_of_a_test_session_is_predicted_from_its_prefix() -> None:
    cut = cut_sessions(_timeline(), GAP)
    test = cut[cut["session_start"] >= first_test_start(cut, 0.5)]
    rows = {str(i): i for i in range(1, 6)}
    assert next_item_examples(test, rows) == ([[1], [4]], [3, 5])
    assert next_item_examples(cut[cut["session"] == 0], rows) == ([[1], [1, 2]], [2, 3])
    # Item 5 had no training interaction: a's session keeps one item and gives no example.
    known = np.array([False, True, True, True, True, False])
    assert next_item_examples(test, rows, known) == ([[1]], [3])


def test_metrics_match_hand_computation() -> None:
    base = torch.tensor([-torch.inf, 0.5, 0.1, 0.4, 0.9, 0.2])  # items 1..5
    seen: list[torch.Tensor] = []

    def score(users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        assert bool((users == -1).all())  # anonymous: the prefix only
        seen.append(history)
        return base.expand(users.shape[0], -1).clone()

    got = evaluate_next_items(score, [[1], [4]], [3, 5], n_items=5, history_length=3, ks=(1, 3))
    assert torch.equal(seen[0], torch.tensor([[0, 0, 1], [0, 0, 4]]))
    # Prefix [1]: 4, 3, 5, 2 -> target 3 at rank 2. Prefix [4] (excluded): 1, 3, 5, 2 -> 5 at rank 3.
    assert got["hr@1"] == 0.0 and got["ndcg@1"] == 0.0 and got["mrr@1"] == 0.0
    assert got["hr@3"] == pytest.approx(1.0)
    assert got["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # Items excluded everywhere are never ranked: without item 4, target 3 comes first.
    excluded = torch.tensor([False, False, False, False, True, False])
    alone = evaluate_next_items(score, [[1]], [3], n_items=5, history_length=3, ks=(1,), excluded=excluded)
    assert alone == {"hr@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0}
