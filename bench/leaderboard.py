"""Leaderboard: every registered model (learned and baselines) x split protocols on one dataset.

``make leaderboard`` runs this. The data comes from the pipeline's own stages (fetch -> ingest ->
validate -> features) into ``RECFORGE_HOME``, so an existing snapshot, Feast state and split are reused
and the numbers are exactly what the DAGs would produce. Each (model, protocol, seed) trains and
evaluates in a fresh process (bench/bench_training.py ``train_and_evaluate``: same code, same measurements); two
processes with one thread each share the 2 cores, longest jobs first (the run's wall time is in
``leaderboard.meta.json``).

Writes:
- ``bench/results/leaderboard.json``: a list of records ``{model, protocol, seed, status, metrics, epochs,
  epoch_seconds, train_seconds, peak_rss_mb, best_valid_ndcg10, params, ...}`` (``status`` "ok", or
  "skipped"/"failed" with ``error``); sequential models add ``metrics_seen_included`` (the same test
  part ranked without excluding the user's seen items, the published sequential convention);
- ``bench/leaderboard.md``: per-protocol tables of mean ± sample std over the seeds, with lift over
  Popularity, both conventions for the sequential models, the accuracy target checks (PASS / FAIL /
  WITHIN NOISE by ``NOISE_RULE``), notes per failing target, published reference numbers;
- ``bench/leaderboard_quality_vs_time.svg``: mean NDCG@10 against mean training time (hand-written SVG:
  matplotlib is not a dependency of this project);
- with ``--readme README.md``: the README's accuracy table (between its ``leaderboard-table`` markers).

A seed is both the split seed and the training seed of its runs (``--seeds``, default three from the
config's split seed); ``leave_last_out``'s split does not depend on it, so there only training varies.

Usage:
    make leaderboard                       # all models, random_holdout + leave_last_out, ML-100K, 3 seeds
    .venv/bin/python bench/leaderboard.py --render-only --readme README.md   # report + README table
    .venv/bin/python bench/leaderboard.py --models popularity,itemknn,userknn,bpr --max-epochs 3
    .venv/bin/python bench/leaderboard.py --dataset ml-1m --data-path /data/ml-1m   # ratings.dat layout
"""

from __future__ import annotations

import argparse
import html
import importlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from orchestration.runs import model_params  # noqa: E402
from pipeline.artifacts import FeatureSet  # noqa: E402
from pipeline.config import PipelineConfig, load_config  # noqa: E402
from pipeline.provenance import code_commit  # noqa: E402
from training.models import MODELS  # noqa: E402

RESULTS_JSON = BENCH / "results" / "leaderboard.json"
REPORT_MD = BENCH / "leaderboard.md"
PLOT_SVG = BENCH / "leaderboard_quality_vs_time.svg"
NOTES_MD = BENCH / "leaderboard_notes.md"  # evidence for failing targets, kept by hand
RUN_PREFIX = "leaderboard"
HEADLINE = ("ndcg@10", "recall@10", "hr@10", "mrr@10", "coverage@10")
# Model-specific metrics (pointwise_metrics of rating / CTR / RL models) shown in their own column.
STANDARD = set(HEADLINE) | {
    f"{m}@{k}" for m in ("ndcg", "recall", "hr", "mrr", "precision", "coverage") for k in (10, 20)
}

DATASETS: dict[str, dict[str, str]] = {
    "ml-100k": {"kind": "recbole_ml100k", "name": "ml-100k"},  # fetched by the pipeline (recbole wheel)
    "ml-1m": {"kind": "movielens_dat", "name": "ml-1m"},  # needs --data-path: ratings.dat, users.dat, ...
}

# RecBole's published MovieLens-1M results (full ranking, NDCG@10). Different data from ours (ML-100K
# by default): compare orderings and lifts, not absolute values.
RECBOLE_SOURCE = "https://recbole.io/leaderboard/"
REFERENCES: list[tuple[str, str, float]] = [
    ("random 8:1:1 (general)", "BPR", 0.2407),
    ("random 8:1:1 (general)", "LightGCN", 0.2478),
    ("random 8:1:1 (general)", "NeuMF", 0.2287),
    ("random 8:1:1 (general)", "ItemKNN", 0.2389),
    ("random 8:1:1 (general)", "Pop", 0.1006),
    ("chronological leave-one-out (sequential)", "SASRec", 0.1286),
    ("chronological leave-one-out (sequential)", "GRU4Rec", 0.1545),
    ("chronological leave-one-out (sequential)", "NARM", 0.1471),
    ("random 8:1:1 (knowledge-aware)", "KGAT", 0.2404),
    ("random 8:1:1 (knowledge-aware)", "CKE", 0.2405),
]


# ---------------------------------------------------------------------------------------------- data


def source_overrides(dataset: str, data_path: str | None, home: Path) -> dict[str, Any]:
    """Pipeline overrides that select ``dataset`` (a name above, or a source kind + ``--data-path``)."""
    overrides: dict[str, Any] = {"home": str(home)}
    if dataset in DATASETS:
        overrides.update({f"source.{k}": v for k, v in DATASETS[dataset].items()})
    else:  # a source kind: grouplens_100k | movielens_dat | events | recbole_ml100k
        overrides.update({"source.kind": dataset, "source.name": Path(data_path or dataset).name})
    if data_path:
        overrides["source.path"] = str(Path(data_path).resolve())
    elif overrides["source.kind"] != "recbole_ml100k":
        raise SystemExit(f"--dataset {dataset}: give --data-path (the directory/file of that layout)")
    return overrides


def prepare_data(overrides: dict[str, Any]) -> tuple[FeatureSet, Path]:
    """fetch -> ingest -> validate -> features with the pipeline's stages (idempotent: reuses the data)."""
    from orchestration import stages
    from orchestration.flow import run_stages

    # A fresh run id each time: a run's settings are fixed when it starts (run_config.json), and this
    # invocation's --dataset/--data-path may differ from the last one's.
    run_id = f"{RUN_PREFIX}-data-{stages.new_run_id()}"
    started = time.perf_counter()
    outputs = run_stages(RUN_PREFIX, run_id, overrides, names=("ingest", "validate", "features"))
    staging, manifest = outputs["ingest"], Path(outputs["features"])
    feature_set = FeatureSet.load(manifest)
    shutil.rmtree(staging, ignore_errors=True)  # the snapshot holds the validated copy
    print(
        f"data {feature_set.data_version}: {feature_set.examples} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return feature_set, manifest


def prepare_dataset(dataset: str, data_path: str | None = None) -> tuple[FeatureSet, PipelineConfig]:
    """``dataset``'s feature set (``prepare_data``) under ``RECFORGE_HOME``, and the pipeline config
    that selects it."""
    overrides = source_overrides(dataset, data_path, load_config().home_dir)
    feature_set, _ = prepare_data(overrides)
    return feature_set, load_config(overrides=overrides)


def train_briefly(model: str, split: Any, home: Path, epochs: int, bench: str) -> tuple[Any, float]:
    """Train ``model`` (its YAML defaults) on ``split`` for ``epochs`` epochs on one thread, keeping the
    epoch of best validation NDCG@10 (no early stop); the run directory under ``home`` is keyed by the
    settings (``<bench>-<hash>``). Returns the ``TrainResult`` and the training seconds."""
    import hashlib

    from pipeline.config import TrainerConfig
    from pipeline.layout import Layout
    from training.train import train_model

    params = model_params(model)
    key = hashlib.sha256(json.dumps([params, epochs, str(split.dir)], default=str).encode()).hexdigest()[:8]
    trainer_cfg = TrainerConfig(max_epochs=epochs, patience=epochs, num_threads=1)
    started = time.perf_counter()
    trained = train_model(model, split, params, trainer_cfg, Layout(home).run(model, f"{bench}-{key}"))
    return trained, round(time.perf_counter() - started, 1)


def prepare_splits(
    feature_set: FeatureSet, protocols: list[str], overrides: dict[str, Any], seeds: list[int]
) -> None:
    """Make each (protocol, seed) split and its cached baselines once, before the workers start (no
    two writers)."""
    from pipeline.config import BASELINES, EvaluationConfig, SplitConfig
    from pipeline.layout import Layout
    from training.evaluate import baseline_metrics
    from training.split import make_split

    cfg = load_config(overrides=overrides)
    for protocol in protocols:
        for seed in seeds:
            split = make_split(feature_set, SplitConfig(protocol=protocol, seed=seed), Layout(cfg.home_dir))
            for name in BASELINES:
                baseline_metrics(name, split, EvaluationConfig())
            print(f"split {protocol} seed {seed}: {split.counts}", flush=True)


def importable(model: str) -> str | None:
    """None if the model's module imports, else why not (modules still being written are skipped)."""
    module = MODELS[model].factory_path.partition(":")[0]
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not ready", reported verbatim
        return f"{module} does not import yet: {type(exc).__name__}: {exc}"
    return None


# ------------------------------------------------------------------------------------------- running


def training_job(
    model: str,
    protocol: str,
    seed: int,
    params: dict[str, Any],
    feature_manifest: Path,
    home: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """What ``run_job`` trains: ``seed`` is both the split seed and the training seed; ``args`` gives
    max_epochs, patience and threads."""
    return {
        "model": model,
        "protocol": protocol,
        "params": params,
        "feature_set": str(feature_manifest),
        "home": str(home),
        "seed": seed,
        "train_seed": seed,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "threads": args.threads,
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (model, protocol, seed) in a fresh worker process; failures come back as records, not
    exceptions."""
    from bench_training import process_peak_rss_mb, train_and_evaluate

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The seed is in the run id: two seeds of one (model, protocol) may train at the same time.
    run_id = f"{RUN_PREFIX}-{job['protocol']}-seed{job['seed']}"
    shutil.rmtree(Path(job["home"]) / "runs" / job["model"] / run_id, ignore_errors=True)  # no stale ckpts
    started = time.perf_counter()
    try:
        row = train_and_evaluate(
            job["model"],
            job["protocol"],
            job["params"],
            FeatureSet.load(job["feature_set"]),
            Path(job["home"]),
            seed=job["seed"],
            max_epochs=job["max_epochs"],
            patience=job["patience"],
            threads=job["threads"],
            run_id=run_id,
            train_seed=job.get("train_seed"),
        )
    except Exception as exc:  # noqa: BLE001 - one broken model must not sink the leaderboard
        return {
            "model": job["model"],
            "protocol": job["protocol"],
            "seed": job["seed"],
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "params": job["params"],
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    row["peak_rss_mb"] = process_peak_rss_mb() or row["peak_rss_mb"]
    rec = record(row, job["seed"])
    if MODELS[job["model"]].kind == "sequential":
        rec["metrics_seen_included"] = seen_included(job, run_id)
    return rec


def seen_included(job: dict[str, Any], run_id: str) -> dict[str, float]:
    """The job's trained model on the same test part with seen items left rankable (see
    ``training.evaluate.seen_included_metrics``), for comparison with published sequential numbers."""
    from pipeline.config import EvaluationConfig, SplitConfig
    from pipeline.layout import Layout
    from training.evaluate import seen_included_metrics
    from training.split import make_split

    layout = Layout(Path(job["home"]))
    split = make_split(
        FeatureSet.load(job["feature_set"]), SplitConfig(protocol=job["protocol"], seed=job["seed"]), layout
    )
    return seen_included_metrics(layout.run(job["model"], run_id), split, EvaluationConfig())


def record(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """bench_training's row -> the leaderboard record (``seed``: the split and training seed)."""
    spec = MODELS[row["model"]]
    pop = row["popularity_ndcg10"]
    return {
        "model": row["model"],
        "protocol": row["protocol"],
        "seed": seed,
        "status": "ok",
        "kind": spec.kind,
        "learned": spec.trainable,
        "metrics": row["test"],
        "lift_over_popularity": round(row["test"]["ndcg@10"] / pop, 4) if pop > 0 else None,
        "baselines_ndcg@10": {name: m["ndcg@10"] for name, m in row["baselines"].items()},
        "epochs": row["epochs"],
        "epoch_seconds": row["epoch_seconds"],
        "train_seconds": row["train_seconds"],
        "wall_seconds": row["wall_seconds"],
        "interactions_per_second": row["interactions_per_second"],
        "peak_rss_mb": row["peak_rss_mb"],  # whole worker process: training + test evaluation
        "best_valid_ndcg10": row["best_valid_ndcg10"],
        "test_users": row["test_users"],
        "params": row["params"],
    }


def run_all(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``workers`` processes; a fresh process per job so peak RSS is that job's alone."""
    context = multiprocessing.get_context("spawn")
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures: list[tuple[dict[str, Any], Future]] = [(job, pool.submit(run_job, job)) for job in jobs]
        for job, future in futures:
            try:
                rec = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. the worker was killed (out of memory)
                rec = {
                    "model": job["model"],
                    "protocol": job["protocol"],
                    "seed": job["seed"],
                    "status": "failed",
                    "error": f"worker died: {type(exc).__name__}: {exc}",
                    "params": job["params"],
                }
            results.append(rec)
            if rec["status"] == "ok":
                print(
                    f"{rec['protocol']:15s} seed {rec['seed']} {rec['model']:11s} ndcg@10={rec['metrics']['ndcg@10']:.4f} "
                    f"epochs={rec['epochs']} s/epoch={rec['epoch_seconds']:.2f} train={rec['train_seconds']:.0f}s",
                    flush=True,
                )
            else:
                print(
                    f"{rec['protocol']:15s} seed {rec['seed']} {rec['model']:11s} FAILED: {rec['error']}",
                    flush=True,
                )
    return results


# ------------------------------------------------------------------------------------------- targets


NOISE_RULE = (
    "A beats B when mean(A) - mean(B) > max(std(A), std(B)) (sample std over the seeds); below when "
    "mean(B) - mean(A) exceeds it; otherwise within noise. With one seed noise cannot be judged and the "
    "single numbers are compared."
)


def seed_of(rec: dict[str, Any]) -> int | None:
    """A record's seed (records written before seeds were varied have none)."""
    return rec.get("seed")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: no spread can be estimated)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(
    records: list[dict[str, Any]], metrics_key: str = "metrics"
) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(model, protocol): {"n", "seeds", "mean": {metric: v}, "std": {metric: v | None}, ...}}`` over
    the ok records (one per seed); ``metrics_key`` picks e.g. ``metrics_seen_included``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        if rec["status"] == "ok" and metrics_key in rec:
            groups.setdefault((rec["model"], rec["protocol"]), []).append(rec)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, recs in groups.items():
        names = [m for m in recs[0][metrics_key] if all(m in r[metrics_key] for r in recs)]
        stats = {m: mean_std([r[metrics_key][m] for r in recs]) for m in names}
        out[key] = {
            "n": len(recs),
            "seeds": [seed_of(r) for r in recs],
            "mean": {m: v[0] for m, v in stats.items()},
            "std": {m: v[1] for m, v in stats.items()},
            "records": recs,
        }
    return out


def _stats(
    records: list[dict[str, Any]], model: str, protocol: str
) -> tuple[float, float | None, int] | None:
    """(mean, sample std or None, n) of ``model``'s NDCG@10 under ``protocol``, or None if not run."""
    values = [
        r["metrics"]["ndcg@10"]
        for r in records
        if r["model"] == model and r["protocol"] == protocol and r["status"] == "ok"
    ]
    return (*mean_std(values), len(values)) if values else None


def _baseline(
    records: list[dict[str, Any]], name: str, protocol: str
) -> tuple[float, float | None, int] | None:
    """A baseline's NDCG@10 on the protocol's splits: its own rows, else the rows' cached baselines
    (one value per seed: every model of a seed shares the split's cached numbers)."""
    own = _stats(records, name, protocol)
    if own is not None:
        return own
    per_seed: dict[Any, float] = {}
    for rec in records:
        if rec["protocol"] == protocol and rec["status"] == "ok" and name in rec.get("baselines_ndcg@10", {}):
            per_seed.setdefault(seed_of(rec), rec["baselines_ndcg@10"][name])
    return (*mean_std(list(per_seed.values())), len(per_seed)) if per_seed else None


def _pm(stats: tuple[float, float | None, int]) -> str:
    mean, std, n = stats
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f} (n={n})"


def noise_verdict(a: tuple[float, float | None, int], b: tuple[float, float | None, int]) -> str:
    """ "beats", "below" or "within noise" by ``NOISE_RULE``; "beats"/"below" without a std (one seed)."""
    diff = a[0] - b[0]
    stds = [s for s in (a[1], b[1]) if s is not None]
    if a[2] < 2 or b[2] < 2 or not stds:
        return "beats" if diff > 0 else "below"
    margin = max(stds)
    if diff > margin:
        return "beats"
    if -diff > margin:
        return "below"
    return "within noise"


RESULT_OF = {"beats": "PASS", "below": "FAIL", "within noise": "WITHIN NOISE"}


def _check(
    target: str,
    model: str,
    protocol: str,
    value: tuple[float, float | None, int] | None,
    ref_name: str,
    ref: tuple[float, float | None, int] | None,
) -> dict[str, Any]:
    if value is None or ref is None:
        missing = model if value is None else ref_name
        return {"target": target, "model": model, "protocol": protocol, "result": "N/A",
                "detail": f"{missing} has no result under {protocol}"}  # fmt: skip
    verdict = noise_verdict(value, ref)
    ratio = f" ({value[0] / ref[0]:.2f}x)" if ref[0] > 0 else ""
    if value[2] < 2 or ref[2] < 2:
        noise = "1 seed: noise cannot be judged"
    else:
        noise = f"{verdict}: difference {abs(value[0] - ref[0]):.4f} vs max std {max(value[1] or 0, ref[1] or 0):.4f}"
    return {
        "target": target,
        "model": model,
        "protocol": protocol,
        "result": RESULT_OF[verdict],
        "detail": f"{_pm(value)} vs {ref_name} {_pm(ref)}{ratio}; {noise}",
    }


def _best(records: list[dict[str, Any]], models: list[str], protocol: str) -> str | None:
    """The model of ``models`` with the highest mean NDCG@10 under ``protocol`` (None if none ran)."""
    scored = [(s[0], m) for m in models if (s := _stats(records, m, protocol)) is not None]
    return max(scored)[1] if scored else None


def target_checks(
    records: list[dict[str, Any]], models: list[str], protocols: list[str]
) -> list[dict[str, Any]]:
    """The accuracy targets, evaluated on the measured numbers by ``NOISE_RULE`` (models not run show
    as N/A)."""
    checks = []
    learned = [m for m in models if MODELS[m].trainable]
    for protocol in protocols:
        pop = _baseline(records, "popularity", protocol)
        for model in learned:
            checks.append(
                _check(
                    "beats Popularity", model, protocol, _stats(records, model, protocol), "Popularity", pop
                )
            )
    if "random_holdout" in protocols:
        for model in ("bpr", "lightgcn", "twotower"):
            value = _stats(records, model, "random_holdout")
            for knn in ("userknn", "itemknn"):
                checks.append(
                    _check(
                        f"beats {knn}",
                        model,
                        "random_holdout",
                        value,
                        knn,
                        _baseline(records, knn, "random_holdout"),
                    )
                )
        # Every learned model that ranks a user's whole catalogue, whatever its data kind (two-tower and
        # the CTR models train on examples, Mult-VAE on user rows); sequential models answer another task.
        deep = [m for m in learned if MODELS[m].kind != "sequential"]
        best = _best(records, deep, "random_holdout")
        if best is not None and "ease" in models:
            checks.append(
                _check(
                    "best deep beats EASE",
                    best,
                    "random_holdout",
                    _stats(records, best, "random_holdout"),
                    "EASE",
                    _stats(records, "ease", "random_holdout"),
                )
            )
    if "leave_last_out" in protocols:
        bpr = _stats(records, "bpr", "leave_last_out")
        for model in [m for m in models if MODELS[m].kind == "sequential"]:
            checks.append(
                _check(
                    "beats BPR", model, "leave_last_out", _stats(records, model, "leave_last_out"), "BPR", bpr
                )
            )
        others = [m for m in models if MODELS[m].kind == "sequential" and m != "sasrec"]
        best = _best(records, others, "leave_last_out")
        if best is not None and "sasrec" in models:
            checks.append(
                _check(
                    "best sequential beats SASRec",
                    best,
                    "leave_last_out",
                    _stats(records, best, "leave_last_out"),
                    "SASRec",
                    _stats(records, "sasrec", "leave_last_out"),
                )
            )
    return checks


# ------------------------------------------------------------------------------------------- reports


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "–"


def _cell(text: str, limit: int = 300) -> str:
    """Text safe inside a markdown table cell (tracebacks hold pipes and newlines)."""
    return " ".join(text.split()).replace("|", "\\|")[:limit]


def read_notes(path: Path) -> dict[tuple[str, str], str]:
    """``{(model, protocol): text}`` from the ``## <model> <protocol>`` sections of the notes file."""
    if not path.exists():
        return {}
    notes: dict[tuple[str, str], str] = {}
    key: tuple[str, str] | None = None
    for line in path.read_text().splitlines():
        parts = line[3:].split() if line.startswith("## ") else []
        if len(parts) == 2:
            key = (parts[0], parts[1])
            notes[key] = ""
        elif key is not None:
            notes[key] += line + "\n"
    return {k: v.strip() for k, v in notes.items()}


SEEN_COMPARED = ("ndcg@10", "recall@10", "hr@10", "mrr@10")


def seeds_line(meta: dict[str, Any]) -> str:
    """How the runs were seeded, from the run facts (old single-seed runs recorded ``seed``/``train_seed``)."""
    if "seeds" in meta:
        seeds = ", ".join(map(str, meta["seeds"]))
        return (
            f"seeds {seeds}: each seed is both the split seed and the training seed (leave_last_out's split "
            "does not depend on the seed, so there only the training varies)."
        )
    return f"split seed {meta['seed']}" + (
        f", training seed {meta['train_seed']}." if meta.get("train_seed") is not None else "."
    )


def _avg(recs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in recs if isinstance(r.get(key), int | float)]
    return sum(values) / len(values) if values else None


def _mean_pm(a: dict[str, Any], metric: str, digits: int = 4) -> str:
    """``mean ± std`` of ``metric`` in an ``aggregate`` entry (the mean alone for one seed)."""
    mean, std = a["mean"].get(metric), a["std"].get(metric)
    if mean is None:
        return "–"
    return _fmt(mean, digits) if std is None else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def markdown(records: list[dict[str, Any]], checks: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Leaderboard",
        "",
        f"Dataset **{meta['dataset']}** (data version `{meta['data_version']}`, {meta['events']} events), "
        f"generated {meta['generated']} by `{meta['command']}`"
        + (f" at commit `{meta['code_commit']}`." if meta.get("code_commit") else "."),
        "",
        f"- Machine: {meta['machine']}; {meta['cpu_count']} CPUs visible ({meta['cpu_affinity']} usable); "
        f"Python {meta['python']}, torch {meta['torch']}.",
        f"- {meta['workers']} worker processes x {meta['threads']} thread(s), a fresh process per run; "
        f"max {meta['max_epochs']} epochs, early stopping on validation NDCG@10 (patience {meta['patience']}); "
        + seeds_line(meta),
        f"- **Total wall time: {meta['wall_seconds'] / 60:.1f} min** ({meta['wall_seconds']:.0f} s) for "
        f"{meta['n_ok']} runs ({meta['n_failed']} failed, {meta['n_skipped']} skipped).",
        "- Test metrics, full ranking over all items, **seen items excluded** (the user's train/valid items "
        "cannot be recommended). Each cell is the mean ± sample std over the seeds (n = seeds with a result; "
        "a single seed shows its number alone); per-seed numbers are in the JSON records. Lift = mean "
        "NDCG@10 / Popularity's on the same splits. Train s = training incl. validation passes (closed-form "
        "fit for baselines); s/epoch = training loop only; epochs, times and RSS are means over the seeds.",
        "",
    ]
    stats = aggregate(records)
    seen_in = aggregate(records, "metrics_seen_included")
    for protocol in meta["protocols"]:
        rows = sorted(
            ((m, a) for (m, p), a in stats.items() if p == protocol),
            key=lambda row: -row[1]["mean"]["ndcg@10"],
        )
        lines += [
            f"## {protocol}",
            "",
            "| # | model | kind | n | "
            + " | ".join(HEADLINE)
            + " | lift | other | best valid NDCG@10 | epochs | "
            "s/epoch | train s | peak RSS MB |",
            "|---:|---|---|---:|" + "---:|" * len(HEADLINE) + "---:|---|---:|---:|---:|---:|---:|",
        ]
        for rank, (model, a) in enumerate(rows, 1):
            recs = a["records"]
            other = ", ".join(f"{k} {_mean_pm(a, k)}" for k in sorted(a["mean"]) if k not in STANDARD)
            lifts = [r["lift_over_popularity"] for r in recs if r.get("lift_over_popularity")]
            lift = f"{sum(lifts) / len(lifts):.2f}x" if lifts else "–"
            lines.append(
                f"| {rank} | {model} | {recs[0].get('kind', '–')} | {a['n']} | "
                + " | ".join(_mean_pm(a, m) for m in HEADLINE)
                + f" | {lift} | {other or '–'} | {_fmt(_avg(recs, 'best_valid_ndcg10'))} | "
                f"{_fmt(_avg(recs, 'epochs'), 1)} | {_fmt(_avg(recs, 'epoch_seconds'), 2)} | "
                f"{_fmt(_avg(recs, 'train_seconds'), 0)} | {_fmt(_avg(recs, 'peak_rss_mb'), 0)} |"
            )
        users = sorted({r["test_users"] for _, a in rows for r in a["records"]})
        lines += ["", f"Test users: {', '.join(map(str, users)) or '–'}.", ""]
        both = [(m, a, seen_in[(m, protocol)]) for m, a in rows if (m, protocol) in seen_in]
        if both:
            lines += [
                f"### {protocol}: sequential models in both conventions",
                "",
                "Published sequential benchmarks rank every item, including the ones the user already "
                "interacted with; the tables above exclude them. Same trained models, same test users.",
                "",
                "| model | n | "
                + " | ".join(f"{m} (seen items excluded)" for m in SEEN_COMPARED)
                + " | "
                + " | ".join(f"{m} (seen items included)" for m in SEEN_COMPARED)
                + " |",
                "|---|---:|" + "---:|" * (2 * len(SEEN_COMPARED)),
            ]
            for model, a, inc in both:
                lines.append(
                    f"| {model} | {inc['n']} | "
                    + " | ".join(_mean_pm(a, m) for m in SEEN_COMPARED)
                    + " | "
                    + " | ".join(_mean_pm(inc, m) for m in SEEN_COMPARED)
                    + " |"
                )
            lines.append("")

    not_ok = [r for r in records if r["status"] != "ok"]
    if not_ok:
        lines += ["## Skipped and failed", "", "| model | protocol | status | reason |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['protocol']} | {r['status']} | {_cell(r['error'])} |" for r in not_ok]
        lines.append("")

    lines += [
        "## Quality vs. training time",
        "",
        f"![NDCG@10 vs training seconds]({PLOT_SVG.name})",
        "",
        "SVG drawn by `bench/leaderboard.py` itself (matplotlib is not installed in `.venv` and is not a "
        "dependency); x = training seconds (log scale), y = test NDCG@10, one colour per protocol; models "
        f"without a training step are hollow diamonds drawn at {NO_TRAINING_SECONDS:g} s.",
        "",
        "## Targets",
        "",
        f"Rule: {NOISE_RULE} PASS = beats, FAIL = below, WITHIN NOISE = neither.",
        "",
        "| result | target | model | protocol | numbers (NDCG@10) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| **{c['result']}** | {c['target']} | {c['model']} | {c['protocol']} | {c['detail']} |"
        for c in checks
    ]
    counts = {k: sum(c["result"] == k for c in checks) for k in ("PASS", "FAIL", "WITHIN NOISE", "N/A")}
    lines += [
        "",
        f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['WITHIN NOISE']} WITHIN NOISE, "
        f"{counts['N/A']} N/A (model not run, skipped or failed).",
        "",
    ]
    failing = [c for c in checks if c["result"] == "FAIL"]
    notes = read_notes(NOTES_MD)
    lines += [
        "## Notes on failing targets",
        "",
        f"Evidence is kept in `{NOTES_MD.name}` (one `## <model> <protocol>` section each) and copied here, "
        "so regenerating the leaderboard never loses it.",
        "",
    ]
    if not failing:
        lines += ["None: every target that could be evaluated passes.", ""]
    for c in failing:
        note = notes.get((c["model"], c["protocol"]))
        lines += [
            f"### {c['model']} {c['target']} under {c['protocol']}: {c['detail']}",
            "",
            note or f"**No evidence recorded yet** in `{NOTES_MD.name}` for {c['model']} {c['protocol']}.",
            "",
        ]
    lines += [
        "## Published reference numbers",
        "",
        f"RecBole's leaderboard, MovieLens-**1M** tables ({RECBOLE_SOURCE}), full ranking, test NDCG@10, values as "
        "published there. "
        "**Those are ML-1M; ours above are "
        f"{meta['dataset']}** (fewer users and items, different split seeds and tuning): compare the "
        "ordering of models and their lift over Pop, not absolute values.",
        "",
        "| protocol | model | NDCG@10 | lift over Pop |",
        "|---|---|---:|---:|",
    ]
    pop = {"random 8:1:1 (general)": 0.1006, "random 8:1:1 (knowledge-aware)": 0.1006}
    for protocol, model, value in REFERENCES:
        lift = f"{value / pop[protocol]:.2f}x" if protocol in pop else "–"
        lines.append(f"| {protocol} | {model} | {value:.4f} | {lift} |")
    return "\n".join(lines) + "\n"


NO_TRAINING_SECONDS = 0.1  # where models without a training step (learned=False) are drawn on the x axis
CHAR_W, LABEL_H = 6.6, 13.0  # label box estimate at font-size 11: width per character, line height


def label_box(x: float, y: float, text: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of an SVG text drawn at (x, y) (baseline, left-anchored)."""
    return (x, y - LABEL_H + 3, x + CHAR_W * len(text), y + 3)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    points: list[tuple[float, float, str]], top: float, bottom: float, max_steps: int = 60
) -> list[tuple[float, float]]:
    """Label positions (text baseline x, y) for ``points`` (x, y, text) in pixels, no two boxes overlapping.

    Greedy: points in order of y; each label wants to sit right of its point, and is nudged up or down
    in whole label heights (nearest free slot first, within [top, bottom]) past the markers and the
    labels already placed; a label still without room goes left of its point. A label away from its point gets a
    leader line from the caller.
    """
    placed = [(x - 5, y - 5, x + 5, y + 5) for x, y, _ in points]  # labels keep off every marker too
    out: list[tuple[float, float] | None] = [None] * len(points)
    for i in sorted(range(len(points)), key=lambda j: points[j][1]):
        x, y, text = points[i]
        want = y + 4
        choice: tuple[float, float] | None = None
        for lx in (x + 7, x - 7 - CHAR_W * len(text)):
            for step in range(max_steps):
                for dy in (step, -step) if step else (0,):
                    ly = want + dy * LABEL_H
                    box = label_box(lx, ly, text)
                    if box[1] < top or box[3] > bottom:
                        continue
                    if not any(_overlaps(box, other) for other in placed):
                        choice = (lx, ly)
                        break
                if choice:
                    break
            if choice:
                break
        choice = choice or (x + 7, want)
        placed.append(label_box(*choice, text))
        out[i] = choice
    return [pos for pos in out if pos is not None]


def svg_frame(
    size: tuple[int, int], plot: tuple[int, int, int, int], x_label: str, y_label: str
) -> list[str]:
    """The opening lines of an SVG plot of ``size`` (width, height): white background, the axes of the
    ``plot`` area (left, top, width, height) and their labels; close with ``</svg>``."""
    (width, height), (left, top, plot_w, plot_h) = size, plot
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" transform="rotate(-90 16 {top + plot_h / 2})">'
        f"{html.escape(y_label)}</text>",
    ]


def mean_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (model, protocol): mean NDCG@10 and mean training seconds over its seeds."""
    out = []
    for (model, protocol), a in aggregate(records).items():
        recs = a["records"]
        out.append(
            {
                "model": model,
                "protocol": protocol,
                "status": "ok",
                "learned": recs[0].get("learned", True),
                "metrics": {"ndcg@10": a["mean"]["ndcg@10"]},
                "train_seconds": _avg(recs, "train_seconds") or 0.0,
            }
        )
    return out


def svg_scatter(
    records: list[dict[str, Any]], protocols: list[str], width: int = 840, height: int = 520
) -> str:
    """A dependency-free scatter plot: NDCG@10 (y) vs training seconds (x, log10), labelled points.

    Models without a training step (``learned`` False: counts, neighbourhoods, TF-IDF) are hollow
    diamonds at ``NO_TRAINING_SECONDS``, as the legend says; labels are placed by ``place_labels``.
    """
    ok = mean_records(records)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    left, right, top, bottom = 70, 250, 30, 55
    plot_w, plot_h = width - left - right, height - top - bottom

    def seconds(r: dict[str, Any]) -> float:
        return max(r["train_seconds"], NO_TRAINING_SECONDS) if r.get("learned", True) else NO_TRAINING_SECONDS

    xs = [math.log10(seconds(r)) for r in ok] or [0.0, 1.0]
    ys = [r["metrics"]["ndcg@10"] for r in ok] or [0.0, 1.0]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs) + 1e-9)
    x1 = max(x1, x0 + 1)
    y1 = max(ys) * 1.1 or 1.0

    def px(x: float) -> float:
        return left + 20 + (x - x0) / (x1 - x0) * (plot_w - 40)

    def py(y: float) -> float:
        return top + plot_h - y / y1 * plot_h

    out = svg_frame(
        (width, height), (left, top, plot_w, plot_h), "training seconds (log scale)", "test NDCG@10"
    )
    for exp in range(x0, x1 + 1):
        x = px(exp)
        out.append(f'<line x1="{x}" y1="{top + plot_h}" x2="{x}" y2="{top + plot_h + 5}" stroke="black"/>')
        out.append(f'<text x="{x}" y="{top + plot_h + 18}" text-anchor="middle">{10**exp:g}</text>')
    for i in range(6):
        y = y1 * i / 5
        out.append(f'<line x1="{left - 5}" y1="{py(y)}" x2="{left}" y2="{py(y)}" stroke="black"/>')
        out.append(f'<text x="{left - 8}" y="{py(y) + 4}" text-anchor="end">{y:.2f}</text>')
        out.append(f'<line x1="{left}" y1="{py(y)}" x2="{left + plot_w}" y2="{py(y)}" stroke="#eee"/>')

    def marker(x: float, y: float, colour: str, learned: bool) -> str:
        if learned:
            return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}" fill-opacity="0.8"/>'
        return (
            f'<path d="M{x:.1f},{y - 5:.1f} L{x + 5:.1f},{y:.1f} L{x:.1f},{y + 5:.1f} L{x - 5:.1f},{y:.1f} Z" '
            f'fill="white" stroke="{colour}" stroke-width="1.5"/>'
        )

    legend_x = left + plot_w + 20
    row = 0
    points: list[tuple[float, float, str, str]] = []
    for i, protocol in enumerate(protocols):
        colour = colours[i % len(colours)]
        out.append(marker(legend_x, top + 10 + 18 * row, colour, True))
        out.append(f'<text x="{legend_x + 10}" y="{top + 14 + 18 * row}">{html.escape(protocol)}</text>')
        row += 1
        for r in (r for r in ok if r["protocol"] == protocol):
            x, y = px(math.log10(seconds(r))), py(r["metrics"]["ndcg@10"])
            out.append(marker(x, y, colour, r.get("learned", True)))
            points.append((x, y, r["model"], colour))
    out.append(marker(legend_x, top + 10 + 18 * row, "#555", False))
    out.append(f'<text x="{legend_x + 10}" y="{top + 14 + 18 * row}">no training step (counts,</text>')
    out.append(
        f'<text x="{legend_x + 10}" y="{top + 28 + 18 * row}">neighbours, TF-IDF): drawn at {NO_TRAINING_SECONDS:g} s</text>'
    )
    positions = place_labels([(x, y, text) for x, y, text, _ in points], top, top + plot_h)
    for (x, y, text, colour), (lx, ly) in zip(points, positions, strict=True):
        box = label_box(lx, ly, text)
        anchor_x = box[0] if lx > x else box[2]
        anchor_y = min(max(y, box[1]), box[3])
        if abs(anchor_y - y) > 2:  # moved off its point: a leader line says whose label it is
            out.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{anchor_x:.1f}" y2="{anchor_y:.1f}" '
                f'stroke="{colour}" stroke-width="0.6" stroke-opacity="0.7"/>'
            )
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{colour}">{html.escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- README

README_START, README_END = "<!-- leaderboard-table:start -->", "<!-- leaderboard-table:end -->"
# The README's names for the models (the registry's keys are short identifiers).
DISPLAY_NAMES = {
    "popularity": "Popularity",
    "itemknn": "ItemKNN",
    "userknn": "UserKNN (Pearson)",
    "bpr": "BPR-MF",
    "neumf": "NeuMF",
    "lightgcn": "LightGCN",
    "sasrec": "SASRec",
    "gru4rec": "GRU4Rec",
    "narm": "NARM",
    "hybridmf": "hybrid MF (side features)",
    "mf": "rating MF (MSE)",
    "content": "content-based (TF-IDF + popularity prior)",
    "twotower": "two-tower (side features)",
    "deepfm": "DeepFM",
    "din": "DIN",
    "dien": "DIEN",
    "cke": "CKE (knowledge graph)",
    "reinforce": "REINFORCE (top-K off-policy)",
    "ease": "EASE (closed form)",
    "multvae": "Mult-VAE",
    "gsasrec": "gSASRec (sampled negatives)",
    "bert4rec": "BERT4Rec (bidirectional, cloze)",
}
PROTOCOL_HEADERS = {
    "random_holdout": "`random_holdout` (8:1:1 per user)",
    "leave_last_out": "`leave_last_out`",
}


def readme_table(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The README's accuracy table: test NDCG@10 mean ± std per protocol, the best mean of each column
    bold, then a line naming the seeds and the commit."""
    protocols = meta["protocols"]
    stats = aggregate(records)
    models = list(dict.fromkeys(m for m, _ in stats))
    best = {
        p: max((a["mean"]["ndcg@10"] for (_, q), a in stats.items() if q == p), default=None)
        for p in protocols
    }

    def cell(model: str, protocol: str) -> str:
        a = stats.get((model, protocol))
        if a is None:
            return "–"
        text = _mean_pm(a, "ndcg@10")
        # Equal as printed counts as a tie: a reader cannot tell two bold-worthy cells apart otherwise.
        top = best[protocol] is not None and round(a["mean"]["ndcg@10"], 4) == round(best[protocol], 4)
        return f"**{text}**" if top else text

    def key(model: str) -> tuple[float, ...]:
        return tuple(
            -(stats[(model, p)]["mean"]["ndcg@10"] if (model, p) in stats else -1.0) for p in protocols
        )

    lines = [
        "| model | " + " | ".join(PROTOCOL_HEADERS.get(p, f"`{p}`") for p in protocols) + " |",
        "|---|" + "---:|" * len(protocols),
    ]
    lines += [
        f"| {DISPLAY_NAMES.get(m, m)} | " + " | ".join(cell(m, p) for p in protocols) + " |"
        for m in sorted(models, key=key)
    ]
    seeds = sorted({s for a in stats.values() for s in a["seeds"] if s is not None})
    n = len(seeds) or 1
    spread = "mean ± sample std over" if n > 1 else "from"
    named = f" ({', '.join(map(str, seeds))})" if seeds else ""
    commit = f" at commit `{meta['code_commit']}`" if meta.get("code_commit") else ""
    lines += [
        "",
        f"Test NDCG@10, {spread} {n} seed{'s' if n > 1 else ''}{named}{commit}; best mean per column in bold. "
        "Generated by `bench/leaderboard.py --readme` from the leaderboard's records.",
    ]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between the README markers replaced by ``block``; the rest untouched."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(
            f"the README has no {README_START} ... {README_END} block to rewrite (add both markers around "
            "the accuracy table)"
        )
    return text[: start + len(README_START)] + "\n" + block + text[end:]


def write_readme(path: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.write_text(replace_block(path.read_text(), readme_table(records, meta)))
    print(f"rewrote the leaderboard table in {path}")


# ---------------------------------------------------------------------------------------------- main


def parse_hparams(values: list[str]) -> dict[str, dict[str, Any]]:
    """``["sasrec.loss_type=bce"]`` -> ``{"sasrec": {"loss_type": "bce"}}`` (bench_training's parser)."""
    from bench_training import parse_overrides

    return parse_overrides(values)


def main(argv: list[str] | None = None) -> int:
    defaults = load_config()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        default="ml-100k",
        help=f"{' | '.join(DATASETS)} | a source kind (grouplens_100k, movielens_dat, events) with --data-path",
    )
    parser.add_argument("--data-path", default=None, help="source.path (directory or events file)")
    parser.add_argument("--models", default="all", help="comma list, or 'all' = every registered model")
    parser.add_argument("--protocols", default="random_holdout,leave_last_out")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--max-epochs", type=int, default=defaults.trainer.max_epochs)
    parser.add_argument("--patience", type=int, default=defaults.trainer.patience)
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma list; each seed is one run per (model, protocol), as split and training seed "
        f"(default: the 3 seeds from the config's split seed, {defaults.split.seed})",
    )
    parser.add_argument("--seed", type=int, default=None, help="one seed: the same as --seeds SEED")
    parser.add_argument("--home", default=str(defaults.home_dir), help="RECFORGE_HOME (data is reused)")
    parser.add_argument("--hparam", action="append", default=[], metavar="MODEL.KEY=VALUE")
    parser.add_argument("--out-json", default=str(RESULTS_JSON))
    parser.add_argument("--out-md", default=str(REPORT_MD))
    parser.add_argument(
        "--render-only", action="store_true", help="re-render the markdown from --out-json (no training)"
    )
    parser.add_argument(
        "--readme", default=None, help="rewrite the accuracy table between this file's leaderboard markers"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RUN_JSON",
        help="combine runs of other seeds (their records JSON, each beside its .meta.json) into --out-json "
        "and render it; the runs must share data version, protocols, settings and code commit",
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge_runs(
            [Path(p) for p in args.merge],
            Path(args.out_json),
            Path(args.out_md),
            Path(args.readme) if args.readme else None,
        )
    if args.render_only:
        return render_only(Path(args.out_json), Path(args.out_md), Path(args.readme) if args.readme else None)
    if args.seeds is not None and args.seed is not None:
        raise SystemExit("give --seeds or --seed, not both")
    seeds = parse_seeds(args.seeds, args.seed, defaults.split.seed)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spawned workers inherit it
    started = time.perf_counter()
    commit = code_commit()  # at the start: the tree the runs import, even if it changes meanwhile

    requested = (
        list(MODELS) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    )
    unknown = [m for m in requested if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; registered: {list(MODELS)}")
    models = [m for m in MODELS if m in requested]  # registry order
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]

    home = Path(args.home).resolve()
    overrides = source_overrides(args.dataset, args.data_path, home)
    feature_set, feature_manifest = prepare_data(overrides)
    prepare_splits(feature_set, protocols, overrides, seeds)

    records: list[dict[str, Any]] = []
    jobs = []
    hparams = parse_hparams(args.hparam)
    for model in models:
        reason = importable(model)
        if reason is not None:
            print(f"SKIP {model}: {reason}", flush=True)
            records += [
                {
                    "model": model,
                    "protocol": p,
                    "seed": seed,
                    "status": "skipped",
                    "error": reason,
                    "params": {},
                }
                for p in protocols
                for seed in seeds
            ]
            continue
        params = model_params(model, hparams.get(model))  # a typo fails here, not after training
        for protocol in protocols:
            jobs += [
                training_job(model, protocol, seed, params, feature_manifest, home, args) for seed in seeds
            ]
    # Longest jobs first (per-example models and sequence models cost 5-20x a BPR epoch), so the two
    # workers finish together instead of one running DIEN alone at the end.
    cost_rank = {"example": 0, "sequential": 1, "general": 2, "baseline": 3}
    jobs.sort(key=lambda job: cost_rank.get(MODELS[job["model"]].kind, 2))
    records += run_all(jobs, args.workers)
    order = {m: i for i, m in enumerate(MODELS)}
    records.sort(key=lambda r: (protocols.index(r["protocol"]), order[r["model"]], r["seed"]))
    wall = time.perf_counter() - started

    import torch

    meta = {
        "dataset": args.dataset,
        "data_version": feature_set.data_version,
        "events": _count_events(feature_set),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code_commit": commit,
        "command": "python bench/leaderboard.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.platform()} ({platform.machine()})",
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "workers": args.workers,
        "threads": args.threads,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "seeds": seeds,
        "protocols": protocols,
        "wall_seconds": wall,
        "n_ok": sum(r["status"] == "ok" for r in records),
        "n_failed": sum(r["status"] == "failed" for r in records),
        "n_skipped": sum(r["status"] == "skipped" for r in records),
    }
    checks = target_checks(records, models, protocols)
    out_json, out_md = Path(args.out_json), Path(args.out_md)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(records, indent=2, sort_keys=False) + "\n")
    meta_path(out_json).write_text(json.dumps(meta, indent=2) + "\n")
    (out_md.parent / PLOT_SVG.name).write_text(svg_scatter(records, protocols))
    out_md.write_text(markdown(records, checks, meta))
    if args.readme:
        write_readme(Path(args.readme), records, meta)
    for c in checks:
        print(f"{c['result']:4s} {c['target']:18s} {c['model']:9s} {c['protocol']:15s} {c['detail']}")
    print(f"total wall time {wall / 60:.1f} min; wrote {out_json}, {out_md}, {out_md.parent / PLOT_SVG.name}")
    return 0


def meta_path(out_json: Path) -> Path:
    """Run facts (machine, wall time, command) beside the records, for ``--render-only``."""
    return out_json.with_name(out_json.stem + ".meta.json")


def parse_seeds(seeds: str | None, seed: int | None, config_seed: int) -> list[int]:
    """``--seeds 1,2,3`` -> [1, 2, 3]; ``--seed N`` -> [N]; neither -> 3 seeds from the config's."""
    if seed is not None:
        return [seed]
    if seeds is None:
        return [config_seed, config_seed + 1, config_seed + 2]
    parsed = [int(s) for s in seeds.split(",") if s.strip()]
    if not parsed or len(set(parsed)) != len(parsed):
        raise SystemExit(f"--seeds {seeds!r}: give distinct integers, comma-separated")
    return parsed


# Run facts that must agree for records of several runs to form one leaderboard.
MERGE_MUST_AGREE = (
    "dataset",
    "data_version",
    "code_commit",
    "protocols",
    "max_epochs",
    "patience",
    "threads",
)


def merge_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's facts for several runs of other seeds (one seed set per run, e.g. a seed per night).

    Raises ``ValueError`` when the runs disagree on what makes their numbers comparable or share a seed.
    """
    first = metas[0]
    for key in MERGE_MUST_AGREE:
        values = {json.dumps(m.get(key), sort_keys=True) for m in metas}
        if len(values) > 1:
            raise ValueError(f"runs to merge differ in {key}: {sorted(values)}")
    seeds = [s for m in metas for s in m.get("seeds", [m.get("seed")])]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs to merge share a seed: {seeds}")
    return {
        **first,
        "generated": max(m["generated"] for m in metas),
        "command": " + ".join(m["command"] for m in metas) + " (merged with --merge)",
        "seeds": seeds,
        "wall_seconds": sum(m["wall_seconds"] for m in metas),
        **{k: sum(m[k] for m in metas) for k in ("n_ok", "n_failed", "n_skipped")},
    }


def merge_runs(runs: list[Path], out_json: Path, out_md: Path, readme: Path | None = None) -> int:
    """``--merge``: the records of ``runs`` as one leaderboard at ``out_json`` / ``out_md``."""
    meta = merge_meta([json.loads(meta_path(run).read_text()) for run in runs])
    records = [r for run in runs for r in json.loads(run.read_text())]
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(records, indent=2, sort_keys=False) + "\n")
    meta_path(out_json).write_text(json.dumps(meta, indent=2) + "\n")
    return render_only(out_json, out_md, readme)


def render_only(out_json: Path, out_md: Path, readme: Path | None = None) -> int:
    """Rewrite the markdown and plot from saved records (e.g. after adding notes), without training."""
    records = json.loads(out_json.read_text())
    meta = json.loads(meta_path(out_json).read_text())
    models = list(dict.fromkeys(r["model"] for r in records))
    checks = target_checks(records, models, meta["protocols"])
    (out_md.parent / PLOT_SVG.name).write_text(svg_scatter(records, meta["protocols"]))
    out_md.write_text(markdown(records, checks, meta))
    print(f"re-rendered {out_md} from {out_json}")
    if readme is not None:
        write_readme(readme, records, meta)
    return 0


def _count_events(feature_set: FeatureSet) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(feature_set.examples).metadata.num_rows


if __name__ == "__main__":
    raise SystemExit(main())
