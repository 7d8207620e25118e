"""Run one DAG through Airflow (``dag.test()``: real tasks, in this process) with its logs in a file.

    python -m orchestration.dag_run DAG_ID CONF_JSON LOG_PATH

What ``recforge demo`` starts for each DAG, under recforge's Airflow environment (Airflow reads its
configuration when first imported, hence a process per DAG run). Everything the run writes (Airflow,
Feast, Lightning, warnings, tracebacks) goes to ``LOG_PATH``; the console gets one line per task with
its state and wall time as the task ends, and for a failed task the error in one line. Exit status 0
when the DAG run succeeded, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, TextIO

from features.duckdb_exit import close_default_duckdb_connection


def phase_line(dag_id: str, task_id: str, state: Any, seconds: float | None) -> str:
    state = getattr(state, "value", state)  # Airflow's state enums print as their class otherwise
    took = "" if seconds is None else f"{seconds:7.1f} s"
    return f"{dag_id:22} {task_id:16} {state:8} {took}".rstrip()


def error_line(error: BaseException | None) -> str:
    """One line for a person: the error's type and its message's first line."""
    if error is None:
        return "no error was reported; see the log"
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else '(no message)'}"


def _report_each_task(console: TextIO, reported: set[str]) -> None:
    """Print a line as each task ends: wraps the function ``dag.test()`` calls to run one task."""
    from airflow.sdk.definitions import dag as dag_module

    run_task = dag_module._run_task

    def timed_run_task(*, ti: Any, task: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = run_task(ti=ti, task=task, **kwargs)
        state = getattr(result, "state", None) or ti.state or "failed"
        state = str(getattr(state, "value", state))
        console.write(phase_line(ti.dag_id, ti.task_id, state, time.perf_counter() - started) + "\n")
        if state in ("failed", "up_for_retry"):
            console.write(f"  {ti.task_id} {state}: {error_line(getattr(result, 'error', None))}\n")
        reported.add(ti.task_id)
        console.flush()
        return result

    dag_module._run_task = timed_run_task


def main(argv: list[str]) -> int:
    dag_id, conf, log_path = argv
    # Keep the console for the task lines; point this process's stdout and stderr (and so every
    # logger, print, progress bar and warning, Airflow's included) at the log file.
    console = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_file.fileno(), sys.stdout.fileno())
    os.dup2(log_file.fileno(), sys.stderr.fileno())

    from airflow.dag_processing.dagbag import DagBag

    from orchestration.dag_docs import task_order

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(dag_id)
    if dag is None:
        console.write(f"{dag_id}: no such DAG in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}\n")
        return 1
    reported: set[str] = set()
    _report_each_task(console, reported)
    run = dag.test(run_conf=json.loads(conf))
    # Tasks that never ran (upstream failed, or skipped by a trigger rule) get their line too.
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    for task_id in task_order(dag):
        if task_id not in reported:
            console.write(phase_line(dag_id, task_id, states.get(task_id, "not run"), None) + "\n")
    close_default_duckdb_connection()
    return 0 if str(run.state) == "success" else 1


def run_with_console_errors(argv: list[str]) -> int:
    """``main``, with an error outside the tasks (parsing the DAGs, the metadata DB) said in one line
    on the console and in full in the log."""
    console = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    try:
        return main(argv)
    except Exception as exc:  # noqa: BLE001 - the traceback goes to the log, one line to the person
        traceback.print_exc()
        console.write(f"{argv[0]}: could not run the DAG: {error_line(exc)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(run_with_console_errors(sys.argv[1:]))
