"""``recforge cluster`` for real: Airflow's CeleryExecutor with two workers on the machine's PostgreSQL
(metadata DB and result backend, a throwaway database) and Redis (broker, a throwaway DB number).

A model DAG and a tuning DAG are triggered together over the REST API; both must succeed, and their task
instances' hostnames must name both workers. Then ``recforge cluster stop`` must end every process.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379, as on the project's
machines; skipped with the reason when they are not reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests

from orchestration.airflow_env import free_port
from orchestration.cluster import STATE_FILE, WORKERS
from tests.integration.airflow_rest import finished_state, task_states, token, trigger, wait_for
from tests.integration.pipeline_home import make_home
from tests.integration.test_production_profile import PG, requires_servers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_DB = 12  # the broker's own Redis database, flushed after the test


def _task_instances(base: str, headers: dict[str, str], dag_id: str, run_id: str) -> list[dict]:
    url = f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    return requests.get(url, headers=headers, timeout=10).json()["task_instances"]


@requires_servers
def test_cluster_runs_a_model_and_a_tuning_dag_on_two_celery_workers(tmp_path):
    import psycopg
    import redis

    database = f"recforge_test_{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = make_home(tmp_path, sample_users=60, max_epochs=1, split={"protocol": "random_holdout"})
    env.update(
        {
            "RECFORGE_PG_USER": PG["user"],
            "RECFORGE_AIRFLOW_DB": database,  # created by the cluster: it does not exist yet
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "RECFORGE_AIRFLOW_PASSWORD": "cluster-test",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
    )
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW_HOME"):
        env.pop(key, None)
    broker = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    broker.flushdb()
    log = open(tmp_path / "cluster.out", "w")
    cluster = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "cluster", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state_path = tmp_path / "airflow" / "cluster" / STATE_FILE
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        jwt = wait_for(lambda: cluster.poll() is None and token(base, "cluster-test"), 600, "the API server")
        headers = {"Authorization": f"Bearer {jwt}"}
        pids = json.loads(state_path.read_text())["pids"]
        assert set(pids) == {"api-server", "scheduler", "dag-processor", "triggerer", *WORKERS}
        runs = {
            "recsys_bpr": trigger(base, headers, "recsys_bpr", {"max_epochs": 1}),
            "recsys_tune_bpr": trigger(
                base,
                headers,
                "recsys_tune_bpr",
                {
                    "max_epochs": 1,
                    "max_candidates": 2,
                    "tuning_grid": {"lr": [0.001, 0.01], "embedding_size": [8]},
                },
            ),
        }
        for dag_id, run_id in runs.items():
            state = wait_for(
                lambda d=dag_id, r=run_id: finished_state(base, headers, d, r), 900, f"{dag_id} to finish"
            )
            if state != "success":
                pytest.fail(
                    f"{dag_id} {run_id} ended {state}: {task_states(base, headers, dag_id, run_id)}"
                    f"\n{(tmp_path / 'cluster.out').read_text()[-3000:]}"
                )
        hosts = {
            ti["hostname"]
            for dag_id, run_id in runs.items()
            for ti in _task_instances(base, headers, dag_id, run_id)
            if ti["state"] == "success"
        }
        assert {host.partition("@")[0] for host in hosts} == set(WORKERS), hosts
        print(f"cluster test: started and ran both DAGs in {time.monotonic() - started:.0f} s")
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "orchestration.cli", "cluster", "stop"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        cluster.wait(timeout=60)
        log.close()
        broker.flushdb()
        with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert stop.returncode == 0, stop.stderr
    assert not state_path.exists()
    for name, pid in pids.items():  # every process group ended, workers' task processes included
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        assert (tmp_path / "airflow" / "cluster" / f"{name}.log").stat().st_size > 0
