"""``recforge`` command line: the same stages as the DAGs, plus the demo and the local UIs.

recforge demo                      # the main job: both DAGs end to end through Airflow, then the summary
recforge run bpr --set split.protocol=random_holdout --hparam embedding_size=128
recforge summary                   # leaderboard + the path of summary.json (last line)
recforge runs --model bpr          # the run index: every run, its key, status and gate decision
recforge history                   # promotions and rollbacks of a deployment (default: "default")
recforge rollback [--to TAG]       # the previous (or named) champion back, atomically
recforge feast feature-views list  # the feast CLI on the champion's Feast namespace
recforge example shop /tmp/shop    # a synthetic shop (category, brand, price, tags, title) + its schema
recforge example synthetic --events 5000000 --items 1000000 --users 200000 /tmp/big  # a log for scale tests
recforge airflow dags list         # the airflow CLI with recforge's environment
recforge airflow-ui [--port N]     # Airflow UI (a free port unless --port); URL and login last
recforge cluster [--port N]        # Airflow on Celery: scheduler, API server, 2 workers (Postgres, Redis)
recforge cluster stop              # stop the cluster another terminal started
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from features.duckdb_exit import close_default_duckdb_connection
from orchestration import stages
from orchestration.airflow_env import airflow_env, free_port
from orchestration.dag_run import phase_line
from orchestration.summary import write_summary
from pipeline.config import ConfigError, PipelineConfig, did_you_mean, load_config

log = logging.getLogger("recforge")

DEMO_MODELS = ("bpr", "sasrec")
# Shown under `recforge run --help`; tests/unit/test_cli_run.py runs each with --check.
RUN_EXAMPLES = (
    ("recforge run bpr", "every stage for BPR with configs/pipeline.yaml"),
    ("recforge run bpr --check", "check model, settings, paths and hyperparameters, run nothing"),
    (
        "recforge run sasrec --set split.protocol=random_holdout --set trainer.max_epochs=5",
        "override settings",
    ),
    ("recforge run bpr --hparam embedding_size=128 --hparam lr=0.001", "override hyperparameters"),
    ("recforge run twotower --set source.sample_users=300", "a quick run on the first 300 users"),
)
USAGE_ERROR = 2  # what argparse exits with for a bad command line


class UsageError(ValueError):
    """What was typed is wrong (exit status 2): the message names the value and the accepted ones."""


def _pairs(values: list[str] | None, flag: str) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_model(model: str) -> None:
    """``model`` must have a pipeline (a ``recsys_<model>`` DAG): registered and not a baseline."""
    from training.models import MODELS, pipeline_models

    models = pipeline_models()
    if model in models:
        return
    if model in MODELS:
        raise UsageError(f"{model!r} is a baseline, evaluated inside every run; models: {', '.join(models)}")
    raise UsageError(f"unknown model {model!r}{did_you_mean(model, models)}; models: {', '.join(models)}")


def check_run(model: str, overrides: dict[str, Any], hparams: dict[str, Any]) -> PipelineConfig:
    """Everything a run can be refused for before its first stage, without importing torch: the model,
    the ``--set`` keys and values, the source's paths and schema, the ``--hparam`` keys."""
    from training.models import hyperparameter_names, unknown_hparams_message

    check_model(model)
    cfg = load_config(overrides=overrides)
    if problem := cfg.source.path_problem():
        raise UsageError(problem)
    cfg.source.data_schema  # noqa: B018 - resolving it checks it (SchemaError)
    accepted = hyperparameter_names(model)
    unknown = sorted(set(hparams) - accepted) if accepted is not None else []
    if unknown:
        raise UsageError(unknown_hparams_message(model, unknown, sorted(accepted or ())))
    return cfg


def _airflow(args: list[str], env: dict[str, str], check: bool = True) -> int:
    airflow_bin = os.path.join(os.path.dirname(sys.executable), "airflow")
    code = subprocess.call([airflow_bin, *args], env=env)
    if check and code != 0:
        raise SystemExit(f"airflow {' '.join(args)} failed with exit code {code}")
    return code


def cmd_run(args: argparse.Namespace) -> None:
    overrides, hparams = _pairs(args.set, "--set"), _pairs(args.hparam, "--hparam")
    cfg = check_run(args.model, overrides, hparams)
    if args.check:
        print_check(args.model, cfg, hparams)
        return
    run_id = args.run_id or stages.new_run_id()
    print(stages.run_context(args.model, run_id, overrides, hparams).run_config.eligibility, flush=True)
    summary, decision = stages.run_all(args.model, run_id, overrides, hparams)
    print_summary(summary, last_line=False)
    print(decision.headline())


def print_check(model: str, cfg: PipelineConfig, hparams: dict[str, Any]) -> None:
    """``recforge run --check``: the hyperparameters' values checked too (this imports the model), then
    what the run would use."""
    from orchestration.runs import eligibility, model_params

    params = model_params(model, hparams)
    source = cfg.source
    print(f"model {model}: hyperparameters {json.dumps(params, sort_keys=True)}")
    where = f" {source.path}" if source.path else ""
    print(f"source {source.kind}{where} ({source.name}); split {cfg.split.protocol}")
    print(f"home {cfg.home_dir}; {eligibility(cfg)[1]}")
    print("check passed: nothing was run")


def _index(deployment: str | None = None) -> tuple[Any, str]:
    cfg, layout = stages.context()
    from pipeline.run_index import RunIndex

    return RunIndex.for_layout(layout, cfg.run_index.url), deployment or cfg.deployment


def cmd_runs(args: argparse.Namespace) -> None:
    index, _ = _index()
    records = index.runs(model=args.model, limit=args.limit)
    if not records:
        print(f"no runs in the run index {index.describe()}")
        return
    print(f"{'run':48} {'status':9} {'data':16} {'protocol':15} {'ndcg@10':>8}  decision")
    for r in records:
        gate = r.gate or {}
        verdict = "promoted" if r.promoted else ("not eligible" if not r.eligible else "not promoted")
        if not gate:
            verdict = "-"
        ndcg = r.metrics.get("ndcg@10")
        print(
            f"{r.run_uid[:48]:48} {r.status:9} {str(r.data_version)[:16]:16} {r.protocol:15} "
            f"{'-' if ndcg is None else f'{ndcg:.4f}':>8}  {verdict} [{r.deployment}] {r.code_commit[:12]}"
        )


def cmd_history(args: argparse.Namespace) -> None:
    index, deployment = _index(args.deployment)
    events = index.history(deployment)
    if args.json:
        print(json.dumps([e.to_dict() for e in events], indent=2))
        return
    if not events:
        print(f"deployment {deployment!r}: no champion yet ({index.describe()})")
        return
    print(f"deployment {deployment!r} ({len(events)} entries, newest last; the last one is live):")
    for e in events:
        print(
            f"#{e.id:<4} {e.at[:19]}  {e.action:8} {e.model_tag:44} {e.metric} {e.value:.4f}  "
            f"data {e.data_version}  run {e.run_uid}"
        )
        print(f"       {e.reason}")


def cmd_status(args: argparse.Namespace) -> None:
    """What is live and how it does online: the champion, the logs, served quality per model and day."""
    from datetime import timedelta

    from ingestion.event_log import open_event_log
    from monitoring.online_quality import ONLINE_PROJECT, online_quality, publish_online_quality
    from serving.served_log import read_served, served_store

    index, deployment = _index(args.deployment)
    _, layout = stages.context()
    champion = index.champion(deployment)
    if champion is None:
        print(f"deployment {deployment!r}: no champion yet ({index.describe()})")
    else:
        print(
            f"deployment {deployment!r}: {champion.model} {champion.model_tag}, live since {champion.at[:19]} "
            f"({champion.action}; {champion.metric} {champion.value:.4f} offline)"
        )
    served = read_served(served_store(layout))
    events = open_event_log(layout).read()
    print(f"served log {served_store(layout).location}: {len(served)} answers logged")
    print(f"event log {open_event_log(layout).location}: {len(events)} pushed events")
    quality = online_quality(served, events, k=args.k, horizon=timedelta(hours=args.horizon_hours))
    if quality.empty:
        print("online quality: nothing served yet")
        return
    published = publish_online_quality(
        served, events, layout.evidently_workspace, k=args.k, horizon=timedelta(hours=args.horizon_hours)
    )
    print(
        f"online quality in the Evidently workspace (make drift-ui, project '{ONLINE_PROJECT}'): "
        f"{published['added']} days added, {published['replaced']} updated"
    )
    print(
        f"online quality: lists served, and of those whose {args.horizon_hours} h horizon has ended, the share "
        f"followed by an interaction with one of their first {args.k} items (hit rate) and NDCG@{args.k}"
    )
    print(f"{'model_tag':44} {'day':10} {'lists':>6} {'scored':>6} {'users':>6} {'hit rate':>8} {'ndcg':>7}")
    for row in quality.itertuples():
        hit = "-" if row.scored == 0 else f"{row.hit_rate:.3f}"
        ndcg = "-" if row.scored == 0 else f"{row.ndcg:.4f}"
        print(
            f"{row.model_tag[:44]:44} {row.day:10} {row.lists:>6} {row.scored:>6} {row.users:>6} {hit:>8} {ndcg:>7}"
        )


def cmd_rollback(args: argparse.Namespace) -> None:
    from serving.package import RollbackError, rollback

    index, deployment = _index(args.deployment)
    _, layout = stages.context()
    started = time.perf_counter()
    try:
        event = rollback(index, layout, deployment, args.to)
    except RollbackError as exc:
        raise SystemExit(f"recforge rollback: {exc}") from None
    print(
        f"deployment {deployment!r}: champion is now {event.model_tag} ({event.model}, {event.metric} "
        f"{event.value:.4f}, features {event.feature_namespace}); was {event.previous_tag}. "
        f"Took {time.perf_counter() - started:.2f} s; a running service follows within its poll interval."
    )


def demo_log_path(layout: Any) -> Path:
    """A new log file per demo under ``RECFORGE_HOME/logs`` (kept: a person reads it after a failure)."""
    path = Path(layout.home) / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def log_to_file(path: Path) -> None:
    """This process's log records and warnings go to ``path`` only (the console keeps the phase lines)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)


def cmd_demo(args: argparse.Namespace) -> None:
    """Run the model DAGs through Airflow (``dag.test()``: real tasks, SQLite metadata DB), one line per
    task on the console, everything else in a log file; then the leaderboard and the gate verdicts."""
    cfg, layout = stages.context()
    env = airflow_env(layout)
    log_path = demo_log_path(layout)
    log_to_file(log_path)
    print(f"recforge demo: full logs in {log_path}", flush=True)
    started = time.perf_counter()
    conf = json.dumps(_pairs(args.conf, "--conf"))
    with open(log_path, "a") as log_file:
        airflow_bin = os.path.join(os.path.dirname(sys.executable), "airflow")
        step = time.perf_counter()
        migrate = subprocess.run(
            [airflow_bin, "db", "migrate"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    if migrate.returncode != 0:
        raise SystemExit(
            f"recforge demo: airflow db migrate failed (exit code {migrate.returncode}); log: {log_path}"
        )
    print(phase_line("airflow", "db migrate", "success", time.perf_counter() - step), flush=True)
    for model in args.models:
        dag_id = f"recsys_{model}"
        log.info("running DAG %s through Airflow", dag_id)
        run = [sys.executable, "-m", "orchestration.dag_run", dag_id, conf, str(log_path)]
        if subprocess.call(run, env=env) != 0:
            raise SystemExit(
                f"recforge demo: DAG {dag_id} failed (the task and its error above); log: {log_path}"
            )
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    print_summary(write_summary(layout, cfg))


def print_summary(summary_path, last_line: bool = True) -> None:
    """The leaderboard, each model's newest gate outcome, and (last) the path of summary.json."""
    summary = json.loads(open(summary_path).read())
    print()
    print(open(summary["leaderboard"]).read())
    for name, record in summary["models"].items():
        verdict = "PROMOTED" if record["promoted"] else "not promoted"
        print(f"{name}: {verdict} - {record['reason']} (bento: {record['bento_tag']})")
        if record.get("evaluation_report"):
            print(f"{name}: evaluation report {record['evaluation_report']}")
        if record.get("drift_detected") is not None:
            print(f"{name}: drift detected={record['drift_detected']} {record.get('drift_reasons') or ''}")
    if last_line:
        print(summary_path)


def cmd_summary(_: argparse.Namespace) -> None:
    cfg, layout = stages.context()
    print_summary(write_summary(layout, cfg))


def _write_example(args: argparse.Namespace) -> Any:
    """The files of the example dataset ``args`` names (``ShopFiles`` or ``SyntheticFiles``)."""
    from ingestion.examples import write_shop
    from ingestion.synthetic import write_synthetic

    if args.dataset == "synthetic":
        return write_synthetic(
            args.out_dir,
            n_events=args.events,
            n_items=args.items,
            n_users=args.users,
            seed=args.seed,
            item_skew=1.0 if args.item_skew is None else args.item_skew,
            days=180.0 if args.days is None else args.days,
        )
    if args.item_skew is not None or args.days is not None:
        raise UsageError("--item-skew and --days apply to synthetic only")
    return write_shop(
        args.out_dir, n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed
    )


def cmd_example(args: argparse.Namespace) -> None:
    """Write an example dataset (its files, schema and a pipeline config that selects it)."""
    try:
        files = _write_example(args)
    except UsageError:
        raise
    except ValueError as exc:  # sizes that do not fit together: what was typed is wrong
        raise UsageError(str(exc)) from None
    print(f"wrote {files.events}, {files.users}, {files.items} and the schema {files.schema}")
    # A home of its own: the dataset's runs, champion and features stay apart from other data's.
    env = f"RECFORGE_HOME={files.config.parent / 'home'} RECFORGE_CONFIG={files.config}"
    model = "bpr" if args.dataset == "synthetic" else "twotower"
    print(f"run a model on it: {env} .venv/bin/recforge run {model}")
    print(f"serve the champion: {env} make serve")


def cmd_push_events(args: argparse.Namespace) -> None:
    """Send an events file to a running service's POST /events (RECFORGE_API_KEY if it has a key)."""
    from serving.client import API_KEY_ENV, push_events

    report = push_events(Path(args.file), args.url, os.environ.get(API_KEY_ENV) or None, args.batch_size)
    print(report.describe())
    if report.refused:
        raise SystemExit(1)


def cmd_feast(args: argparse.Namespace) -> None:
    """The feast CLI on one namespace (default: the namespace the deployment's champion serves from)."""
    from features.store import DIR_ENV, PROJECT_ENV, repo_path, store_yaml

    cfg, layout = stages.context()
    namespace = args.namespace
    if namespace is None:
        index, deployment = _index()
        champion = index.champion(deployment)
        if champion is None:
            known = sorted(p.name for p in layout.feast.glob("recforge_*"))
            raise SystemExit(f"deployment {deployment!r} has no champion; pass --namespace, one of {known}")
        namespace = champion.feature_namespace
    env = dict(os.environ, RECFORGE_HOME=str(layout.home), **{PROJECT_ENV: namespace})
    env[DIR_ENV] = str(layout.feast_namespace(namespace))
    repo = repo_path(cfg.features)
    feast_bin = os.path.join(os.path.dirname(sys.executable), "feast")
    cmd = [feast_bin, "-c", str(repo), "-f", str(store_yaml(repo)), *args.feast_args]
    raise SystemExit(subprocess.call(cmd, env=env))


def cmd_airflow(args: argparse.Namespace) -> None:
    _, layout = stages.context()
    raise SystemExit(_airflow(args.airflow_args, airflow_env(layout), check=False))


PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # Airflow's SimpleAuthManager writes it
OWNER_ONLY = 0o600


def write_owner_only(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), OWNER_ONLY)
        handle.write(text)


def airflow_password(env: dict[str, str], timeout: float = 120.0) -> str:
    """The admin password: ``RECFORGE_AIRFLOW_PASSWORD`` if set, else the one Airflow generated. The
    file Airflow generates is left world-readable by Airflow: made owner-only here."""
    path = os.path.join(env["AIRFLOW_HOME"], PASSWORDS_FILE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isfile(path) and os.path.getsize(path):
            os.chmod(path, OWNER_ONLY)
            return json.loads(open(path).read())["admin"]
        time.sleep(1)
    raise TimeoutError(f"Airflow wrote no password file at {path} within {timeout:.0f} s")


def seed_password(env: dict[str, str]) -> None:
    """Let a team pick the local admin password through the environment (never from the repo)."""
    password = os.environ.get("RECFORGE_AIRFLOW_PASSWORD")
    if password:
        write_owner_only(os.path.join(env["AIRFLOW_HOME"], PASSWORDS_FILE), json.dumps({"admin": password}))


def write_login(path: Path, url: str, username: str, password: str) -> None:
    """The UI's address and login, for a person who lost the terminal: owner-only, like the password."""
    write_owner_only(
        path, json.dumps({"url": url, "username": username, "password": password}, indent=2) + "\n"
    )


def wait_until_serving(url: str, server: subprocess.Popen, log_path: Path, timeout: float = 300.0) -> None:
    """Return once the API server answers ``url``; fail with the log's path if it exits or never does."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"recforge airflow-ui: airflow standalone exited ({server.returncode}); log: {log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    raise SystemExit(f"recforge airflow-ui: the UI did not answer within {timeout:.0f} s; log: {log_path}")


def dag_list_lines(dag_ids: list[str], width: int = 100) -> list[str]:
    """``DAGs (N): a, b, ...`` wrapped to ``width`` columns."""
    import textwrap

    return textwrap.wrap(f"DAGs ({len(dag_ids)}): {', '.join(dag_ids)}", width, subsequent_indent="  ")


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
    from orchestration.dag_catalog import dag_ids

    _, layout = stages.context()
    port = args.port or int(os.environ.get("RECFORGE_AIRFLOW_PORT") or 0) or free_port()
    env = airflow_env(layout, api_port=port)
    host = env["AIRFLOW__API__HOST"]
    seed_password(env)
    airflow_bin = os.path.join(os.path.dirname(sys.executable), "airflow")
    # Own process group: standalone forks scheduler, API server and workers that must stop with it.
    # Its chatter goes to a log file, so the URL and the login stay on screen.
    log_path = layout.airflow_home / "standalone.log"
    log_to_file(log_path)  # this process reads the DAG files, which imports Airflow: its logs go there too
    print(f"starting Airflow on {host}:{port}; its output goes to {log_path}", flush=True)
    with open(log_path, "a") as log_file:
        server = subprocess.Popen(
            [airflow_bin, "standalone"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # On SIGTERM (not only Ctrl-C) unwind through `finally`, so standalone does not outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        os.environ["AIRFLOW_HOME"] = env["AIRFLOW_HOME"]  # reading the DAG files imports Airflow's SDK
        dags = dag_ids()
        password = airflow_password(env)
        wait_until_serving(f"http://127.0.0.1:{port}/api/v2/monitor/health", server, log_path)
        shown = "localhost" if host in ("127.0.0.1", "::1") else host
        url = f"http://{shown}:{port}"
        login_path = layout.airflow_home / "ui_login.json"
        write_login(login_path, url, "admin", password)
        print("\n".join(dag_list_lines(dags)))
        print(
            "Trigger a DAG -> the form takes its parameters; each model run's note says whether it promoted."
        )
        print(f"Stop with Ctrl-C. Login saved (owner-only) in {login_path}")
        print(f"Airflow UI: {url}  login: admin / {password}", flush=True)
        raise SystemExit(server.wait())
    finally:
        stop_process_group(server)


def cmd_cluster(args: argparse.Namespace) -> None:
    """The production profile's Airflow as local processes (orchestration/cluster.py); Ctrl-C stops it."""
    from orchestration.cluster import STATE_FILE, Cluster, cluster_dir, cluster_env, stop_recorded

    _, layout = stages.context()
    if args.action == "stop":
        stopped = stop_recorded(layout)
        print(f"stopped {', '.join(stopped)}" if stopped else f"no cluster recorded in {cluster_dir(layout)}")
        return
    state = cluster_dir(layout) / STATE_FILE
    if state.is_file():
        raise SystemExit(
            f"recforge cluster: a cluster is recorded in {state}; stop it first (recforge cluster stop)"
        )
    port = args.port or int(os.environ.get("RECFORGE_AIRFLOW_PORT") or 0) or free_port()
    env = cluster_env(layout, port)
    seed_password(env)
    cluster = Cluster(layout, env)
    print(f"migrating the metadata DB; logs go to {cluster.log_dir}", flush=True)
    cluster.migrate()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `stop` or kill: unwind through `finally`
    try:
        cluster.start()
        password = airflow_password(env)
        cluster.wait_until_serving()
        login_path = layout.airflow_home / "ui_login.json"
        url = f"http://localhost:{port}"
        write_login(login_path, url, "admin", password)
        print(f"started {', '.join(cluster.processes)} (CeleryExecutor; logs: {cluster.log_dir}/<name>.log)")
        print(f"Stop with Ctrl-C or `recforge cluster stop`. Login saved (owner-only) in {login_path}")
        print(f"Airflow UI: {url}  login: admin / {password}", flush=True)
        while not (exited := cluster.exited()):
            time.sleep(2)
        raise SystemExit(f"recforge cluster: {cluster.describe_exit(exited)}; stopping the others")
    finally:
        print("recforge cluster: stopping", flush=True)
        if killed := cluster.stop():
            print(f"recforge cluster: killed {', '.join(killed)} (no exit within a minute)", flush=True)


def run_epilog() -> str:
    """``recforge run --help``'s epilog: the models (from the registry the DAG factory reads), examples."""
    from training.models import MODELS, pipeline_models

    width = max(map(len, pipeline_models()))
    models = "\n".join(f"  {name:{width}}  {MODELS[name].description}" for name in pipeline_models())
    baselines = ", ".join(name for name in MODELS if name not in pipeline_models())
    examples = "\n".join(f"  {command}\n      {what}" for command, what in RUN_EXAMPLES)
    return (
        f"models:\n{models}\n  (baselines, evaluated inside every run: {baselines})\n\n"
        f"examples:\n{examples}\n\n"
        "--set takes the keys of configs/pipeline.yaml (section.key); --hparam the model's own\n"
        "(configs/models/<model>.yaml). Both are checked before any stage runs. An error is one line\n"
        "(exit status 2: what was typed is wrong; 1: the run failed); --debug adds its traceback."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recforge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # Also after the command (`recforge run bpr --debug`); SUPPRESS keeps a flag given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(sub.add_parser, parents=[debug])

    run = add_parser(
        "run",
        help="run every stage for one model in-process",
        epilog=run_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("model", help="one of the models below")
    run.add_argument("--run-id")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override, e.g. split.protocol=random_holdout",
    )
    run.add_argument(
        "--hparam", action="append", metavar="KEY=VALUE", help="model hyperparameter override, e.g. lr=0.001"
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="check everything (model, settings, paths, hyperparameters), run nothing",
    )
    run.set_defaults(func=cmd_run)

    demo = add_parser("demo", help="run the model DAGs end to end through Airflow, then print the summary")
    demo.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    demo.add_argument("--conf", action="append", metavar="PARAM=VALUE", help="DAG params, e.g. max_epochs=5")
    demo.set_defaults(func=cmd_demo)

    add_parser("summary", help="rewrite and print the run summary").set_defaults(func=cmd_summary)

    runs = add_parser("runs", help="the run index: runs, newest first")
    runs.add_argument("--model")
    runs.add_argument("--limit", type=int, default=30)
    runs.set_defaults(func=cmd_runs)

    history = add_parser("history", help="promotions and rollbacks of a deployment")
    history.add_argument("--deployment", help="default: the config's deployment")
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=cmd_history)

    status = add_parser("status", help="the live champion and how its served lists do online")
    status.add_argument("--deployment")
    status.add_argument("--k", type=int, default=10, help="list depth scored")
    status.add_argument(
        "--horizon-hours", type=float, default=24.0, help="how long after serving a click counts"
    )
    status.set_defaults(func=cmd_status)

    rollback = add_parser("rollback", help="restore the previous (or a named) champion, atomically")
    rollback.add_argument("--deployment", help="default: the config's deployment")
    rollback.add_argument("--to", metavar="TAG", help="a BentoML model tag from `recforge history`")
    rollback.set_defaults(func=cmd_rollback)

    airflow = add_parser("airflow", help="the airflow CLI with recforge's environment")
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=cmd_airflow)

    example = add_parser(
        "example",
        help="write an example dataset (shop: attributes unlike MovieLens; synthetic: a large log for scale tests)",
    )
    example.add_argument("dataset", choices=["shop", "synthetic"])
    example.add_argument("out_dir", type=Path)
    example.add_argument("--events", type=int, default=60_000)
    example.add_argument("--users", type=int, default=2_000)
    example.add_argument("--items", type=int, default=1_500)
    example.add_argument("--seed", type=int, default=7)
    example.add_argument(
        "--item-skew", type=float, help="synthetic: power-law exponent of item popularity (default 1.0)"
    )
    example.add_argument("--days", type=float, help="synthetic: days the events span (default 180)")
    example.set_defaults(func=cmd_example)

    push = add_parser(
        "push-events",
        help="send an events file (CSV/Parquet: user_id,item_id,timestamp[,rating]) to a running service",
    )
    push.add_argument("file")
    push.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default: make serve's)")
    push.add_argument("--batch-size", type=int, default=1000, help="events per request (at most 1000)")
    push.set_defaults(func=cmd_push_events)

    feast = add_parser("feast", help="the feast CLI on one Feast namespace (data version)")
    feast.add_argument("--namespace", help="default: the namespace of the deployment's champion")
    feast.add_argument("feast_args", nargs=argparse.REMAINDER, help="e.g. feature-views list")
    feast.set_defaults(func=cmd_feast)

    ui = add_parser("airflow-ui", help="airflow standalone (UI + scheduler) on a free port")
    ui.add_argument(
        "--port",
        type=int,
        help="default: $RECFORGE_AIRFLOW_PORT, else a free port (make airflow AIRFLOW_PORT=...)",
    )
    ui.set_defaults(func=cmd_airflow_ui)

    cluster = add_parser(
        "cluster",
        help="Airflow with the CeleryExecutor (Postgres, Redis) as local processes, two workers; Ctrl-C stops",
    )
    cluster.add_argument("action", nargs="?", choices=["start", "stop"], default="start")
    cluster.add_argument(
        "--port",
        type=int,
        help="the API server's (UI's) port; default: $RECFORGE_AIRFLOW_PORT, else a free one",
    )
    cluster.set_defaults(func=cmd_cluster)

    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """Parse and run one command; returns the exit status. Errors are one line on stderr (2: what was
    typed is wrong, 1: it failed); the traceback only with ``--debug``."""
    from ingestion.schema import IngestError
    from pipeline.schema import SchemaError
    from training.models import HyperparameterError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UsageError, ConfigError, HyperparameterError, SchemaError) as exc:
        if args.debug:
            raise
        print(f"recforge {args.command}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130
    except IngestError as exc:  # the message names the file and line: nothing to add
        if args.debug:
            raise
        print(f"recforge {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for a person; --debug shows the rest
        if args.debug:
            raise
        text = " ".join(str(exc).split()) or "(no message)"
        print(
            f"recforge {args.command}: {type(exc).__name__}: {text} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run_cli(argv)
    finally:
        close_default_duckdb_connection()  # also when a command exits with SystemExit
    # Nothing may follow the last line (the summary path, or the error): a command that opened Feast's
    # offline store would otherwise end with DuckDB's "leaked instance" report (features.duckdb_exit).
    sys.exit(code)


if __name__ == "__main__":
    main()
