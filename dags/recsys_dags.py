"""One DAG per registered model (``recsys_<model>``) plus the drift monitor that requests retraining.

Thin on purpose: every task calls one function of ``pipeline.stages`` and passes manifest paths
through XCom. Adding a model to ``training.models`` gives it a DAG here with no edit to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import DAG, Asset, Param, get_current_context, task

# The DAG processor runs this file from the dags folder; the stage packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dag_params import PIPELINE_PARAMS  # noqa: E402
from pipeline.dag_tasks import run_overrides, split_tasks  # noqa: E402
from training.models import MODELS, pipeline_models  # noqa: E402


def retrain_asset(model: str) -> Asset:
    """Asset whose events (emitted when drift is detected) schedule ``recsys_<model>``."""
    return Asset(f"recforge://retrain/{model}")


def _ids() -> tuple[str, str]:
    context = get_current_context()
    return context["dag"].dag_id.removeprefix("recsys_"), context["run_id"]


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

        @task(doc_md=f"Train {model} with Lightning; early stopping on validation NDCG@10.")
        def train(split_manifest: str) -> str:
            from pipeline import stages

            return stages.train(
                *_ids(), split_manifest, run_overrides(), get_current_context()["params"]["hparams"]
            )

        @task(doc_md="Full-ranking evaluation against the baselines on the same split.")
        def evaluate(train_manifest: str, split_manifest: str) -> str:
            from pipeline import stages

            return stages.evaluate(*_ids(), train_manifest, split_manifest, run_overrides())

        @task(
            doc_md="Decide: the run matches its deployment's key, beats Popularity by the margin and "
            "beats the champion (re-scored on this split when it was judged on other data)."
        )
        def gate(evaluation: str, split_manifest: str) -> str:
            from pipeline import stages

            return stages.gate(*_ids(), evaluation, split_manifest, run_overrides())

        @task(doc_md="Save the BentoML model (every run); build the service Bento when the gate passed it.")
        def package(train_manifest: str, evaluation: str, decision: str) -> str:
            from pipeline import stages

            return stages.package(*_ids(), train_manifest, evaluation, decision, run_overrides())

        @task(
            doc_md="Make the candidate its deployment's champion (atomic swap in the run index; the "
            "running service follows). Skipped when it was not promoted: the run note says why."
        )
        def promote(packaged: str) -> str:
            from airflow.sdk.exceptions import AirflowSkipException

            from pipeline import stages
            from pipeline.artifacts import GateDecision

            final = stages.promote(*_ids(), packaged, run_overrides())
            decision = GateDecision.load(final)
            if not decision.promoted:
                raise AirflowSkipException(decision.headline())
            return final

        @task(doc_md="Evidently data, prediction and ranking-quality drift: HTML + JSON + workspace.")
        def drift(split_manifest: str, train_manifest: str) -> str:
            from pipeline import stages

            return stages.drift(*_ids(), split_manifest, train_manifest, run_overrides())

        @task(
            doc_md="Mark the run complete; refresh summary.json and the leaderboard.",
            trigger_rule="none_failed",  # also after a skipped (not promoted) promote task
        )
        def finish(_drift: str) -> str:
            from pipeline import stages

            return stages.finish(*_ids(), run_overrides())

        split_manifest = split_tasks(_ids)
        train_manifest = train(split_manifest)
        evaluation = evaluate(train_manifest, split_manifest)
        packaged = package(train_manifest, evaluation, gate(evaluation, split_manifest))
        # Ordered after promote without reading its XCom: a skipped promote has none.
        promote(packaged) >> finish(drift(split_manifest, train_manifest))
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
            from pipeline.monitor import check_champion_drift

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
