"""docker-compose.yml cannot run here (no Docker engine), so check it against the code it deploys:
every service's command exists in this environment, and the settings the code reads are set."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
BIN = Path(sys.executable).parent


def _subcommand(command: list[str]) -> list[str]:
    """The command up to its first option: ``airflow celery worker --x`` -> ``airflow celery worker``."""
    words = []
    for word in command:
        if word.startswith("-"):
            break
        words.append(word)
    return words


@pytest.mark.slow  # `<command> --help` in a subprocess per service
@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" in s))
def test_every_recforge_service_command_exists(name):
    command = SERVICES[name]["command"]
    head = _subcommand(command)
    executable = BIN / head[0]
    assert executable.is_file(), f"{name}: {head[0]} is not installed by requirements.lock"
    if head[0] == "bentoml":
        module, _, cls = command[2].partition(":")
        tree = ast.parse((REPO_ROOT / (module.replace(".", "/") + ".py")).read_text())
        assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, f"{command[2]} not defined"
    if head[0] == "python" and command[1] == "-m":  # python -m package: the package has a __main__
        package = REPO_ROOT / command[2].replace(".", "/")
        assert (package / "__main__.py").is_file() or package.with_suffix(".py").is_file(), command[2]
    result = subprocess.run(
        [str(executable), *head[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"AIRFLOW_HOME": "/tmp/recforge-compose-check", "PATH": str(BIN)},
    )
    assert result.returncode == 0, f"{name}: `{' '.join(head)} --help` failed: {result.stderr[-1500:]}"


def test_settings_the_code_reads_are_set():
    env = SERVICES["airflow-scheduler"]["environment"]
    profile = (REPO_ROOT / "feature_repo/profiles/production/feature_store.yaml").read_text()
    from features.store import DIR_ENV, PROJECT_ENV

    # The namespace variables are set per data version by features.store itself.
    needed = set(re.findall(r"\$\{(\w+)\}", profile)) - {PROJECT_ENV, DIR_ENV}
    assert needed <= set(env), f"Feast production profile needs {sorted(needed - set(env))}"
    assert env["RECFORGE_RUN_INDEX_URL"].startswith("postgresql+psycopg://")
    assert env["RECFORGE_ONLINE_LOG_URL"].startswith("postgresql+psycopg://")  # event and served logs
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/recforge/plugins"
    assert env["RECFORGE_FEAST_PROFILE"] == "production"
    api_port = SERVICES["airflow-apiserver"]["command"][-1]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-apiserver:{api_port}/execution/"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    # The image's checkout path is where the DAGs folder points.
    dockerfile = (REPO_ROOT / "docker/Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{workdir}/dags"


def test_no_secret_literals():
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "API_KEY" in key or "SECRET" in key:
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"


def test_recommender_is_exposed_only_with_an_api_key_and_follows_the_shared_run_index():
    recommender = SERVICES["recommender"]
    command = recommender["command"]
    assert command[:3] == ["python", "-m", "serving"]  # the launcher: preflight, then bentoml serve
    assert command[command.index("--host") + 1] == "0.0.0.0"  # explicit: the default is 127.0.0.1
    env = recommender["environment"]
    assert env["RECFORGE_API_KEY"].startswith("${RECFORGE_API_KEY:?")  # compose refuses to start without it
    assert env["RECFORGE_DEPLOYMENT"]
    scheduler = SERVICES["airflow-scheduler"]["environment"]
    for key in ("RECFORGE_HOME", "BENTOML_HOME", "RECFORGE_RUN_INDEX_URL", "RECFORGE_FEAST_PROFILE"):
        assert env.get(key) == scheduler.get(key), f"recommender and Airflow disagree on {key}"


def test_compose_runs_the_processes_make_cluster_starts_with_the_same_settings(tmp_path):
    """`make cluster` (orchestration/cluster.py) is this file's Airflow on one machine: the same
    commands, one service per process, and the same setting names."""
    from orchestration.cluster import cluster_env, process_specs
    from pipeline.layout import Layout

    env = cluster_env(Layout(tmp_path), api_port=8080, base={})
    local = {("airflow", *spec.args) for spec in process_specs(env)}
    airflow_services = {
        tuple(s["command"]) for n, s in SERVICES.items() if n.startswith("airflow-") and n != "airflow-init"
    }
    assert local == airflow_services
    compose_env = SERVICES["airflow-scheduler"]["environment"]
    for key in (
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    ):
        assert key in compose_env and key in env, key
    assert env["AIRFLOW__CORE__EXECUTOR"] == compose_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert compose_env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://")
