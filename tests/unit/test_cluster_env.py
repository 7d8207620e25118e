"""The cluster's settings (orchestration/cluster.py): local defaults, the environment wins, names that
tell the workers apart. The processes themselves run in tests/integration/test_cluster.py."""

from __future__ import annotations

import socket

import pytest

from orchestration.cluster import DEFAULT_BROKER, cluster_env, default_database_url, worker_hostname
from pipeline.layout import Layout


def test_defaults_are_the_local_servers_with_the_result_backend_in_the_metadata_db(tmp_path):
    env = cluster_env(Layout(tmp_path), api_port=18080, base={})
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == "postgresql+psycopg://postgres@127.0.0.1:5432/recforge_airflow"
    )
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"] == DEFAULT_BROKER
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    # A fresh secret per start unless one is set.
    assert (
        cluster_env(Layout(tmp_path), 18080, base={})["AIRFLOW__API_AUTH__JWT_SECRET"]
        != env["AIRFLOW__API_AUTH__JWT_SECRET"]
    )


def test_the_environment_wins_and_a_password_is_quoted(tmp_path):
    postgres = {
        "RECFORGE_PG_USER": "recforge",
        "RECFORGE_PG_PASSWORD": "p@ss/word",
        "RECFORGE_PG_HOST": "db.internal",
        "RECFORGE_AIRFLOW_DB": "af",
    }
    assert default_database_url(postgres) == "postgresql+psycopg://recforge:p%40ss%2Fword@db.internal:5432/af"
    assert cluster_env(Layout(tmp_path), 18080, base=postgres)[
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    ] == default_database_url(postgres)
    base = {
        "AIRFLOW__CELERY__BROKER_URL": "redis://cache:6379/4",
        "AIRFLOW__API_AUTH__JWT_SECRET": "shared-by-every-host",
    }
    env = cluster_env(Layout(tmp_path), 18080, base=base)
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://cache:6379/4"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "shared-by-every-host"


def test_a_metadata_db_that_is_not_postgres_is_refused_with_its_value(tmp_path):
    with pytest.raises(ValueError, match="needs a PostgreSQL metadata DB.*sqlite:///x.db"):
        cluster_env(Layout(tmp_path), 18080, base={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:///x.db"})


def test_a_named_worker_reports_its_name_with_the_host(monkeypatch):
    monkeypatch.setenv("RECFORGE_WORKER_NAME", "worker2")
    assert worker_hostname() == f"worker2@{socket.getfqdn()}"
    monkeypatch.delenv("RECFORGE_WORKER_NAME")
    assert worker_hostname() == socket.getfqdn()
