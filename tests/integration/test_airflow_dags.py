"""The DAGs under real Airflow 3: parse (DagBag), run in-process (dag.test), and run under
``airflow standalone`` triggered over the REST API v2 — the way a user triggers them from the UI.

Airflow reads its configuration when first imported, so each check runs in a subprocess with its
own AIRFLOW_HOME (SQLite) and RECFORGE_HOME.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from orchestration.airflow_env import airflow_env, free_port
from orchestration.cli import stop_process_group
from pipeline.config import load_config
from pipeline.layout import Layout
from tests.integration.airflow_rest import (
    finished_state,
    generated_password,
    task_states,
    token,
    trigger,
    wait_for,
)
from tests.integration.pipeline_home import make_home

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def python(code: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dagbag_has_every_model_dag_and_no_import_errors(tmp_path):
    env = airflow_env(Layout(tmp_path), base=make_home(tmp_path))
    result = python(
        """
import json, os
from airflow.dag_processing.dagbag import DagBag
from pipeline.config import load_tuning_grid
from training.models import MODELS, pipeline_models
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
dags = {d: {"tasks": [t.task_id for t in bag.dags[d].tasks], "params": sorted(bag.dags[d].params),
            "doc": bag.dags[d].doc_md or "", "task_docs": all(t.doc_md for t in bag.dags[d].tasks),
            "mapped": [t.task_id for t in bag.dags[d].tasks if getattr(t, "_is_mapped", False)]}
        for d in bag.dag_ids}
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags,
                  "models": pipeline_models(),
                  "tunable": [m for m in pipeline_models() if MODELS[m].trainable or load_tuning_grid(m)]}))
""",
        env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    expected = [
        "ingest",
        "validate",
        "features",
        "split",
        "train",
        "evaluate",
        "gate",
        "package",
        "promote",
        "drift",
        "finish",
    ]
    assert {"bpr", "sasrec"} <= set(report["models"])
    for model in report["models"]:
        dag = report["dags"][f"recsys_{model}"]
        assert dag["tasks"] == expected
        assert {"split_protocol", "max_epochs", "hparams", "deployment"} <= set(dag["params"])
        assert dag["doc"] and dag["task_docs"]
    assert "recsys_drift_monitor" in report["dags"]
    for dag_id, dag in report["dags"].items():  # the doc is generated from the DAG: every task and field
        listed = re.findall(r"^\d+\. \*\*(\w+)\*\*", dag["doc"], flags=re.MULTILINE)
        assert listed == dag["tasks"], dag_id  # these DAGs create their tasks in graph order
        assert all(f"| `{name}` |" in dag["doc"] for name in dag["params"]), dag_id
    # One tuning DAG per trained model and per closed-form model with a tuning grid (EASE): a planning
    # task and a dynamically mapped training task per round (configs/pipeline.yaml: tuning.rounds).
    tuning = {d for d in report["dags"] if d.startswith("recsys_tune_")}
    assert "ease" in report["models"] and "ease" in report["tunable"] and "content" not in report["tunable"]
    assert tuning == {f"recsys_tune_{m}" for m in report["tunable"]}
    assert len(report["dags"]) == len(report["models"]) + 1 + len(report["tunable"])
    for dag_id in tuning:
        dag = report["dags"][dag_id]
        suffixes = ["", *(f"_r{r}" for r in range(1, load_config().tuning.rounds))]
        rounds = [(f"plan_candidates{suffix}", f"train_candidate{suffix}") for suffix in suffixes]
        planned = [task for pair in rounds for task in pair]
        assert dag["tasks"] == [
            "ingest",
            "validate",
            "features",
            "split",
            *planned,
            "pick_best",
            "evaluate_winner",
        ]
        assert dag["mapped"] == [train for _, train in rounds]
        assert {"split_protocol", "search", "max_candidates", "tuning_grid", "hparams"} <= set(dag["params"])
        assert dag["doc"] and dag["task_docs"]


DAG_TEST = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from sqlalchemy import select
dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(sys.argv[2])
run = dag.test(run_conf=json.loads(sys.argv[1]))
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
with create_session() as session:  # the note is written by recforge's plugin when the run ends
    note = session.scalars(select(DagRun).where(DagRun.run_id == run.run_id)).one().note
print(json.dumps({"state": str(run.state), "tasks": states, "note": note, "run_id": run.run_id}))
"""


def _dag_test(env: dict[str, str], conf: dict, dag_id: str = "recsys_bpr") -> dict:
    result = subprocess.run(
        [sys.executable, "-c", DAG_TEST, json.dumps(conf), dag_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dag_test_runs_recsys_bpr_end_to_end_and_says_whether_it_promoted(tmp_path):
    """Two runs through real Airflow: one the deployment cannot take (another protocol), one it can.

    Both DAG runs succeed; what differs is visible in the grid without opening a log: the ``promote``
    task is skipped for the first and succeeds for the second, and each run's note says why.
    """
    from pipeline.run_index import RunIndex

    # The deployment judges on random_holdout (the home's file); the first run asks for temporal.
    home = make_home(tmp_path, sample_users=80, split={"protocol": "random_holdout"})
    env = airflow_env(Layout(tmp_path), base=home)
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]

    other = _dag_test(env, {"max_epochs": 1, "split_protocol": "temporal"})
    assert other["state"] == "success" and other["tasks"]["promote"] == "skipped", other
    assert other["tasks"]["finish"] == "success"
    assert other["note"].startswith("NOT PROMOTED bpr into deployment 'default': not eligible"), other["note"]
    assert "split protocol temporal != random_holdout" in other["note"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    bpr = summary["models"]["bpr"]
    assert bpr["protocol"] == "temporal"  # the trigger-form parameter reached the stages
    assert (
        0.0 <= bpr["metrics"]["ndcg@10"] <= 1.0 and not bpr["promoted"]
    )  # 1 epoch on 15 test users: may be 0
    assert {"popularity", "itemknn"} <= set(summary["baselines"])
    assert summary["deployments"]["default"] is None
    drift = json.loads(Path(bpr["run_dir"], "drift.json").read_text())
    assert Path(drift["data_drift_html"]).is_file() and 0.0 <= drift["data_drift_share"] <= 1.0

    # Hyperparameters from the trigger form; with them BPR clears Popularity on this slice (seeded).
    own = _dag_test(env, {"max_epochs": 4, "hparams": {"lr": 0.01, "batch_size": 128}})
    assert own["state"] == "success" and own["tasks"]["promote"] == "success", own
    assert own["note"].startswith("PROMOTED bpr into deployment 'default'"), own["note"]
    index = RunIndex(f"sqlite:///{tmp_path / 'run_index.db'}")
    champion = index.champion("default")
    assert champion.run_uid.startswith("bpr/") and champion.protocol == "random_holdout"
    assert f"now deployment 'default' serves {champion.model_tag}" in own["note"]
    records = sorted(index.runs(model="bpr"), key=lambda r: r.started_at)
    assert [(r.status, r.promoted, r.eligible) for r in records] == [
        ("completed", False, False),
        ("completed", True, True),
    ]
    run_config = json.loads(Path(records[1].run_dir, "run_config.json").read_text())
    assert run_config["hparams"]["lr"] == 0.01 and run_config["config"]["trainer"]["max_epochs"] == 4


def test_dag_test_runs_the_shop_through_an_attribute_aware_model(tmp_path):
    """A shop's data (its own schema, not MovieLens) through recsys_deepfm under real Airflow: the
    schema's attributes reach the model, the evaluation and the drift report."""
    from ingestion.examples import write_shop
    from training.artifact import load_model_artifact

    files = write_shop(tmp_path / "shop", n_users=300, n_items=200, n_events=6000, cold_items=5, seed=5)
    source = {
        "kind": "events",
        "path": str(files.events),
        "users": str(files.users),
        "items": str(files.items),
        "name": "shop",
        "schema": str(files.schema),
        "sample_users": None,
    }
    env = airflow_env(Layout(tmp_path), base=make_home(tmp_path, source=source, max_epochs=2))
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]

    run = _dag_test(env, {"hparams": {"embedding_size": 8, "batch_size": 256}}, "recsys_deepfm")
    assert run["state"] == "success", run
    assert all(run["tasks"][t] == "success" for t in ("train", "evaluate", "gate", "drift", "finish")), run
    deepfm = json.loads((tmp_path / "summary.json").read_text())["models"]["deepfm"]
    assert 0.0 < deepfm["metrics"]["ndcg@10"] <= 1.0 and deepfm["metrics"]["auc"] > 0.5, deepfm["metrics"]
    assert run["note"].startswith("PROMOTED" if deepfm["promoted"] else "NOT PROMOTED"), run["note"]
    artifact = load_model_artifact(Path(deepfm["run_dir"]) / "model")
    assert [f.name for f in artifact.attributes.items.fields] == [
        "category",
        "brand",
        "price",
        "tags",
        "title",
    ]
    drift = json.loads(Path(deepfm["run_dir"], "drift.json").read_text())
    assert {"segment", "country", "category", "brand", "price"} <= set(drift["data_columns"])
    assert Path(drift["data_drift_html"]).is_file()


def test_dag_test_runs_a_tuning_dag_on_tiny_synthetic_data(tmp_path):
    """recsys_tune_bpr end to end: two candidates at two training seeds each (four mapped instances),
    winner by its mean validation NDCG@10, test for the winner only."""
    from tests.conftest import synthetic_examples

    events = synthetic_examples(n_users=30, n_items=40, n_events=900, seed=3)
    events = events[["user_id", "item_id", "event_timestamp", "rating"]].assign(
        timestamp=lambda f: f["event_timestamp"].astype("int64") // 10**9
    )
    events.drop(columns="event_timestamp").to_csv(tmp_path / "events.csv", index=False)
    source = {
        "kind": "events",
        "path": str(tmp_path / "events.csv"),
        "name": "synthetic",
        "sample_users": None,
    }
    env = airflow_env(Layout(tmp_path), base=make_home(tmp_path, source=source))
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    result = python(
        """
import json, os
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag("recsys_tune_bpr")
run = dag.test(run_conf={"max_epochs": 2, "split_protocol": "random_holdout", "max_candidates": 2,
                         "training_seeds": 2,
                         "tuning_grid": {"lr": [0.0001, 0.01], "embedding_size": [16]}})
mapped = [ti for ti in run.get_task_instances() if ti.task_id == "train_candidate"]
print(json.dumps({"state": str(run.state), "mapped": sorted(ti.map_index for ti in mapped),
                  "names": sorted(ti.rendered_map_index for ti in mapped)}))
""",
        env,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["state"] == "success", result.stdout[-5000:]
    assert report["mapped"] == [0, 1, 2, 3]  # one task instance per candidate and training seed
    seed = load_config().trainer.seed
    assert report["names"] == ["c00", f"c00-seed{seed + 1}", "c01", f"c01-seed{seed + 1}"]
    (tuning_json,) = (tmp_path / "runs" / "bpr").glob("tune-*/tuning.json")
    tuning = json.loads(tuning_json.read_text())
    assert [c["overrides"] for c in tuning["candidates"]] == [
        {"lr": 0.0001, "embedding_size": 16},
        {"lr": 0.01, "embedding_size": 16},
    ]
    assert tuning["training_seeds"] == 2
    for candidate in tuning["candidates"]:
        assert [s["seed"] for s in candidate["seeds"]] == [seed, seed + 1]
        assert all(Path(s["train_manifest"]).is_file() for s in candidate["seeds"])
        assert candidate["train_manifest"] == candidate["seeds"][0]["train_manifest"]
        mean = sum(s["valid_ndcg@10"] for s in candidate["seeds"]) / 2
        assert candidate["valid_ndcg@10"] == pytest.approx(mean)
    best_valid = max(c["valid_ndcg@10"] for c in tuning["candidates"])
    assert tuning["winner"]["valid_ndcg@10"] == best_valid and tuning["selected_on"] == "valid"
    assert 0.0 <= tuning["winner_test_metrics"]["ndcg@10"] <= 1.0
    assert (tuning_json.parent / "best_params.yaml").is_file()
    assert (tuning_json.parent / "evaluation.json").is_file()
    # Only the winner was evaluated on test.
    evaluated = [
        c["id"] for c in tuning["candidates"] if (Path(c["train_manifest"]).parent / "metrics.json").exists()
    ]
    assert evaluated == [tuning["winner"]["id"]]


def test_standalone_airflow_runs_a_dag_triggered_over_rest(tmp_path):
    port = free_port()
    env = airflow_env(
        Layout(tmp_path), api_port=port, base=make_home(tmp_path, sample_users=60, max_epochs=1)
    )
    env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] = "5"
    log = open(tmp_path / "standalone.log", "w")
    server = subprocess.Popen(
        [AIRFLOW, "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        password = wait_for(lambda: generated_password(env), 240, "the admin password file")
        jwt = wait_for(lambda: token(base, password), 240, "the API server to issue a token")
        headers = {"Authorization": f"Bearer {jwt}"}
        run_id = trigger(base, headers, "recsys_bpr", {"max_epochs": 1})
        state = wait_for(
            lambda: finished_state(base, headers, "recsys_bpr", run_id), 900, "the triggered run to finish"
        )
        if state != "success":
            pytest.fail(
                f"run {run_id} ended {state}: {task_states(base, headers, 'recsys_bpr', run_id)}"
                f"\n{(tmp_path / 'standalone.log').read_text()[-4000:]}"
            )
        bpr = json.loads((tmp_path / "summary.json").read_text())["models"]["bpr"]
        assert 0.0 <= bpr["metrics"]["ndcg@10"] <= 1.0
        run_dir = Path(bpr["run_dir"])
        assert (run_dir / "model" / "model.json").is_file() and (run_dir / "drift.json").is_file()
        assert bpr["run_id"].startswith("manual")  # the REST-triggered run, not some other one
        # The scheduler's listener wrote the gate's outcome as the run's note (shown in the grid).
        note = requests.get(
            f"{base}/api/v2/dags/recsys_bpr/dagRuns/{run_id}", headers=headers, timeout=10
        ).json()["note"]
        verdict = "PROMOTED" if bpr["promoted"] else "NOT PROMOTED"
        assert note.startswith(f"{verdict} bpr into deployment 'default'"), note
    finally:
        stop_process_group(server)  # scheduler, API server and executor workers too
        log.close()
