"""Hyperparameter tuning as pipeline stages: a small grid, one training per candidate, pick on VALIDATION.

What ``recsys_tune_<model>`` (dags/recsys_tuning.py) runs, callable without Airflow
(``python -m orchestration.tuning bpr --max-candidates 4``) and from tests:

1. the shared ingest -> validate -> features -> split stages of ``orchestration.stages`` (the split is the
   same one every model and baseline uses, so a tuned model stays comparable);
2. ``plan_round`` (once per round, ``tuning.rounds`` of the pipeline config): the candidates of the
   round, by ``search``:
   - ``grid`` (``candidate_grid``, all in the first round): the model YAML's ``tuning_grid:``
     (hyperparameter -> values) or, without one, a default grid of learning rate x model width around
     the YAML defaults; capped at ``max_candidates``;
   - ``tpe`` (``orchestration.search``): the round's share of ``max_candidates`` trials, asked of a
     persisted Optuna study after the previous round's results were told to it;
   With ``tuning.training_seeds`` = N > 1, each candidate is planned N times, at training seeds
   ``trainer.seed``, +1, ..., +N-1 (``seeded_runs``);
3. ``train_candidate`` (one Airflow mapped task per candidate and training seed): trains it under the
   tuning run directory and returns the path of its ``train.json`` — paths through XCom, never data. A
   TPE trial reports every epoch's validation NDCG@10 (of its first seed's training) and may be pruned;
4. ``pick_best``: the candidate with the best ``valid/ndcg@10`` (early-stopping score of its best
   checkpoint; the mean over its training seeds; pruned trials never win). The test part is never read
   to choose: choosing on test would make the reported test number an optimistic, selected one. Writes
   ``tuning.json`` (every candidate + the winner) and the winner's hyperparameters as a YAML override
   file (``best_params.yaml``);
5. ``evaluate_winner``: full-ranking test evaluation of the winner only (its training at
   ``trainer.seed``), next to the baselines.

Artifacts: ``$RECFORGE_HOME/runs/<model>/tune-<run id>/`` with ``candidates/<id>/`` (one training run
each; ``candidates/<id>-seed<seed>/`` for the further training seeds), ``tuning.json``,
``best_params.yaml``, ``evaluation.json`` and, for TPE, ``study.db``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from orchestration.runs import model_params
from orchestration.stages import _run_dir, context, new_run_id, run_context, safe_run_id
from pipeline.artifacts import Split, TrainResult, atomic_write_json, atomic_write_text
from pipeline.config import TuningConfig, load_model_params, load_search_space, load_tuning_grid

log = logging.getLogger(__name__)

SELECTION_METRIC = "valid/ndcg@10"
DEFAULT_MAX_CANDIDATES = 6
# Default search space where the YAML has no tuning_grid: learning rate and model width, each at
# half / the default / double — the two knobs that matter most for every model here.
LR_KEYS = ("lr", "learning_rate")
WIDTH_KEYS = ("embedding_size", "hidden_size", "embed_dim", "embedding_dim", "factors")
FACTORS = (1.0, 0.5, 2.0)


def tuning_run_id(run_id: str) -> str:
    """Tuning runs live beside the model's pipeline runs, prefixed so nobody mistakes one for the other."""
    run_id = safe_run_id(run_id)
    return run_id if run_id.startswith("tune-") else f"tune-{run_id}"


def default_grid(params: dict[str, Any]) -> dict[str, list[Any]]:
    """Learning rate x width around the model's defaults (only keys the model actually has)."""
    grid: dict[str, list[Any]] = {}
    lr_key = next((k for k in LR_KEYS if isinstance(params.get(k), int | float)), None)
    if lr_key is not None:
        grid[lr_key] = [float(f"{params[lr_key] * f:.6g}") for f in FACTORS]
    width_key = next((k for k in WIDTH_KEYS if isinstance(params.get(k), int)), None)
    if width_key is not None:
        grid[width_key] = list(dict.fromkeys(max(1, int(params[width_key] * f)) for f in FACTORS))
    return grid


def candidate_grid(
    model: str,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    grid: dict[str, list[Any]] | None = None,
    base: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Candidates ``[{"id": "c00", "hparams": {...overrides...}}]`` of the grid, at most ``max_candidates``.

    Grid precedence: ``grid`` (trigger form) > the YAML's ``tuning_grid`` > ``default_grid``. The
    cartesian product is ordered by how many keys differ from the model's defaults (then product
    order), so a cap keeps the defaults and the one-knob-at-a-time neighbours first, and the defaults
    are always a candidate when the grid contains them. ``base`` = fixed overrides for every candidate.
    """
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    defaults = load_model_params(model, base)
    grid = grid or load_tuning_grid(model) or default_grid(defaults)
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    combos = list({json.dumps(c, sort_keys=True): c for c in combos}.values())  # drop duplicates
    combos.sort(key=lambda c: sum(defaults.get(k) != v for k, v in c.items()))  # stable: product order
    candidates = [
        {"id": f"c{i:02d}", "hparams": {**(base or {}), **combo}}
        for i, combo in enumerate(combos[:max_candidates])
    ]
    for candidate in candidates:  # a typo in the grid fails here, before any candidate trains
        model_params(model, candidate["hparams"])
    return candidates


def tuning_dir(model: str, run_id: str, overrides: dict[str, Any] | None = None) -> Path:
    _, layout = context(overrides)
    return _run_dir(layout, model, tuning_run_id(run_id))


SEARCHES = ("grid", "tpe")


def round_share(budget: int, rounds: int, round_index: int) -> int:
    """Trials of round ``round_index`` when ``budget`` trials are spread over ``rounds`` (earlier rounds
    take the remainder)."""
    return budget // rounds + (1 if round_index < budget % rounds else 0)


def _study(model: str, run_id: str, overrides: dict[str, Any] | None) -> tuple[Any, Any]:
    from orchestration import search

    cfg = run_context(model, run_id, overrides).cfg
    storage = search.open_storage(tuning_dir(model, run_id, overrides))
    name = f"{model}/{tuning_run_id(run_id)}"
    return search.open_study(name, storage, cfg.trainer.seed, cfg.tuning.startup_trials), storage


def _tell(model: str, run_id: str, train_manifests: list[str], overrides: dict[str, Any] | None) -> None:
    """Report finished TPE trials to the study (grid candidates have no trial and are skipped); a trial
    trained at several seeds is told the mean of their scores."""
    records = [r for r in map(_candidate_record, train_manifests) if r.get("trial") is not None]
    if not records:
        return
    from orchestration import search

    study, _ = _study(model, run_id, overrides)
    for record in by_candidate(records):
        search.tell(study, record["trial"], record["valid_ndcg@10"], record["pruned"])


def seeded_runs(
    candidates: list[dict[str, Any]], first_seed: int, training_seeds: int
) -> list[dict[str, Any]]:
    """Each candidate once per training seed (``first_seed``, +1, ...), as the runs to train.

    With one seed the candidates are returned as they are (trained at ``trainer.seed``, in
    ``candidates/<id>/``). With more, every run carries its ``seed`` and its directory name ``run``:
    ``<id>`` for the first seed, ``<id>-seed<seed>`` for the others; a TPE trial's pruning follows its
    first seed's training only (one trial reports one value per epoch).
    """
    if training_seeds < 1:
        raise ValueError(f"training_seeds must be >= 1, got {training_seeds}")
    if training_seeds == 1:
        return candidates
    return [
        {
            **candidate,
            "seed": first_seed + i,
            "run": candidate["id"] if i == 0 else f"{candidate['id']}-seed{first_seed + i}",
        }
        for candidate in candidates
        for i in range(training_seeds)
    ]


def run_name(candidate: dict[str, Any]) -> str:
    """The directory (and the tuning DAG's mapped instance name) of a planned run: ``run`` when
    ``seeded_runs`` set one, else the candidate's id."""
    return str(candidate.get("run", candidate["id"]))


def plan_round(
    model: str,
    run_id: str,
    round_index: int,
    previous: list[str],
    overrides: dict[str, Any] | None = None,
    search: str = "grid",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    grid: dict[str, list[Any]] | None = None,
    base: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The candidates of one round (possibly none); ``previous`` = the last round's train manifests.

    ``grid``: every candidate in the first round. ``tpe``: the previous round's results are told to the
    study, then the round's share of ``max_candidates`` trials is asked of it, over the YAML's
    ``search_space`` (else ``grid`` / the ``tuning_grid`` as categorical choices). ``base`` = fixed
    overrides for every candidate.
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    cfg = run_context(model, run_id, overrides).cfg
    if search == "grid":
        planned = candidate_grid(model, max_candidates, grid, base) if round_index == 0 else []
        return seeded_runs(planned, cfg.trainer.seed, cfg.tuning.training_seeds)
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    from orchestration import search as tpe

    rounds = cfg.tuning.rounds
    declared = (
        load_search_space(model)
        or grid
        or load_tuning_grid(model)
        or default_grid(load_model_params(model, base))
    )
    space = tpe.search_space({k: v for k, v in declared.items() if k not in (base or {})})
    _tell(model, run_id, previous, overrides)
    study, _ = _study(model, run_id, overrides)
    candidates = tpe.ask(study, space, round_share(max_candidates, rounds, round_index))
    for candidate in candidates:
        candidate["hparams"] = {**(base or {}), **candidate["hparams"]}
        model_params(model, candidate["hparams"])  # a wrong key or type fails here, before training
    return seeded_runs(candidates, cfg.trainer.seed, cfg.tuning.training_seeds)


def train_candidate(
    model: str,
    run_id: str,
    split_manifest: str,
    candidate: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> str:
    """Train one candidate on the split; return the path of its ``train.json`` (what XCom carries).

    ``candidate["seed"]``, when ``seeded_runs`` set one, is the training seed (else ``trainer.seed``). A
    TPE trial (``candidate["trial"]``) reports each epoch's validation NDCG@10 of its first seed's
    training to its study and stops when pruned; ``search.json`` beside its ``train.json`` says whether
    it was.
    """
    from training.train import train_model

    cfg = run_context(model, run_id, overrides).cfg  # the settings the tuning run started with
    trainer = cfg.trainer.model_copy(update={"seed": int(candidate.get("seed", cfg.trainer.seed))})
    run_dir = tuning_dir(model, run_id, overrides) / "candidates" / run_name(candidate)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "candidate.json", candidate)
    params = model_params(model, candidate["hparams"])
    pruning = []
    if candidate.get("trial") is not None and run_name(candidate) == candidate["id"]:
        from orchestration.search import PruneOnValidation

        study, storage = _study(model, run_id, overrides)
        pruning = [PruneOnValidation(study, storage, int(candidate["trial"]))]
    result = train_model(model, Split.load(split_manifest), params, trainer, run_dir, callbacks=pruning)
    pruned_at = pruning[0].pruned_at_epoch if pruning else None
    atomic_write_json(
        run_dir / "search.json", {"trial": candidate.get("trial"), "pruned_at_epoch": pruned_at}
    )
    log.info("candidate %s %s (training seed %d): %s %.4f%s", candidate["id"], candidate["hparams"], trainer.seed, SELECTION_METRIC,
             result.best_valid_ndcg10, f" (pruned after epoch {pruned_at})" if pruned_at is not None else "")  # fmt: skip
    return str(run_dir / "train.json")


def _candidate_record(train_manifest: str) -> dict[str, Any]:
    result = TrainResult.load(train_manifest)
    candidate = json.loads((Path(train_manifest).parent / "candidate.json").read_text())
    searched = Path(train_manifest).parent / "search.json"
    pruned_at = json.loads(searched.read_text())["pruned_at_epoch"] if searched.is_file() else None
    valid = result.best_valid_ndcg10
    return {
        "id": candidate["id"],
        "seed": candidate.get("seed"),  # None: trained at trainer.seed, the only training of its candidate
        "trial": candidate.get("trial"),
        "pruned": pruned_at is not None,
        "overrides": candidate["hparams"],
        "hparams": result.hparams,
        "valid_ndcg@10": valid if valid is not None and math.isfinite(valid) else float("-inf"),
        "epochs": result.epochs,
        "epoch_seconds": result.epoch_seconds,
        "train_manifest": str(train_manifest),
    }


def by_candidate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per candidate id (in id order) from the records of its trainings.

    A candidate trained once keeps its record. One trained at several seeds gets the first seed's
    record (its hyperparameters and the ``train_manifest`` the winner's test evaluation reads) with
    ``valid_ndcg@10`` = the mean over its seeds, ``valid_ndcg@10_std`` = their sample std, and
    ``seeds`` = each training's seed, score, epochs and manifest; it is pruned when any training was.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (r["id"], r["seed"] if r["seed"] is not None else -math.inf)):
        groups.setdefault(record["id"], []).append(record)
    merged = []
    for runs in groups.values():
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        scores = [r["valid_ndcg@10"] for r in runs]
        finite = all(math.isfinite(v) for v in scores)
        merged.append(
            {
                **runs[0],
                "pruned": any(r["pruned"] for r in runs),
                "valid_ndcg@10": statistics.fmean(scores) if finite else float("-inf"),
                "valid_ndcg@10_std": statistics.stdev(scores) if finite else None,
                "seeds": [
                    {k: r[k] for k in ("seed", "valid_ndcg@10", "epochs", "pruned", "train_manifest")}
                    for r in runs
                ],
            }
        )
    return merged


def pick_best(
    model: str, run_id: str, train_manifests: list[str], overrides: dict[str, Any] | None = None
) -> str:
    """Choose the winner by validation NDCG@10 only (a candidate trained at several seeds: their mean,
    ``by_candidate``); write ``tuning.json`` + ``best_params.yaml``.

    Ties go to the earlier candidate (closer to the defaults, see ``candidate_grid``); a pruned trial
    wins only if every trial was pruned. TPE results not yet told to the study are told first. Returns
    the path of ``tuning.json``.
    """
    if not train_manifests:
        raise ValueError(f"tuning {model}/{run_id}: no candidate finished training; nothing to pick from")
    _tell(model, run_id, train_manifests, overrides)
    candidates = by_candidate([_candidate_record(path) for path in train_manifests])
    eligible = [c for c in candidates if not c["pruned"]] or candidates
    winner = max(eligible, key=lambda c: c["valid_ndcg@10"])  # max keeps the first of equals
    out = tuning_dir(model, run_id, overrides)
    best_params = atomic_write_text(
        out / "best_params.yaml",
        f"# {model}: winner {winner['id']} of tuning run {tuning_run_id(run_id)} by {SELECTION_METRIC} "
        f"= {winner['valid_ndcg@10']:.4f}\n"
        f"# Overrides of configs/models/{model}.yaml: pass as the `hparams` trigger parameter of "
        f"recsys_{model}, or `recforge run {model} --hparam KEY=VALUE` per key.\n"
        + yaml.safe_dump(winner["overrides"], sort_keys=True),
    )
    tuning = {
        "model": model,
        "run_id": tuning_run_id(run_id),
        "selection_metric": SELECTION_METRIC,
        "selected_on": "valid",  # the test part is read only by evaluate_winner, for the winner only
        "search": "tpe" if any(c["trial"] is not None for c in candidates) else "grid",
        "training_seeds": max(len(c.get("seeds", [c])) for c in candidates),
        "pruned": sum(c["pruned"] for c in candidates),
        "candidates": candidates,
        "winner": winner,
        "best_params": str(best_params),
    }
    log.info("tuning %s: winner %s %s (%s %.4f of %d candidates)", model, winner["id"], winner["overrides"],
             SELECTION_METRIC, winner["valid_ndcg@10"], len(candidates))  # fmt: skip
    return str(atomic_write_json(out / "tuning.json", tuning))


def evaluate_winner(
    model: str,
    run_id: str,
    tuning_manifest: str,
    split_manifest: str,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Test-set evaluation of the winner only; adds its test metrics to ``tuning.json``.

    Returns the path of the winner's ``evaluation.json`` (in the tuning run directory).
    """
    from training.evaluate import evaluate_run

    cfg = run_context(model, run_id, overrides).cfg
    tuning = json.loads(Path(tuning_manifest).read_text())
    winner = TrainResult.load(tuning["winner"]["train_manifest"])
    evaluation = evaluate_run(winner, Split.load(split_manifest), cfg.evaluation)
    out = tuning_dir(model, run_id, overrides)
    path = evaluation.save(out / "evaluation.json")
    tuning["winner_test_metrics"] = evaluation.metrics
    tuning["baselines_test_ndcg@10"] = {name: m["ndcg@10"] for name, m in evaluation.baselines.items()}
    atomic_write_json(Path(tuning_manifest), tuning)
    return str(path)


def run_tuning(
    model: str,
    run_id: str | None = None,
    overrides: dict[str, Any] | None = None,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    grid: dict[str, list[Any]] | None = None,
    hparams: dict[str, Any] | None = None,
    search: str | None = None,
) -> Path:
    """The whole tuning run in-process (the DAG runs the same functions as tasks); returns tuning.json.

    ``search`` defaults to the pipeline config's ``tuning.search``."""
    from orchestration.flow import DATA_STAGES, run_stages

    run_id = tuning_run_id(run_id or new_run_id())
    settings: TuningConfig = run_context(model, run_id, overrides).cfg.tuning
    search = search or settings.search
    split_manifest = run_stages(model, run_id, overrides, names=DATA_STAGES)["split"]
    manifests: list[str] = []
    previous: list[str] = []
    for round_index in range(settings.rounds):
        planned = plan_round(
            model, run_id, round_index, previous, overrides, search, max_candidates, grid, hparams
        )
        previous = [train_candidate(model, run_id, split_manifest, c, overrides) for c in planned]
        manifests += previous
    tuning = pick_best(model, run_id, manifests, overrides)
    evaluate_winner(model, run_id, tuning, split_manifest, overrides)
    return Path(tuning)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument(
        "--max-candidates", type=int, default=DEFAULT_MAX_CANDIDATES, help="trial budget (grid: its cap)"
    )
    parser.add_argument(
        "--search", choices=SEARCHES, default=None, help="default: the config's tuning.search"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pipeline override")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="HPARAM=[V1,V2]",
        help="a grid of its own instead of the YAML's tuning_grid (as the DAG's form gives one); repeatable",
    )
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
    grid = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.grid)}
    if bad := [k for k, v in grid.items() if not isinstance(v, list) or not v]:
        parser.error(f"--grid {', '.join(bad)}: give a non-empty list, e.g. --grid negatives=[4,16,64]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = run_tuning(
        args.model, args.run_id, overrides or None, args.max_candidates, grid=grid or None, search=args.search
    )
    tuning = json.loads(path.read_text())
    for c in tuning["candidates"]:
        mark = "*" if c["id"] == tuning["winner"]["id"] else " "
        pruned = " (pruned)" if c["pruned"] else ""
        spread = ""
        if "seeds" in c:
            std = c["valid_ndcg@10_std"]
            spread = f" ± {std:.4f}" if std is not None else ""
            spread += f" (mean of {len(c['seeds'])} training seeds)"
        print(f"{mark} {c['id']} {c['overrides']} valid ndcg@10={c['valid_ndcg@10']:.4f}{spread}{pruned}")
    print(f"winner test ndcg@10={tuning['winner_test_metrics']['ndcg@10']:.4f}")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
