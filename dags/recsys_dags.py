"""One DAG per registered model (``recsys_<model>``) plus the drift monitor that requests retraining.

Thin on purpose: the tasks are the stages of ``orchestration.flow.MODEL_PIPELINE`` (built by
``orchestration.dag_tasks.stage_tasks``), passing manifest paths through XCom. Adding a model to
``training.models`` gives it a DAG here with no edit to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import DAG, Asset, Param, task

# The DAG processor runs this file from the dags folder; the stage packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration.dag_params import PIPELINE_PARAMS  # noqa: E402
from orchestration.dag_tasks import run_overrides, stage_tasks  # noqa: E402
from orchestration.flow import MODEL_PIPELINE  # noqa: E402
from training.models import MODELS, pipeline_models  # noqa: E402


def retrain_asset(model: str) -> Asset:
    """Asset whose events (emitted when drift is detected) schedule ``recsys_<model>``."""
    return Asset(f"recforge://retrain/{model}")


def build_model_dag(model: str) -> DAG:
    spec = MODELS[model]
    with DAG(
        dag_id=f"recsys_{model}",
        description=f"{spec.description}: raw data to a served, drift-monitored recommender",
        doc_md=f"""
### recsys_{model} — {spec.description}
ingest → validate → features (Feast, point-in-time) → split → train (Lightning) → evaluate
(full ranking vs. Popularity, ItemKNN and UserKNN) → gate → package (BentoML) → promote → drift
(Evidently) → finish.

The run competes for one **deployment** (`deployment` below; its data source, split protocol and
metric are fixed in the pipeline config). The gate re-scores the deployment's champion on this run's
split when it was judged on other data. **promote** succeeds only when this run became the champion;
it is *skipped* otherwise, and the run's note says why (promoted / not promoted, with the numbers).

Triggered by hand (the form takes the parameters below) or by the drift monitor when drift is
detected in this model's data (asset `recforge://retrain/{model}`). Artifacts land under
`$RECFORGE_HOME/runs/{model}/<run_id>`; the run summary in `$RECFORGE_HOME/summary.json`.
""",
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
    return dag


def build_drift_monitor_dag() -> DAG:
    """Daily drift check of the champion; a detected drift emits the model's retrain asset event."""
    with DAG(
        dag_id="recsys_drift_monitor",
        description="Evidently drift check of the promoted model; drift triggers retraining",
        doc_md="""
### recsys_drift_monitor
Reads the deployment's champion from the run index, re-runs the Evidently drift checks of its run
against the newest data, and when drift is over the thresholds emits `recforge://retrain/<model>`, which
schedules `recsys_<model>`. Reports land in the run directory and the Evidently workspace.
""",
        schedule="@daily",
        catchup=False,
        tags=["recforge", "monitoring"],
        params=PIPELINE_PARAMS,
    ) as dag:

        @task(doc_md="Drift of the champion's latest run against the newest data.")
        def check_champion() -> dict:
            from orchestration.monitor import check_champion_drift

            return check_champion_drift(run_overrides())

        result = check_champion()
        for model in pipeline_models():

            @task.short_circuit(
                task_id=f"drift_on_{model}", doc_md=f"Go on only if {model} is champion and drifted."
            )
            def drifted(result: dict, model: str = model) -> bool:
                return bool(result.get("drift_detected")) and result.get("model") == model

            @task(task_id=f"request_retrain_{model}", outlets=[retrain_asset(model)])
            def request_retrain() -> None:
                """Succeeding emits the asset event that schedules the model's DAG."""

            drifted(result) >> request_retrain()
    return dag


for _model in pipeline_models():
    globals()[f"recsys_{_model}"] = build_model_dag(_model)
recsys_drift_monitor = build_drift_monitor_dag()
