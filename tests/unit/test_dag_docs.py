"""Every DAG's documentation is generated from the DAG: its tasks in graph order and its form's fields.

The DAG files are imported the way Airflow's DagBag imports them (``orchestration.dag_catalog``); the
integration test of the DagBag checks the same under real Airflow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestration.dag_catalog import dag_ids, load_dags
from pipeline.config import load_tuning_grid
from training.models import MODELS, pipeline_models

# Reading the DAG files imports Airflow's schedules, and croniter's import runs `file` in a subprocess.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dags() -> dict:
    return load_dags()


def test_the_catalog_lists_every_dag_the_factories_build(dags) -> None:
    tunable = [m for m in pipeline_models() if MODELS[m].trainable or load_tuning_grid(m)]
    expected = (
        {f"recsys_{m}" for m in pipeline_models()}
        | {f"recsys_tune_{m}" for m in tunable}
        | {"recsys_drift_monitor"}
    )
    assert set(dags) == expected
    assert dag_ids() == sorted(expected)


def test_the_catalog_reads_whatever_dag_files_the_folder_holds(tmp_path: Path) -> None:
    (tmp_path / "extra.py").write_text(
        "from airflow.sdk import DAG\nfirst = DAG(dag_id='first')\nsecond = DAG(dag_id='second')\n"
    )
    (tmp_path / "notes.txt").write_text("not a DAG file")
    assert dag_ids(tmp_path) == ["first", "second"]


def test_every_dag_doc_lists_its_tasks_in_graph_order_and_every_form_field(dags) -> None:
    for dag_id, dag in dags.items():
        doc = dag.doc_md
        listed = re.findall(r"^\d+\. \*\*(\w+)\*\*", doc, flags=re.MULTILINE)
        assert sorted(listed) == sorted(dag.task_ids), (dag_id, listed)
        position = {task_id: n for n, task_id in enumerate(listed)}
        for task in dag.tasks:
            assert all(position[up] < position[task.task_id] for up in task.upstream_task_ids), (
                dag_id,
                task.task_id,
            )
        fields = re.findall(r"^\| `(\w+)` \|", doc, flags=re.MULTILINE)
        assert fields == list(dag.params), dag_id
        assert "below" not in doc or "table below" in doc, dag_id


def test_the_doc_follows_the_graph_not_the_order_tasks_were_created() -> None:
    from airflow.sdk import DAG, Param, task

    from orchestration.dag_docs import dag_doc_md

    @task(doc_md="Runs last. More detail.")
    def last() -> None: ...

    @task(doc_md="Runs first.")
    def first() -> None: ...

    with DAG(
        dag_id="out_of_order", schedule=None, params={"depth": Param(3, type="integer", description="a | b")}
    ) as dag:
        created_first = last()
        first() >> created_first
    assert [t.task_id for t in dag.tasks] == ["last", "first"]
    doc = dag_doc_md(dag, "out_of_order", "Why it exists.")
    assert "1. **first**: Runs first.\n2. **last**: Runs last.\n" in doc
    assert "| `depth` | `3` | a \\| b |" in doc
