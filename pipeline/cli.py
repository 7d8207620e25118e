"""``recforge`` command line: the same stages as the DAGs, plus the demo and the local UIs.

recforge demo                      # the main job: both DAGs end to end through Airflow, then the summary
recforge run bpr --set split.protocol=random_holdout --hparam epochs=5
recforge summary                   # leaderboard + the path of summary.json (last line)
recforge airflow dags list         # the airflow CLI with recforge's environment
recforge airflow-ui                # Airflow UI on a free port
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import yaml

from pipeline import stages
from pipeline.airflow_env import airflow_env, free_port
from pipeline.summary import write_summary

log = logging.getLogger("recforge")

DEMO_MODELS = ("bpr", "sasrec")


def _pairs(values: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _airflow(args: list[str], env: dict[str, str], check: bool = True) -> int:
    airflow_bin = os.path.join(os.path.dirname(sys.executable), "airflow")
    code = subprocess.call([airflow_bin, *args], env=env)
    if check and code != 0:
        raise SystemExit(f"airflow {' '.join(args)} failed with exit code {code}")
    return code


def cmd_run(args: argparse.Namespace) -> None:
    summary = stages.run_all(args.model, args.run_id, _pairs(args.set), _pairs(args.hparam))
    print_summary(summary)


def cmd_demo(args: argparse.Namespace) -> None:
    """Run the model DAGs through Airflow (``airflow dags test``: real tasks, SQLite metadata DB)."""
    _, layout = stages.context()
    env = airflow_env(layout)
    started = time.perf_counter()
    _airflow(["db", "migrate"], env)
    conf = json.dumps(_pairs(args.conf))
    _airflow(["dags", "reserialize"], env)
    for model in args.models:
        log.info("running DAG recsys_%s through Airflow", model)
        _airflow(["dags", "test", f"recsys_{model}", "--conf", conf], env)
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    print_summary(write_summary(layout))


def print_summary(summary_path) -> None:
    summary = json.loads(open(summary_path).read())
    print()
    print(open(summary["leaderboard"]).read())
    for name, record in summary["models"].items():
        verdict = "PROMOTED" if record["promoted"] else "not promoted"
        print(f"{name}: {verdict} - {record['reason']} (bento: {record['bento_tag']})")
        if record.get("drift_detected") is not None:
            print(f"{name}: drift detected={record['drift_detected']} {record.get('drift_reasons') or ''}")
    print(summary_path)


def cmd_summary(_: argparse.Namespace) -> None:
    _, layout = stages.context()
    print_summary(write_summary(layout))


def cmd_airflow(args: argparse.Namespace) -> None:
    _, layout = stages.context()
    raise SystemExit(_airflow(args.airflow_args, airflow_env(layout), check=False))


def airflow_password(env: dict[str, str], timeout: float = 120.0) -> str:
    """The admin password: ``RECFORGE_AIRFLOW_PASSWORD`` if set, else the one Airflow generated."""
    path = os.path.join(env["AIRFLOW_HOME"], "simple_auth_manager_passwords.json.generated")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isfile(path) and os.path.getsize(path):
            return json.loads(open(path).read())["admin"]
        time.sleep(1)
    raise TimeoutError(f"Airflow wrote no password file at {path} within {timeout:.0f} s")


def seed_password(env: dict[str, str]) -> None:
    """Let a team pick the local admin password through the environment (never from the repo)."""
    password = os.environ.get("RECFORGE_AIRFLOW_PASSWORD")
    if password:
        path = os.path.join(env["AIRFLOW_HOME"], "simple_auth_manager_passwords.json.generated")
        with open(path, "w") as handle:
            json.dump({"admin": password}, handle)


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and all its children; SIGKILL stragglers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, signal.SIGKILL)  # children that outlived the parent
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def cmd_airflow_ui(args: argparse.Namespace) -> None:
    _, layout = stages.context()
    port = args.port or free_port()
    env = airflow_env(layout, api_port=port)
    seed_password(env)
    airflow_bin = os.path.join(os.path.dirname(sys.executable), "airflow")
    # Own process group: standalone forks scheduler, API server and workers that must stop with it.
    server = subprocess.Popen([airflow_bin, "standalone"], env=env, start_new_session=True)
    # On SIGTERM (not only Ctrl-C) unwind through `finally`, so standalone does not outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        password = airflow_password(env)
        print(f"\nAirflow UI: http://127.0.0.1:{port}  login: admin / {password}", flush=True)
        print(
            "DAGs: recsys_bpr, recsys_sasrec, recsys_drift_monitor (Trigger -> the form takes the parameters)."
        )
        print("Stop with Ctrl-C.", flush=True)
        raise SystemExit(server.wait())
    finally:
        stop_process_group(server)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="recforge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every stage for one model in-process")
    run.add_argument("model")
    run.add_argument("--run-id")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override, e.g. split.protocol=random_holdout",
    )
    run.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="model hyperparameter override")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="run the model DAGs end to end through Airflow, then print the summary"
    )
    demo.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    demo.add_argument("--conf", action="append", metavar="PARAM=VALUE", help="DAG params, e.g. max_epochs=5")
    demo.set_defaults(func=cmd_demo)

    sub.add_parser("summary", help="rewrite and print the run summary").set_defaults(func=cmd_summary)

    airflow = sub.add_parser("airflow", help="the airflow CLI with recforge's environment")
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=cmd_airflow)

    ui = sub.add_parser("airflow-ui", help="airflow standalone (UI + scheduler) on a free port")
    ui.add_argument("--port", type=int)
    ui.set_defaults(func=cmd_airflow_ui)

    args = parser.parse_args(argv)
    args.func(args)
    # Skip interpreter finalisation: duckdb's bindings (Feast's offline store) print hundreds of
    # "leaked instance" lines at exit, which would bury the summary path that must come last.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
