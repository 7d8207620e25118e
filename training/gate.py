"""Promotion gate: does the candidate deserve to replace its deployment's champion?

The deployment's key (``PipelineConfig.deployments``) fixes what a champion is judged on: data
source, split protocol and selection metric. Rules, in order:
0. the run must match its deployment's key (decided when the run started, ``RunConfig.eligible``);
   a run on another protocol, a ``sample_users`` slice or another source is never promoted there;
1. candidate metric >= Popularity's on the same split x ``min_lift_over_popularity``;
2. no champion yet, or candidate metric > champion metric - ``champion_tolerance`` (strictly: a tie
   keeps the incumbent). The champion's number must come from the candidate's split: if the champion
   was judged on another split (new data version, another seed), the gate re-scores the champion's
   model on this split, same test users and same exclusions (``training.evaluate.judge_on_split``;
   test events the champion trained on are withheld from both models), and compares those numbers.
The promote stage performs the swap; this stage only decides (and records every number it used).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.artifacts import DeploymentEvent, Evaluation, GateDecision, RunConfig, Split
from pipeline.config import PipelineConfig


def decide(
    evaluation: Evaluation,
    split: Split,
    run_config: RunConfig,
    cfg: PipelineConfig,
    champion: DeploymentEvent | None,
    candidate_artifact: Path | None = None,
) -> GateDecision:
    """The decision for ``evaluation`` (the candidate's, on ``split``) against ``champion``.

    ``candidate_artifact`` (the run's model directory) is needed only when the champion must be
    re-scored on this split.
    """
    deployment = cfg.deployments[run_config.deployment]
    metric = deployment.metric
    base = GateDecision(
        model=evaluation.model,
        deployment=run_config.deployment,
        eligible=run_config.eligible,
        promoted=False,
        reason="",
        metric=metric,
        champion_tag=champion.model_tag if champion else None,
    )
    if not run_config.eligible:
        return dataclasses.replace(base, reason=run_config.eligibility)
    if metric not in evaluation.metrics or metric not in evaluation.baselines.get("popularity", {}):
        return dataclasses.replace(
            base,
            eligible=False,
            reason=f"the evaluation has no {metric!r} for the candidate and Popularity (ks in "
            f"evaluation.ks?); deployment {run_config.deployment!r} selects by it",
        )
    candidate = float(evaluation.metrics[metric])
    popularity = float(evaluation.baselines["popularity"][metric])
    required = popularity * cfg.gate.min_lift_over_popularity
    base = dataclasses.replace(base, candidate_value=candidate, popularity_value=popularity)
    lift = (
        f"{evaluation.model} {metric} {candidate:.4f} vs popularity {popularity:.4f} "
        f"x {cfg.gate.min_lift_over_popularity:g} = {required:.4f}"
    )
    if candidate < required:
        return dataclasses.replace(base, reason=f"{lift}: below")
    if champion is None:
        return dataclasses.replace(base, promoted=True, reason=f"{lift}: passed; no champion yet")

    if champion.split_dir == str(split.dir) and metric in champion.metrics:
        champion_value, judged, champion_metrics = float(champion.metrics[metric]), "recorded", {}
        where = "judged on this split"
    else:
        from training.evaluate import judge_on_split

        if candidate_artifact is None:
            raise ValueError("the champion was judged on another split: pass candidate_artifact to re-score")
        judgement = judge_on_split(champion.artifact_dir, candidate_artifact, split, cfg.evaluation)
        champion_metrics, judged = judgement.champion, "rescored"
        champion_value = float(champion_metrics[metric])
        where = (
            f"re-scored on this run's split (data {split.data_version}; it was judged on data "
            f"{champion.data_version} at {champion.value:.4f})"
        )
        if judgement.candidate is not None:
            # Test events the champion trained on were withheld from both: compare on that test set.
            candidate = float(judgement.candidate[metric])
            where += (
                f"; {judgement.withheld_pairs} test events the champion trained on were withheld from "
                f"both, candidate {metric} on that test set {candidate:.4f}"
            )
            base = dataclasses.replace(base, candidate_value=candidate)
    floor = champion_value - cfg.gate.champion_tolerance
    versus = (
        f"champion {champion.model_tag} {metric} {champion_value:.4f} ({where}), "
        f"tolerance {cfg.gate.champion_tolerance:g}"
    )
    base = dataclasses.replace(
        base, champion_value=champion_value, champion_judged=judged, champion_metrics=champion_metrics
    )
    if candidate > floor:
        return dataclasses.replace(base, promoted=True, reason=f"{lift}: passed; {candidate:.4f} > {versus}")
    return dataclasses.replace(base, reason=f"{lift}: passed; but {candidate:.4f} <= {versus}")
