"""The one line a person reads in Airflow's grid view: what a ``recsys_<model>`` run decided, and why.

Airflow 3 tasks cannot write run notes (they have no metadata-DB access), so the recforge Airflow
plugin (``plugins/recforge_plugin.py``) calls ``note_for`` from a DAG-run listener in the scheduler
(or in ``dag.test()``) when a run ends, and stores the text as the run's note. It reads the run's
record from the run index, the same place ``recforge runs`` and ``recforge history`` read.
"""

from __future__ import annotations

import logging

from orchestration.stages import context, mark_failed, safe_run_id
from pipeline.artifacts import GateDecision
from pipeline.run_index import RunIndex

log = logging.getLogger(__name__)

NOTE_MAX_CHARS = 1000  # Airflow's dag_run_note.content column
DAG_PREFIX = "recsys_"
NOT_MODEL_DAGS = ("recsys_tune_", "recsys_drift_monitor")


def model_of(dag_id: str) -> str | None:
    """The model of a ``recsys_<model>`` pipeline DAG; None for the tuning and monitor DAGs and others."""
    if not dag_id.startswith(DAG_PREFIX) or dag_id.startswith(NOT_MODEL_DAGS):
        return None
    return dag_id.removeprefix(DAG_PREFIX)


def note_for(dag_id: str, run_id: str, failed: bool) -> str | None:
    """The note of a finished run of ``dag_id``; None for DAGs that are not model pipelines.

    A failed run is also marked ``failed`` in the run index (the CLI does the same itself).
    """
    model = model_of(dag_id)
    if model is None:
        return None
    cfg, layout = context()
    index = RunIndex.for_layout(layout, cfg.run_index.url)
    record = index.run(f"{model}/{safe_run_id(run_id)}")
    deployment = record.deployment if record else cfg.deployment
    champion = index.champion(deployment)
    live = f"deployment {deployment!r} serves {champion.model_tag if champion else 'nothing yet'}"
    if failed:
        mark_failed(model, run_id, "the Airflow DAG run failed (see the failed task's log)")
        stage = "before training" if record is None else "after training"
        text = f"FAILED {stage}: see the failed task's log; nothing was promoted, {live} (unchanged)"
    elif record is None or not record.gate:
        text = f"finished without a gate decision in the run index; {live}"
    else:
        text = f"{GateDecision.from_dict(record.gate).headline()} | now {live}"
    return text[: NOTE_MAX_CHARS - 1] + "…" if len(text) > NOTE_MAX_CHARS else text
