"""Headless screenshots for the README: a run's evaluation report, the served API's Swagger page and
the Airflow UI's log of a model DAG's ``train`` task.

    RECFORGE_HOME=... .venv/bin/python bench/screenshots.py                  # newest run's report + API
    .venv/bin/python bench/screenshots.py --run-dir RUN --model-tag recforge-bpr:TAG
    .venv/bin/python bench/screenshots.py --skip-api                         # the report only
    .venv/bin/python bench/screenshots.py --airflow                          # the Airflow task log only

Needs a Chromium on PATH (Debian: ``apt-get install chromium``). The report is opened from its file
(``file://``). The API is started the way ``make serve`` starts it (``python -m serving``), on a spare
port, with the deployment's champion or ``--model-tag`` (any model the run stored, promoted or not),
and stopped once its page is captured. Writes ``docs/img/evaluation_report.png`` and
``docs/img/api_swagger.png``.

``--airflow`` needs no run: in a temporary RECFORGE_HOME on a small slice of MovieLens-100K it starts
Airflow the way ``recforge airflow-ui --port P`` does, triggers ``recsys_bpr`` over the REST API with one
epoch, waits for the run to succeed, captures the ``train`` task's log page as
``docs/img/airflow_task_log.png``, then stops Airflow and removes the home. That Airflow runs in the
simple auth manager's no-login mode (``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS``, every visitor
is admin) so the browser is not stopped at the login page; ``make airflow`` never sets it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # --airflow imports this checkout's orchestration and test helpers
OUT = REPO / "docs" / "img"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(
        f"no headless browser on PATH (looked for {', '.join(BROWSERS)}): apt-get install chromium"
    )


def screenshot(url: str, path: Path, width: int, height: int, budget_ms: int = 8000) -> Path:
    """One PNG of ``url`` at ``width`` x ``height`` CSS pixels; scripts get ``budget_ms`` of virtual
    time to render."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={width},{height}",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {path} from {url}")
    return path


def newest_report(home: Path) -> Path:
    reports = sorted((home / "runs").glob("*/*/report.html"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise SystemExit(f"no run with report.html under {home / 'runs'}: run `recforge run bpr` first")
    return reports[-1]


def wait_for(url: str, seconds: float, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with status {server.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the service did not answer {url} within {seconds:.0f} s")


def api_screenshot(home: Path, model_tag: str | None, port: int, path: Path) -> Path:
    env = dict(os.environ, RECFORGE_HOME=str(home))
    if model_tag:
        env["RECFORGE_MODEL_TAG"] = model_tag
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--port", str(port)], cwd=REPO, env=env, start_new_session=True
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", 180, server)
        return screenshot(f"http://127.0.0.1:{port}/", path, 1280, 900)
    finally:
        os.killpg(server.pid, 15)  # the launcher's own process group: bentoml serve and its workers
        server.wait(timeout=30)


def airflow_screenshot(port: int, path: Path, sample_users: int = 60) -> Path:
    """The ``train`` task's log page of a one-epoch ``recsys_bpr`` run, in a throwaway home."""
    from orchestration.cli import stop_process_group
    from tests.integration.airflow_rest import finished_state, task_states, token, trigger, wait_for
    from tests.integration.pipeline_home import make_home

    dag_id = "recsys_bpr"
    with tempfile.TemporaryDirectory(prefix="recforge-airflow-shot-") as tmp:
        home = Path(tmp)
        env = make_home(home, sample_users=sample_users, max_epochs=1)
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
        # In no-login mode Airflow generates no password, and airflow-ui waits for one: give it one.
        env["RECFORGE_AIRFLOW_PASSWORD"] = secrets.token_urlsafe(16)
        env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] = "5"
        log_path = home / "airflow" / "standalone.log"
        with open(home / "airflow-ui.out", "w") as out:
            ui = subprocess.Popen(
                [sys.executable, "-m", "orchestration.cli", "airflow-ui", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            login_file = home / "airflow" / "ui_login.json"

            def login() -> dict | None:
                if ui.poll() is not None:
                    raise SystemExit(f"recforge airflow-ui exited ({ui.returncode}) before the UI answered")
                return json.loads(login_file.read_text()) if login_file.is_file() else None

            password = wait_for(login, 400, "recforge airflow-ui to write its login")["password"]
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {wait_for(lambda: token(base, password), 120, 'a token')}"}
            run_id = trigger(base, headers, dag_id, {"max_epochs": 1})
            print(f"triggered {dag_id} run {run_id}; waiting for it to finish", flush=True)
            state = wait_for(lambda: finished_state(base, headers, dag_id, run_id), 1200, f"run {run_id}")
            if state != "success":
                tail = log_path.read_text()[-4000:] if log_path.is_file() else ""
                raise SystemExit(
                    f"run {run_id} ended {state}: {task_states(base, headers, dag_id, run_id)}\n{tail}"
                )
            quoted = urllib.parse.quote(run_id, safe="")
            url = f"{base}/dags/{dag_id}/runs/{quoted}/tasks/train"
            return screenshot(url, path, 1400, 1000, budget_ms=15000)
        finally:
            # SIGTERM makes airflow-ui stop standalone's own process group before it exits.
            stop_process_group(ui, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", default=os.environ.get("RECFORGE_HOME", str(REPO / ".recforge")))
    parser.add_argument("--run-dir", help="the run whose report.html to capture (default: the newest)")
    parser.add_argument("--model-tag", help="serve this stored model instead of the deployment's champion")
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument(
        "--airflow",
        action="store_true",
        help="only the Airflow UI's train-task log, from a one-epoch run in a temporary home",
    )
    parser.add_argument("--airflow-port", type=int, default=3918)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    home, out = Path(args.home), Path(args.out)
    if args.airflow:
        airflow_screenshot(args.airflow_port, out / "airflow_task_log.png")
        return 0
    report = Path(args.run_dir) / "report.html" if args.run_dir else newest_report(home)
    screenshot(report.resolve().as_uri(), out / "evaluation_report.png", 1100, 1500)
    if not args.skip_api:
        api_screenshot(home, args.model_tag, args.port, out / "api_swagger.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
