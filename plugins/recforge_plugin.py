"""recforge's Airflow plugin: a DAG-run listener that writes each model run's outcome as its note.

Loaded from the plugins folder (``AIRFLOW__CORE__PLUGINS_FOLDER``, set by ``orchestration.airflow_env``
and docker-compose) by the scheduler and by ``dag.test()``. The text comes from
``orchestration.run_notes.note_for``; this file only wires it into Airflow.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the recforge packages

log = logging.getLogger(__name__)


def _annotate(dag_run, failed: bool) -> None:
    try:
        from orchestration.run_notes import note_for

        note = note_for(dag_run.dag_id, dag_run.run_id, failed)
        if note:
            _set_note(dag_run, note)
    except Exception:  # noqa: BLE001 - a note must never break the scheduler
        log.exception("recforge: could not write the note of %s %s", dag_run.dag_id, dag_run.run_id)


def _set_note(dag_run, note: str) -> None:
    """In the scheduler the run is bound to its session (saved with it); ``dag.test()`` hands a detached copy."""
    import sqlalchemy as sa

    if sa.inspect(dag_run).session is not None:
        dag_run.note = note
        return
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        query = sa.select(DagRun).where(DagRun.dag_id == dag_run.dag_id, DagRun.run_id == dag_run.run_id)
        session.scalars(query).one().note = note


@hookimpl
def on_dag_run_success(dag_run, msg: str) -> None:
    _annotate(dag_run, failed=False)


@hookimpl
def on_dag_run_failed(dag_run, msg: str) -> None:
    _annotate(dag_run, failed=True)


class RecforgePlugin(AirflowPlugin):
    name = "recforge"
    listeners = [sys.modules[__name__]]
