"""Airflow tasks shared by the DAG factories: a run's id, its config overrides, and its split.

Both ``recsys_<model>`` and ``recsys_tune_<model>`` start with the same four stages (ingest -> validate
-> features -> split); they are declared once here so the two DAG families cannot drift apart.
Imported by DAG files only (it imports Airflow's task SDK).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context, task

from pipeline.dag_params import overrides_from_params

IO_RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=10)}  # tasks that read or write stores


def run_overrides() -> dict[str, Any]:
    """The running DAG's trigger-form values as dotted config overrides."""
    return overrides_from_params(get_current_context()["params"])


def run_hparams() -> dict[str, Any]:
    """The model hyperparameter overrides of the trigger form (model DAGs have an ``hparams`` field)."""
    return dict(get_current_context()["params"].get("hparams") or {})


def split_tasks(run_ids: Callable[[], tuple[str, str]]) -> Any:
    """ingest -> validate -> features -> split inside the DAG being defined; the split manifest's XComArg.

    ``run_ids()`` gives ``(model, run_id)`` of the running task, which names the run directory.
    """

    @task(
        doc_md="Write the run's resolved config (run_config.json, read by every later task); read the "
        "configured source into staging Parquet (strings + provenance).",
        **IO_RETRIES,
    )
    def ingest() -> str:
        from pipeline import stages

        return stages.ingest(*run_ids(), run_overrides(), run_hparams())

    @task(doc_md="Validate types, ranges, duplicates, unknown entities; quarantine bad rows; snapshot.")
    def validate(staging: str) -> str:
        from pipeline import stages

        return stages.validate(*run_ids(), staging, run_overrides())

    @task(doc_md="Feast apply + materialise; training examples via get_historical_features.", **IO_RETRIES)
    def features(snapshot: str) -> str:
        from pipeline import stages

        return stages.features(*run_ids(), snapshot, run_overrides())

    @task(
        doc_md="Split by the run's protocol (temporal / leave_last_out / random_holdout), shared by every model."
    )
    def split(feature_set: str) -> str:
        from pipeline import stages

        return stages.split(*run_ids(), feature_set, run_overrides())

    return split(features(validate(ingest())))
