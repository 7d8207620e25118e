"""``make cluster``: the production profile's Airflow (CeleryExecutor, Redis broker, Postgres metadata DB
and result backend) as local processes, one per docker-compose service, plus a second Celery worker.

What runs (``PROCESSES``, in start order): ``airflow api-server``, ``airflow scheduler``, ``airflow
dag-processor``, ``airflow triggerer`` and two ``airflow celery worker`` with their own Celery hostnames.
``airflow db migrate`` runs first, on a Postgres database that is created when it is missing. Each
process logs to ``$RECFORGE_HOME/airflow/cluster/<name>.log``; the process ids go to
``cluster.json`` beside the logs, which ``recforge cluster stop`` reads.

Connection strings come from the environment, the same names docker-compose.yml sets; missing ones get
local defaults (the machine's Postgres and Redis, no password unless ``RECFORGE_PG_PASSWORD`` is set):

- ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``: default ``postgresql+psycopg://RECFORGE_PG_USER[:RECFORGE_PG_PASSWORD]
  @RECFORGE_PG_HOST:RECFORGE_PG_PORT/RECFORGE_AIRFLOW_DB`` (postgres, 127.0.0.1, 5432, recforge_airflow);
- ``AIRFLOW__CELERY__RESULT_BACKEND``: default the same database (``db+`` prefixed, Celery's form);
- ``AIRFLOW__CELERY__BROKER_URL``: default ``redis://127.0.0.1:6379/1`` (Feast's online store uses DB 0);
- ``AIRFLOW__API_AUTH__JWT_SECRET``: the key every component signs and checks task tokens with; a fresh
  random one per start unless set (a multi-host deployment sets one secret for every host).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from orchestration.airflow_env import airflow_env, free_port
from pipeline.layout import Layout

WORKERS = ("worker1", "worker2")
DEFAULT_DB = "recforge_airflow"
DEFAULT_BROKER = "redis://127.0.0.1:6379/1"
WORKER_NAME_ENV = "RECFORGE_WORKER_NAME"
STATE_FILE = "cluster.json"


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` for the cluster's workers: the host name, prefixed with the
    worker's name when several workers share one host, so a task instance's ``hostname`` tells them apart."""
    host = socket.getfqdn()
    name = os.environ.get(WORKER_NAME_ENV)
    return f"{name}@{host}" if name else host


def default_database_url(env: Mapping[str, str]) -> str:
    user = env.get("RECFORGE_PG_USER", "postgres")
    password = env.get("RECFORGE_PG_PASSWORD", "")
    host = env.get("RECFORGE_PG_HOST", "127.0.0.1")
    port = env.get("RECFORGE_PG_PORT", "5432")
    database = env.get("RECFORGE_AIRFLOW_DB", DEFAULT_DB)
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql+psycopg://{credentials}@{host}:{port}/{database}"


def cluster_env(layout: Layout, api_port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """recforge's Airflow environment switched to the CeleryExecutor on Postgres and Redis."""
    env = airflow_env(layout, api_port=api_port, base=base)
    env["AIRFLOW__CORE__EXECUTOR"] = "CeleryExecutor"
    database = env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", default_database_url(env))
    if not database.startswith("postgresql"):
        raise ValueError(
            f"the cluster needs a PostgreSQL metadata DB, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is {database!r}"
        )
    env.setdefault("AIRFLOW__CELERY__BROKER_URL", DEFAULT_BROKER)
    env.setdefault("AIRFLOW__CELERY__RESULT_BACKEND", f"db+{database}")
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(32))
    # One task at a time per worker: on a small machine two workers are two task slots, and a worker
    # busy with one task leaves the next queued task to the other worker.
    env.setdefault("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1")
    env.setdefault("AIRFLOW__API__WORKERS", "1")
    # The triggerer serves its logs on a port of its own: a free one, so a second cluster can start.
    env.setdefault("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(free_port()))
    return env


def create_database(url: str) -> bool:
    """Create the database ``url`` names when it does not exist (connecting to ``postgres`` on the same
    server with the same credentials); True when it was created."""
    # Through SQLAlchemy (psycopg is the URL's driver, a production extra, not a runtime dependency).
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url.removeprefix("db+"))
    name = parsed.database
    if not name:
        raise ValueError(f"the metadata DB URL names no database: {parsed!r}")
    engine = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
            if exists.first():
                return False
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return True


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def process_specs(env: dict[str, str]) -> list[ProcessSpec]:
    """The cluster's processes, in start order: the docker-compose services, with two workers."""
    port = env["AIRFLOW__API__PORT"]
    specs = [
        ProcessSpec("api-server", ["api-server", "--port", port]),
        ProcessSpec("scheduler", ["scheduler"]),
        ProcessSpec("dag-processor", ["dag-processor"]),
        ProcessSpec("triggerer", ["triggerer"]),
    ]
    for name in WORKERS:
        specs.append(
            ProcessSpec(
                name,
                ["celery", "worker", "--celery-hostname", f"{name}@%h"],
                {
                    WORKER_NAME_ENV: name,
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "orchestration.cluster.worker_hostname",
                    # Each worker serves its task logs on its own port (the default one would clash).
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                },
            )
        )
    return specs


def cluster_dir(layout: Layout) -> Path:
    return layout.airflow_home / "cluster"


def airflow_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "airflow")


class Cluster:
    """The started processes; ``stop()`` ends them all (also what a Ctrl-C does)."""

    def __init__(self, layout: Layout, env: dict[str, str]) -> None:
        self.layout, self.env = layout, env
        self.log_dir = cluster_dir(layout)
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}"

    def migrate(self, timeout: float = 600) -> None:
        """Create the metadata DB if missing and migrate it; the output goes to ``migrate.log``."""
        create_database(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        backend = self.env["AIRFLOW__CELERY__RESULT_BACKEND"]
        if backend.startswith("db+postgresql"):
            create_database(backend)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / "migrate.log"
        with open(log_path, "w") as log_file:
            code = subprocess.call(
                [airflow_bin(), "db", "migrate"],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if code != 0:
            raise RuntimeError(f"airflow db migrate failed ({code}); log: {log_path}")

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in process_specs(self.env):
            with open(self.log_dir / f"{spec.name}.log", "a") as log_file:
                # Own session each: a Ctrl-C reaches this supervisor only, which stops them in order.
                self.processes[spec.name] = subprocess.Popen(
                    [airflow_bin(), *spec.args],
                    env={**self.env, **spec.env},
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        state = {
            "url": self.url,
            "supervisor": os.getpid(),
            "pids": {name: p.pid for name, p in self.processes.items()},
        }
        (self.log_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def exited(self) -> dict[str, int]:
        """The processes that have ended, with their exit codes."""
        return {name: code for name, p in self.processes.items() if (code := p.poll()) is not None}

    def wait_until_serving(self, timeout: float = 300) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if exited := self.exited():
                raise RuntimeError(f"{self.describe_exit(exited)} while the cluster was starting")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2)
        raise TimeoutError(f"the API server did not answer within {timeout:.0f} s; logs: {self.log_dir}")

    def describe_exit(self, exited: dict[str, int]) -> str:
        return "; ".join(
            f"{name} exited ({code}), log: {self.log_dir / f'{name}.log'}" for name, code in exited.items()
        )

    def stop(self, timeout: float = 60) -> list[str]:
        """Stop every process; the names of those that had to be killed."""
        killed = stop_groups({name: p.pid for name, p in self.processes.items()}, timeout, self.processes)
        (self.log_dir / STATE_FILE).unlink(missing_ok=True)
        return killed


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_groups(
    pids: dict[str, int], timeout: float = 60, children: dict[str, subprocess.Popen] | None = None
) -> list[str]:
    """SIGTERM each process group (the scheduler first, so it queues nothing new; then the workers, which
    finish or hand back their task), wait up to ``timeout`` s for all, SIGKILL what is left. Returns the
    names that had to be killed."""
    order = ["scheduler", *WORKERS, "triggerer", "dag-processor", "api-server"]
    names = sorted(pids, key=lambda n: order.index(n) if n in order else len(order))
    for name in names:
        try:
            os.killpg(pids[name], signal.SIGTERM)
        except ProcessLookupError:
            pass

    def reap(name: str) -> None:  # a stopped child stays a zombie (its group "alive") until waited for
        if children and name in children:
            children[name].poll()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in names:
            reap(name)
        if not any(_group_alive(pids[n]) for n in names):
            return []
        time.sleep(0.5)
    killed = [n for n in names if _group_alive(pids[n])]
    for name in killed:
        try:
            os.killpg(pids[name], signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in names:
        reap(name)
    return killed


def stop_recorded(layout: Layout, timeout: float = 60) -> list[str] | None:
    """``recforge cluster stop``: stop the processes ``cluster.json`` records; None when none is."""
    path = cluster_dir(layout) / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    # The supervisor (`recforge cluster` in a terminal) stops its processes itself on SIGTERM, in order;
    # whatever outlives it (or a supervisor that is gone) is stopped here.
    supervisor = state.get("supervisor")
    if supervisor and supervisor != os.getpid():
        try:
            os.kill(supervisor, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _pid_alive(supervisor):
                time.sleep(0.5)
        except ProcessLookupError:
            pass
    stop_groups(state["pids"], timeout)
    path.unlink(missing_ok=True)
    return sorted(state["pids"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
