"""Promotion gate: does the candidate deserve to replace the serving champion?

Rules (numbers from the Evaluation and the champion pointer, never re-computed here):
1. candidate NDCG@10 >= Popularity NDCG@10 x ``min_lift_over_popularity`` (beats the trivial baseline
   by a margin on the same split and users);
2. and either there is no champion, or the champion was evaluated on a different data version or
   split protocol (its numbers are not comparable, so the candidate that passed rule 1 replaces it),
   or candidate NDCG@10 >= champion NDCG@10 - ``champion_tolerance``.
The package stage writes the champion file; this stage only reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.artifacts import Evaluation, GateDecision
from pipeline.config import GateConfig

METRIC = "ndcg@10"


def read_champion(champion_path: Path) -> dict[str, Any] | None:
    """The champion pointer, or None when there is none yet."""
    path = Path(champion_path)
    if not path.exists():
        return None
    champion = json.loads(path.read_text())
    if METRIC not in champion.get("metrics", {}):
        raise ValueError(
            f"{path}: champion pointer lacks metrics[{METRIC!r}]; it is written by the package stage"
        )
    return champion


def decide(evaluation: Evaluation, cfg: GateConfig, champion_path: Path) -> GateDecision:
    candidate = float(evaluation.metrics[METRIC])
    popularity = float(evaluation.baselines["popularity"][METRIC])
    required = popularity * cfg.min_lift_over_popularity
    champion = read_champion(champion_path)
    champion_score = float(champion["metrics"][METRIC]) if champion else None

    def decision(promoted: bool, reason: str) -> GateDecision:
        return GateDecision(
            model=evaluation.model,
            promoted=promoted,
            reason=reason,
            candidate_ndcg10=candidate,
            popularity_ndcg10=popularity,
            champion_ndcg10=champion_score,
        )

    if candidate < required:
        return decision(
            False,
            f"candidate {evaluation.model} NDCG@10 {candidate:.4f} < popularity {popularity:.4f} "
            f"x {cfg.min_lift_over_popularity:g} = {required:.4f}",
        )
    passed = (
        f"candidate {evaluation.model} NDCG@10 {candidate:.4f} >= popularity {popularity:.4f} "
        f"x {cfg.min_lift_over_popularity:g} = {required:.4f}"
    )
    if champion is None:
        return decision(True, f"{passed}; no champion yet")
    described = f"champion {champion.get('model')} ({champion.get('bento_tag')})"
    if (champion.get("data_version"), champion.get("protocol")) != (
        evaluation.data_version,
        evaluation.protocol,
    ):
        return decision(
            True,
            (
                f"{passed}; {described} was evaluated on data_version={champion.get('data_version')} "
                f"protocol={champion.get('protocol')}, candidate on data_version={evaluation.data_version} "
                f"protocol={evaluation.protocol}: not comparable (champion NDCG@10 {champion_score:.4f}), "
                "candidate replaces it"
            ),
        )
    floor = champion_score - cfg.champion_tolerance
    if candidate >= floor:
        return decision(
            True,
            f"{passed}; >= {described} NDCG@10 {champion_score:.4f} - tolerance "
            f"{cfg.champion_tolerance:g} = {floor:.4f}",
        )
    return decision(
        False,
        f"{passed}; but < {described} NDCG@10 {champion_score:.4f} - tolerance "
        f"{cfg.champion_tolerance:g} = {floor:.4f}",
    )
