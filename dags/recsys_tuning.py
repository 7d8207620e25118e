"""One tuning DAG per trainable model (``recsys_tune_<model>``): a grid or a TPE search as mapped tasks.

Thin on purpose: the data stages come from the pipeline's declaration (``orchestration.flow.DATA_STAGES``);
the other tasks call one function of ``orchestration.tuning`` each, and all pass
manifest paths through XCom (candidates are small dicts of hyperparameters). The search runs in
``tuning.rounds`` rounds (pipeline config, read when this file is parsed): each round plans its
candidates (the grid puts all of them in the first round; TPE asks its study for the round's share of
the budget after telling it the previous round's results), then one mapped ``train_candidate`` task
instance per candidate, so the executor trains a round's candidates in parallel and a failed one can be
retried alone. A round with nothing to train is skipped; the tasks after it run on what finished.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

# The DAG processor runs this file from the dags folder; the stage packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration.dag_docs import dag_doc_md  # noqa: E402
from orchestration.dag_params import PIPELINE_PARAMS  # noqa: E402
from orchestration.dag_tasks import run_overrides, stage_tasks  # noqa: E402
from orchestration.flow import DATA_STAGES  # noqa: E402
from pipeline.config import TuningConfig, load_config, load_tuning_grid  # noqa: E402
from training.models import MODELS, pipeline_models  # noqa: E402

DEFAULT_MAX_CANDIDATES = 6  # keep in step with orchestration.tuning (not imported: parse time)


def tunable_models() -> list[str]:
    """Models with hyperparameters to choose on validation: every model trained by gradient descent, and
    a closed-form one whose YAML declares a ``tuning_grid`` (EASE's λ)."""
    return [name for name in pipeline_models() if MODELS[name].trainable or load_tuning_grid(name)]


RUN_PREFIX = "tune-"  # tuning runs live beside the model's pipeline runs, named apart


def _run_id() -> str:
    return RUN_PREFIX + get_current_context()["run_id"]


TUNING_DAG_INTRO = """
The shared data stages, then {rounds} round(s) of **plan_candidates** and one mapped **train_candidate**
task per candidate; the winner is picked on validation NDCG@10 (the test part is never used to choose)
and only the winner is evaluated on test.

`training_seeds` > 1 trains every candidate at that many training seeds (one mapped instance each)
and judges it by their mean validation NDCG@10.

`search` = `grid`: every candidate in the first round; the grid is `tuning_grid:` of
`configs/models/{model}.yaml` when present (else learning rate × width around the defaults), or the
`tuning_grid` field of the form, capped at `max_candidates`. `search` = `tpe`: Optuna's TPE sampler
over the YAML's `search_space:` (else the grid's values), `max_candidates` trials spread over the
rounds, each round asked after the previous one's results; trials under the median of finished ones at
the same epoch are pruned. The study persists in `study.db` of the run (or `RECFORGE_TUNING_STORAGE`).
Artifacts: `$RECFORGE_HOME/runs/{model}/tune-<run_id>/` (`tuning.json`, `best_params.yaml`, one
directory per candidate). Apply the winner by triggering `recsys_{model}` with `best_params.yaml` as
its `hparams`.
"""


def build_tuning_dag(model: str, settings: TuningConfig) -> DAG:
    """``settings``: the pipeline config's ``tuning`` (its rounds shape the DAG; its search is the form's default)."""
    spec = MODELS[model]
    with DAG(
        dag_id=f"recsys_tune_{model}",
        description=f"hyperparameter search for {model} ({spec.description}), chosen on validation NDCG@10",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["recforge", "tuning", model],
        params={
            **PIPELINE_PARAMS,
            "search": Param(
                settings.search, enum=["grid", "tpe"], description="grid: the tuning grid; tpe: Optuna's TPE"
            ),
            "max_candidates": Param(
                DEFAULT_MAX_CANDIDATES,
                type="integer",
                minimum=1,
                description="Trial budget: the grid's cap, or the number of TPE trials over all rounds.",
            ),
            "tuning_grid": Param(
                {},
                type="object",
                description=f"hyperparameter -> list of values; empty = configs/models/{model}.yaml's grid",
            ),
            "training_seeds": Param(
                settings.training_seeds,
                type="integer",
                minimum=1,
                maximum=10,
                description="Train every candidate at this many training seeds and judge it by the mean "
                "of their validation NDCG@10 (costs that many trainings per candidate).",
            ),
            "hparams": Param({}, type="object", description="fixed overrides applied to every candidate"),
        },
        default_args={"owner": "recforge"},
    ) as dag:
        # Not the first round's: a round after an empty (skipped) one still plans, on what finished.
        @task(
            doc_md="The round's candidates (small dicts of hyperparameter overrides): the whole grid in "
            "the first round, or the round's TPE trials after telling the study the previous round's results.",
            trigger_rule="none_failed",
        )
        def plan_candidates(round_index: int, previous: list[str]) -> list[dict]:
            from orchestration import tuning

            params = get_current_context()["params"]
            return tuning.plan_round(
                model,
                _run_id(),
                round_index,
                list(previous),
                run_overrides(),
                params["search"],
                int(params["max_candidates"]),
                params["tuning_grid"] or None,
                params["hparams"],
            )

        # The mapped argument is called `candidate`, not `params`: `params` is every operator's own
        # argument (the DAG's trigger-form values) and cannot be a mapped task argument.
        @task(
            doc_md="Train one candidate; returns the path of its train.json.",
            # The UI lists mapped instances as c00, c01, ... (c00-seed2027, ... for further training seeds).
            map_index_template="{{ candidate_id }}",
        )
        def train_candidate(candidate: dict, split_manifest: str) -> str:
            from orchestration import tuning

            get_current_context()["candidate_id"] = tuning.run_name(candidate)
            return tuning.train_candidate(model, _run_id(), split_manifest, candidate, run_overrides())

        @task(
            doc_md="Pick the winner by validation NDCG@10; write tuning.json and best_params.yaml.",
            trigger_rule="none_failed",
        )
        def pick_best(*rounds: list[str]) -> str:
            from orchestration import tuning

            manifests = [path for trained in rounds for path in trained]
            return tuning.pick_best(model, _run_id(), manifests, run_overrides())

        @task(doc_md="Test-set evaluation of the winner only, next to the baselines.")
        def evaluate_winner(tuning_manifest: str, split_manifest: str) -> str:
            from orchestration import tuning

            return tuning.evaluate_winner(model, _run_id(), tuning_manifest, split_manifest, run_overrides())

        split_manifest = stage_tasks(model, DATA_STAGES, run_prefix=RUN_PREFIX)["split"]
        trained_rounds = []
        previous: Any = []
        for round_index in range(settings.rounds):
            suffix = f"_r{round_index}" if round_index else ""
            planned = plan_candidates.override(task_id=f"plan_candidates{suffix}")(round_index, previous)
            previous = (
                train_candidate.override(task_id=f"train_candidate{suffix}", trigger_rule="none_failed")
                .partial(split_manifest=split_manifest)
                .expand(candidate=planned)
            )
            trained_rounds.append(previous)
        evaluate_winner(pick_best(*trained_rounds), split_manifest)
    title = f"recsys_tune_{model} — hyperparameter search for {model}"
    dag.doc_md = dag_doc_md(dag, title, TUNING_DAG_INTRO.format(model=model, rounds=settings.rounds))
    return dag


_settings = load_config().tuning
for _model in tunable_models():
    globals()[f"recsys_tune_{_model}"] = build_tuning_dag(_model, _settings)
