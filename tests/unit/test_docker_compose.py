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
    needed = set(re.findall(r"\$\{(\w+)\}", profile))
    assert needed <= set(env), f"Feast production profile needs {sorted(needed - set(env))}"
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
            if "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"
