"""One DAG per registered model (``recsys_<model>``) plus the drift monitor that requests retraining.

Thin on purpose: the tasks are the stages of ``orchestration.flow.MODEL_PIPELINE`` (built by
``orchestration.dag_tasks.stage_tasks``), passing manifest paths through XCom. Adding a model to
``training.models`` gives it a DAG here with no edit to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import DAG, Asset, AssetAlias, Param, task

# The DAG processor runs this file from the dags folder; the stage packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration.dag_docs import dag_doc_md  # noqa: E402
from orchestration.dag_params import MONITOR_PARAMS, PIPELINE_PARAMS  # noqa: E402
from orchestration.dag_tasks import run_overrides, stage_tasks  # noqa: E402
from orchestration.flow import MODEL_PIPELINE  # noqa: E402
from training.models import MODELS, pipeline_models  # noqa: E402


def retrain_asset(model: str) -> Asset:
    """Asset whose events (emitted when drift is detected) schedule ``recsys_<model>``."""
    return Asset(f"recforge://retrain/{model}")


MODEL_DAG_INTRO = """
Raw data to a served, drift-monitored recommender: evaluation is full ranking against the Popularity,
ItemKNN and UserKNN baselines on the same split.

The run competes for one **deployment** (the `deployment` field of the form; its data source, split
protocol and metric are fixed in the pipeline config). The gate re-scores the deployment's champion on
this run's split when it was judged on other data. **promote** succeeds only when this run became the
champion; it is *skipped* otherwise, and the run's note says why (promoted / not promoted, with the
numbers).

Triggered by hand (the form's fields are in the table below) or by the drift monitor when drift is
detected in this model's data (asset `recforge://retrain/{model}`). Artifacts land under
`$RECFORGE_HOME/runs/{model}/<run_id>`; the run summary in `$RECFORGE_HOME/summary.json`.
"""


def build_model_dag(model: str) -> DAG:
    spec = MODELS[model]
    with DAG(
        dag_id=f"recsys_{model}",
        description=f"{spec.description}: raw data to a served, drift-monitored recommender",
        schedule=[retrain_asset(model)],
        catchup=False,
        max_active_runs=1,
        tags=["recforge", spec.kind, model],
        params={
            **PIPELINE_PARAMS,
            "hparams": Param({}, type="object", description=f"overrides of configs/models/{model}.yaml"),
        },
        default_args={"owner": "recforge"},
    ) as dag:
        stage_tasks(model, [stage.name for stage in MODEL_PIPELINE])
    dag.doc_md = dag_doc_md(dag, f"recsys_{model} — {spec.description}", MODEL_DAG_INTRO.format(model=model))
    return dag


RETRAIN_ALIAS = AssetAlias("recforge-retrain")  # resolved at run time to the drifted champion's asset


DRIFT_MONITOR_INTRO = """
Reads the deployment's champion from the run index and compares the newest window of events with the
window just before it (same size, per-event columns, thresholds calibrated by `bench/bench_drift.py`),
plus the champion's recommendations and its ranking quality on the newest window. The report states
the windows, the verdict and what to do; it lands in the monitor's run directory and the Evidently
workspace. On drift, **request_retrain** emits `recforge://retrain/<champion model>` (through the asset
alias `recforge-retrain`), which schedules `recsys_<model>`; otherwise it emits nothing and says why.
The form (table below) sets the deployment, the window and the thresholds for this run.
"""


def build_drift_monitor_dag() -> DAG:
    """Daily drift check of a deployment's champion; real drift emits that model's retrain asset event."""
    with DAG(
        dag_id="recsys_drift_monitor",
        description="Evidently drift check of the deployment's champion; drift triggers its retraining",
        schedule="@daily",
        catchup=False,
        tags=["recforge", "monitoring"],
        params=MONITOR_PARAMS,
    ) as dag:

        @task(doc_md="Drift of the deployment's champion: the newest window against the one before it.")
        def check_champion() -> dict:
            from orchestration.monitor import check_champion_drift

            return check_champion_drift(run_overrides())

        @task(
            outlets=[RETRAIN_ALIAS],
            doc_md="On drift, emit the champion model's retrain asset event; otherwise nothing.",
        )
        def request_retrain(result: dict, *, outlet_events=None) -> str:
            if not result.get("drift_detected"):
                return f"no retraining: {result.get('verdict') or 'no drift'} ({result.get('model') or 'no champion'})"
            outlet_events[RETRAIN_ALIAS].add(retrain_asset(result["model"]))
            return f"retraining {result['model']}: {'; '.join(result.get('reasons', []))}"

        request_retrain(check_champion())
    dag.doc_md = dag_doc_md(dag, "recsys_drift_monitor", DRIFT_MONITOR_INTRO)
    return dag


for _model in pipeline_models():
    globals()[f"recsys_{_model}"] = build_model_dag(_model)
recsys_drift_monitor = build_drift_monitor_dag()
