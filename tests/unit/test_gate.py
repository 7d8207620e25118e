"""Promotion gate decisions and their reasons."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.artifacts import Evaluation
from pipeline.config import GateConfig
from training.gate import decide


def _evaluation(ndcg: float, popularity: float = 0.10, data_version: str = "v1", protocol: str = "temporal"):
    return Evaluation(
        model="bpr",
        metrics_path=Path("m.json"),
        leaderboard_path=Path("l.md"),
        metrics={"ndcg@10": ndcg},
        baselines={"popularity": {"ndcg@10": popularity}, "itemknn": {"ndcg@10": 0.12}},
        protocol=protocol,
        data_version=data_version,
    )


def _champion(tmp_path: Path, ndcg: float, data_version: str = "v1", protocol: str = "temporal") -> Path:
    path = tmp_path / "champion.json"
    path.write_text(
        json.dumps(
            {
                "model": "sasrec",
                "metrics": {"ndcg@10": ndcg},
                "data_version": data_version,
                "protocol": protocol,
                "bento_tag": "recforge_sasrec:abc",
            }
        )
    )
    return path


def test_rejects_candidate_below_popularity_lift(tmp_path: Path) -> None:
    decision = decide(_evaluation(0.104), GateConfig(min_lift_over_popularity=1.05), tmp_path / "none.json")
    assert not decision.promoted
    assert "0.1040" in decision.reason and "0.1050" in decision.reason
    assert decision.popularity_ndcg10 == 0.10 and decision.champion_ndcg10 is None


def test_promotes_without_champion(tmp_path: Path) -> None:
    decision = decide(_evaluation(0.2), GateConfig(), tmp_path / "none.json")
    assert decision.promoted and "no champion" in decision.reason
    assert decision.candidate_ndcg10 == 0.2


def test_champion_comparison_with_tolerance(tmp_path: Path) -> None:
    path = _champion(tmp_path, 0.21)
    assert not decide(_evaluation(0.20), GateConfig(champion_tolerance=0.0), path).promoted
    decision = decide(_evaluation(0.20), GateConfig(champion_tolerance=0.02), path)
    assert decision.promoted and decision.champion_ndcg10 == 0.21 and "0.1900" in decision.reason
    assert decide(_evaluation(0.22), GateConfig(), path).promoted


def test_champion_on_other_data_is_not_comparable(tmp_path: Path) -> None:
    path = _champion(tmp_path, 0.50, data_version="v0")
    decision = decide(_evaluation(0.20), GateConfig(), path)
    assert decision.promoted
    assert "data_version=v0" in decision.reason and "not comparable" in decision.reason
    other_protocol = decide(
        _evaluation(0.20), GateConfig(), _champion(tmp_path, 0.5, protocol="leave_last_out")
    )
    assert other_protocol.promoted and "protocol=leave_last_out" in other_protocol.reason


def test_popularity_rule_applies_even_when_champion_is_incomparable(tmp_path: Path) -> None:
    path = _champion(tmp_path, 0.01, data_version="v0")
    assert not decide(_evaluation(0.09), GateConfig(), path).promoted
