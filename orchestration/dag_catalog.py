"""The DAGs the DAG files define, read the way Airflow's DagBag reads them: import each file of the
dags folder and collect the DAG objects it leaves at module level.

For what a person is told (``recforge airflow-ui`` lists them) and for tests of every DAG. No metadata
database is needed: nothing is written to Airflow, the files are only imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"


def load_dags(dags_folder: Path = DAGS_FOLDER) -> dict[str, Any]:
    """dag_id -> DAG for every DAG defined at module level by a ``*.py`` file of ``dags_folder``."""
    from airflow.sdk import DAG

    dags: dict[str, Any] = {}
    for path in sorted(Path(dags_folder).glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"recforge_dag_file_{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for value in vars(module).values():
            if isinstance(value, DAG):
                dags[value.dag_id] = value
    return dags


def dag_ids(dags_folder: Path = DAGS_FOLDER) -> list[str]:
    """The DAG ids, sorted."""
    return sorted(load_dags(dags_folder))
