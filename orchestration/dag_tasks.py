"""Airflow tasks built from the pipeline's declaration (``orchestration.flow``): one task per stage.

``stage_tasks`` turns a sequence of declared stages into tasks of the DAG being defined, wires each
to the outputs it takes (paths through XCom) and to the stages it must follow, and returns the tasks'
outputs by stage name. The model DAGs take every stage; the tuning DAGs the data stages. The model is
passed by closure, never parsed back out of the DAG id. Imported by DAG files only (it imports
Airflow's task SDK).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context, task

from orchestration.dag_params import overrides_from_params
from orchestration.flow import STAGES, Stage

RETRY_DELAY = timedelta(seconds=10)


def run_overrides() -> dict[str, Any]:
    """The running DAG's trigger-form values as dotted config overrides."""
    return overrides_from_params(get_current_context()["params"])


def run_hparams() -> dict[str, Any]:
    """The model hyperparameter overrides of the trigger form (model DAGs have an ``hparams`` field)."""
    return dict(get_current_context()["params"].get("hparams") or {})


def stage_tasks(model: str, names: Iterable[str], run_prefix: str = "") -> dict[str, Any]:
    """One task per declared stage in ``names`` (declaration order), for ``model``; their XComArgs.

    ``run_prefix`` names the run directory (``runs/<model>/<prefix><Airflow run id>``), e.g. "tune-".
    """
    outputs: dict[str, Any] = {}
    for name in names:
        stage = STAGES[name]
        created = _task(stage, model, run_prefix)(*(outputs[i] for i in stage.inputs))
        for before in stage.after:
            outputs[before] >> created
        outputs[name] = created
    return outputs


def _task(stage: Stage, model: str, run_prefix: str) -> Any:
    @task(
        task_id=stage.name,
        doc_md=stage.doc,
        retries=stage.retries,
        retry_delay=RETRY_DELAY,
        trigger_rule="none_failed" if stage.runs_after_skips else "all_success",
    )
    def run_stage(*paths: str) -> str:
        outputs = dict(zip(stage.inputs, paths, strict=True))
        run_id = run_prefix + get_current_context()["run_id"]
        output = stage.run(model, run_id, outputs, run_overrides(), run_hparams())
        reason = stage.skip_reason(output) if stage.skip_reason else None
        if reason:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(reason)
        return output

    return run_stage
