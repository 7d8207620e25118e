"""Trigger-form parameters shared by the recforge DAGs and their mapping onto config overrides.

Kept outside ``dags/`` so the mapping is unit-testable without Airflow's DAG processor.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from pipeline.config import load_config

# form field -> dotted key in configs/pipeline.yaml
PARAM_TO_CONFIG = {
    "deployment": "deployment",
    "split_protocol": "split.protocol",
    "max_epochs": "trainer.max_epochs",
    "patience": "trainer.patience",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "strategy": "trainer.strategy",
    "sample_users": "source.sample_users",
    "min_lift_over_popularity": "gate.min_lift_over_popularity",
    # the tuning DAGs' form
    "training_seeds": "tuning.training_seeds",
    # the drift monitor's form
    "current_window_share": "monitoring.current_window_share",
    "data_drift_share_threshold": "monitoring.data_drift_share_threshold",
    "drift_share_threshold": "monitoring.drift_share_threshold",
    "min_current_ndcg10": "monitoring.min_current_ndcg10",
    "missing_share_increase": "monitoring.missing_share_increase",
    "max_users": "monitoring.max_users",
}

# Form defaults come from configs/pipeline.yaml, so the form and the CLI never disagree.
_defaults = load_config()


def _deployment(description: str) -> Param:
    return Param(_defaults.deployment, enum=sorted(_defaults.deployments), description=description)


PIPELINE_PARAMS: dict[str, Param] = {
    "deployment": _deployment(
        "The deployment this run competes for (its data source, protocol and metric are fixed in the "
        "pipeline config; a run that does not match them is never promoted there)."
    ),
    "split_protocol": Param(
        _defaults.split.protocol,
        enum=["temporal", "leave_last_out", "random_holdout"],
        description="How to split events into train/valid/test (recorded in every artifact).",
    ),
    "max_epochs": Param(
        _defaults.trainer.max_epochs,
        type="integer",
        minimum=1,
        description="Upper bound; early stopping may end sooner.",
    ),
    "patience": Param(
        _defaults.trainer.patience,
        type="integer",
        minimum=1,
        description="Epochs without better valid NDCG@10.",
    ),
    "accelerator": Param(
        _defaults.trainer.accelerator, enum=["cpu", "gpu", "auto"], description="Lightning accelerator."
    ),
    "devices": Param(
        _defaults.trainer.devices, type="integer", minimum=1, description="Devices per node (ddp when > 1)."
    ),
    "strategy": Param(
        _defaults.trainer.strategy, enum=["auto", "ddp", "fsdp"], description="Lightning strategy."
    ),
    "sample_users": Param(
        _defaults.source.sample_users,
        type=["null", "integer"],
        minimum=1,
        description="Use only the first N users (a quick slice).",
    ),
    "min_lift_over_popularity": Param(
        _defaults.gate.min_lift_over_popularity,
        type="number",
        minimum=1.0,
        description="Gate: candidate NDCG@10 >= this x Popularity's.",
    ),
}

# The drift monitor's own form: which deployment, how much recent data, and when to call it drift.
_monitoring = _defaults.monitoring
MONITOR_PARAMS: dict[str, Param] = {
    "deployment": _deployment("The deployment whose champion is checked (and retrained on drift)."),
    "current_window_share": Param(
        _monitoring.current_window_share,
        type="number",
        exclusiveMinimum=0,
        maximum=0.5,
        description="The newest share of events (the current window); the reference is as many events "
        "just before it.",
    ),
    "data_drift_share_threshold": Param(
        _monitoring.data_drift_share_threshold,
        type="number",
        minimum=0,
        maximum=0.99,
        description="Data drift when more than this share of the monitored columns drifted (0: any "
        "one column); each column against its own threshold (configs/pipeline.yaml, calibrated by "
        "bench/bench_drift.py).",
    ),
    "drift_share_threshold": Param(
        _monitoring.drift_share_threshold,
        type="number",
        minimum=0,
        maximum=1,
        description="Prediction drift when more than this share of the recommendation columns drifted.",
    ),
    "min_current_ndcg10": Param(
        _monitoring.min_current_ndcg10,
        type="number",
        minimum=0,
        description="Ranking quality on the current window below this NDCG@10 also asks for retraining.",
    ),
    "missing_share_increase": Param(
        _monitoring.missing_share_increase,
        type="number",
        exclusiveMinimum=0,
        maximum=1,
        description="A column whose share of missing values grew by more than this is a broken feed "
        "(reported; it holds retraining back until the feed is fixed).",
    ),
    "max_users": Param(
        _monitoring.max_users,
        type="integer",
        minimum=1,
        description="Users sampled per window for the prediction and ranking checks.",
    ),
}


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from a run's params (unknown keys ignored, None means 'use default')."""
    return {key: params[name] for name, key in PARAM_TO_CONFIG.items() if params.get(name) is not None}
