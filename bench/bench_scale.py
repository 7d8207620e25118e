"""Do the pipeline's data stages grow linearly with the log? Wall seconds and peak RSS per stage at 1M-20M events.

For each size, ``recforge example synthetic`` writes a shop log under ``--data`` (reused when present),
then the pipeline's stages run one after another on it, each in a fresh process so that its peak RSS
(``/proc/self/status`` ``VmHWM``) is its own: ingest, validate, features (tables, Feast apply,
point-in-time retrieval, materialise: the sub-timings ``features.store.build_features`` records in
``build_stats.json``), split (``training/split.py``, as it is) and, where asked, one BPR training epoch
in the configuration docs/scaling.md gives for large catalogues (sparse id tables, early stopping on a
fixed sample of ``trainer.valid_users`` validation users) and the evaluation (``training/``, as it is;
every test user, the whole catalogue) with the baselines docs/scaling.md keeps for a large deployment
(Popularity and ItemKNN; UserKNN's fit is quadratic in users), its parts' seconds from
``evaluation.json``. Training and evaluation use the pipeline's default ``trainer.num_threads`` (2).

``--models bpr,twotower``: the data stages run once; each model then trains and is evaluated on the
same split. The baselines do not depend on the model: the first model's evaluation fits them and
caches their metrics with the split (as ``training/evaluate.py`` always does), the later models' read
Popularity (the gate needs it) from that cache. Each model's "whole pipeline" line is the sum of the
stages one run of it alone would do: the data stages, its training and evaluation, plus (for a later
model) the baselines' seconds measured in the first model's evaluation.

A watchdog polls every stage's resident memory and ends the stage when it passes ``--rss-limit-mb``
(the machine is shared), or when it runs past ``--stage-timeout-s``; such a stage is reported as not
finished, with the reason, and the later stages of that size are not run.

``--on-kept-split``: no data stages; each model trains and is evaluated on the split that the last run
of that size left in ``--data`` (a model added to a long run without repeating its data stages).

Writes ``bench/results/scale.json`` and ``bench/results/scale.md``: per stage and size the wall
seconds and peak RSS, and the log-log slope between consecutive sizes (1.0 = linear).

Usage:
    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python bench/bench_scale.py
        [--sizes 1000000:100000:50000,5000000:300000:250000,20000000:1000000:1000000]
        [--stages ingest,validate,features,split,train,evaluate] [--data /tmp/scale-data]
        [--models bpr,twotower]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from pipeline.provenance import code_commit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("ingest", "validate", "features", "split", "train", "evaluate")
FEATURE_PARTS = {
    "tables_s": "tables",
    "apply_s": "Feast apply",
    "historical_s": "point-in-time",
    "materialize_s": "materialise",
}
EVALUATION_PARTS = {
    "inputs": "test inputs",
    "model": "model ranking",
    "popularity": "popularity",
    "itemknn": "itemknn (fit + ranking)",
}
# One epoch: the cost of an epoch, not of a converged model; no early stop to wait for. Early stopping
# ranks a fixed sample of validation users (the test part is always ranked whole).
TRAIN_OVERRIDES = {
    "trainer.max_epochs": 1,
    "trainer.valid_users": 20_000,
    "evaluation.baselines": ["popularity", "itemknn"],
}
# What docs/scaling.md configures for a large catalogue: sparse id tables, so a step costs the batch.
HPARAMS = {"sparse_embeddings": True}
MODELS = ("bpr", "twotower")
# A later model's evaluation: Popularity only (the promotion gate requires it), read from the cache
# the first model's evaluation of the same split wrote.
LATER_MODEL_OVERRIDES = {**TRAIN_OVERRIDES, "evaluation.baselines": ["popularity"]}
RUN_ID = "scale"


def process_peak_rss_mb() -> float | None:
    """This process's own RSS high-water mark (Linux ``VmHWM``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stage_key(stage: str, model: str, first_model: str) -> str:
    """The results' key of a stage: the stage's name, or ``train:twotower`` for a later model's."""
    return stage if stage not in ("train", "evaluate") or model == first_model else f"{stage}:{model}"


def run_child(stage: str, data_dir: Path, inputs: list[str], model: str, first_model: str) -> dict[str, Any]:
    """Run one stage in this process (the child side); return its output path and costs."""
    os.environ["RECFORGE_HOME"] = str(data_dir / "home")
    os.environ["RECFORGE_CONFIG"] = str(data_dir / "pipeline.yaml")
    from orchestration import stages  # before torch: recforge sets torch's allocator options

    started = time.perf_counter()
    extra: dict[str, Any] = {}
    overrides = TRAIN_OVERRIDES if model == first_model else LATER_MODEL_OVERRIDES
    if stage == "ingest":
        output = stages.ingest(model, RUN_ID, overrides, HPARAMS)  # the run's config: first stage
    elif stage == "validate":
        output = stages.validate(model, RUN_ID, inputs[0], overrides)
    elif stage == "features":
        output = stages.features(model, RUN_ID, inputs[0], overrides)
        manifest = json.loads(Path(output).read_text())
        stats = Path(manifest["examples"]).parent / "build_stats.json"
        extra = {"parts_s": json.loads(stats.read_text())["timings_s"], "examples": manifest["examples"]}
    elif stage == "split":
        output = stages.split(model, RUN_ID, inputs[0], overrides)
    elif stage == "train":
        output = stages.train(model, RUN_ID, inputs[0], overrides, HPARAMS)
    elif stage == "evaluate":
        output = stages.evaluate(model, RUN_ID, inputs[0], inputs[1], overrides)
        extra = {"parts_s": json.loads(Path(output).read_text())["seconds"]}
    else:
        raise SystemExit(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    return {
        "output": output,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": process_peak_rss_mb(),
        **extra,
    }


def watched(cmd: list[str], env: dict[str, str], rss_limit_mb: float, timeout_s: float) -> dict[str, Any]:
    """Run ``cmd``; end it when its RSS passes the limit or it runs past the timeout."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    highest = 0.0
    reason = None
    while proc.poll() is None:
        highest = max(highest, _rss_mb(proc.pid))
        if highest > rss_limit_mb:
            reason = f"ended by the watchdog: RSS passed {rss_limit_mb:.0f} MB"
        elif time.perf_counter() - started > timeout_s:
            reason = f"ended by the watchdog: still running after {timeout_s:.0f} s"
        if reason:
            proc.kill()
            break
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if reason is None and proc.returncode != 0:
        reason = (
            f"failed (exit {proc.returncode}): " + (stderr.strip().splitlines() or ["no message"])[-1][:300]
        )
    if reason:
        return {"status": reason, "wall_s": wall, "peak_rss_mb": highest}
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"status": "ok", **result}


def generate(spec: tuple[int, int, int], data: Path) -> tuple[Path, dict[str, Any]]:
    events, items, users = spec
    directory = data / f"events{events}-items{items}-users{users}"
    if not (directory / "pipeline.yaml").is_file():
        cmd = [sys.executable, "-m", "orchestration.cli", "example", "synthetic", "--events", str(events)]
        cmd += ["--items", str(items), "--users", str(users), str(directory)]
        started = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        return directory, {"status": "ok", "wall_s": time.perf_counter() - started}
    return directory, {"status": "reused"}


def kept_split(directory: Path) -> tuple[Path, str]:
    """The split an earlier run of this size left in its home, and the model whose run made it."""
    found = sorted((directory / "home" / "runs").glob(f"*/{RUN_ID}/split.json"))
    if len(found) != 1:
        raise SystemExit(
            f"--on-kept-split: expected one split under {directory / 'home'}, found {len(found)}"
        )
    return found[0], found[0].parent.parent.name


def bench_size(
    spec: tuple[int, int, int],
    data: Path,
    stages: list[str],
    models: list[str],
    rss_limit_mb: float,
    timeout_s: float,
    on_kept_split: bool = False,
) -> dict[str, Any]:
    directory, generated = generate(spec, data)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    outputs: dict[str, str] = {}
    split_from = None
    if on_kept_split:
        # Training and evaluation only, on the split of an earlier run (whose result holds the data
        # stages' costs); the baselines come from that split's cache, as for a later model.
        split_path, split_from = kept_split(directory)
        outputs["split"] = str(split_path)
        stages = [stage for stage in stages if stage in ("train", "evaluate")]
    else:
        shutil.rmtree(directory / "home", ignore_errors=True)  # every stage does its work (no reuse)
    inputs_of = {
        "ingest": [],
        "validate": ["ingest"],
        "features": ["validate"],
        "split": ["features"],
        "train": ["split"],
        "evaluate": ["train", "split"],
    }
    first = split_from or models[0]  # the model whose evaluation fits the baselines
    # The data stages once (under the first model's run), then training and evaluation per model.
    plan = [(stage, first) for stage in stages if stage not in ("train", "evaluate")]
    plan += [(stage, model) for model in models for stage in stages if stage in ("train", "evaluate")]
    results: dict[str, Any] = {"generate": generated}
    for stage, model in plan:
        key = stage_key(stage, model, models[0])
        needed = [stage_key(n, model, models[0]) for n in inputs_of[stage]]
        if any(n not in outputs for n in needed):
            results[key] = {
                "status": f"not run: {', '.join(n for n in needed if n not in outputs)} did not finish"
            }
            continue
        cmd = [sys.executable, __file__, "--child", stage, "--dir", str(directory)]
        cmd += ["--model", model, "--first-model", first]
        cmd += [a for n in needed for a in ("--input", outputs[n])]
        print(f"[{spec[0]:,} events] {key} ...", file=sys.stderr, flush=True)
        result = watched(cmd, env, rss_limit_mb, timeout_s)
        print(f"[{spec[0]:,} events] {key}: {result}", file=sys.stderr, flush=True)
        if result["status"] == "ok":
            outputs[key] = result.pop("output")
        results[key] = result
    run = {
        "events": spec[0],
        "items": spec[1],
        "users": spec[2],
        "data": str(directory),
        "models": models,
        "stages": results,
    }
    if split_from:
        run["split_from"] = split_from
    return run


def slope(a: float | None, b: float | None, n_a: int, n_b: int) -> float | None:
    if not a or not b or a <= 0 or b <= 0:
        return None
    return math.log(b / a) / math.log(n_b / n_a)


DATA_STAGES = ("ingest", "validate", "features", "split")


def models_of(runs: list[dict[str, Any]]) -> list[str]:
    return runs[0].get("models", ["bpr"]) if runs else []  # results from before --models: BPR only


def rows_of(runs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(stage label, stage key, part key or "") for every reported line."""
    rows: list[tuple[str, str, str]] = []
    for stage in DATA_STAGES:
        if not any(stage in r["stages"] for r in runs):
            continue
        rows.append((stage, stage, ""))
        if stage == "features":
            rows += [(f"  features: {label}", stage, key) for key, label in FEATURE_PARTS.items()]
    models = models_of(runs)
    for model in models:
        for stage in ("train", "evaluate"):
            key = stage_key(stage, model, models[0])
            if not any(key in r["stages"] for r in runs):
                continue
            rows.append((f"{stage} ({model})", key, ""))
            if stage == "evaluate":
                fits_baselines = model == models[0] and not runs[0].get("split_from")
                parts = list(EVALUATION_PARTS) if fits_baselines else ["inputs", "model"]
                rows += [(f"  evaluate: {EVALUATION_PARTS[part]}", key, part) for part in parts]
    if not runs[0].get("split_from"):
        rows += [(f"**whole pipeline ({model})**", f"total:{model}", "") for model in models]
    return rows


def value(run: dict[str, Any], stage: str, part: str, what: str) -> float | None:
    if stage.startswith("total:"):
        return pipeline_total(run, stage.removeprefix("total:"), what)
    result = run["stages"].get(stage) or {}
    if result.get("status") != "ok":
        return None
    if part:
        return None if what != "wall_s" else (result.get("parts_s") or {}).get(part)
    v = result.get(what)
    return float(v) if v is not None else None


def pipeline_total(run: dict[str, Any], model: str, what: str) -> float | None:
    """A run of ``model`` end to end: the sum of its stages' seconds (or the highest peak RSS); a later
    model's run alone would also fit the baselines, measured once in the first model's evaluation."""
    models = models_of([run])
    keys = [*DATA_STAGES, stage_key("train", model, models[0]), stage_key("evaluate", model, models[0])]
    values = [value(run, key, "", what) for key in keys]
    if model != models[0] and what == "wall_s":
        values += [value(run, "evaluate", part, what) for part in ("popularity", "itemknn")]
    if any(v is None for v in values):
        return None
    return sum(values) if what == "wall_s" else max(values)  # type: ignore[type-var,arg-type]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def markdown(meta: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    sizes = [
        f"{r['events'] / 1e6:g}M ev / {r['items'] / 1e3:g}k items / {r['users'] / 1e3:g}k users" for r in runs
    ]
    home = "the home the earlier run left" if runs and runs[0].get("split_from") else "a fresh RECFORGE_HOME"
    lines = [
        "# The pipeline's data stages at growing log sizes",
        "",
        f"Synthetic shop logs (`recforge example synthetic`), sizes: {'; '.join(sizes)}. Each stage ran in a "
        f"fresh process, one at a time, on {home} per size; wall = seconds of the stage, "
        "RSS = the stage process's peak resident memory (`VmHWM`). Models: "
        f"{', '.join(models_of(runs))}; each trains one epoch (sparse id tables), 2 torch threads; the "
        "evaluation is `training/evaluate.py` as it is (full ranking, all test users, 2 torch threads) "
        "with the Popularity and ItemKNN baselines, fitted in the first model's evaluation (a later "
        "model's reads them from the split's cache). A model's whole pipeline: the data stages plus its "
        "training and evaluation (plus the baselines' seconds for a later model); its RSS is the "
        "highest stage's.",
        "",
        f"Machine: {meta['machine']}, {meta['cpus']} CPUs, {meta['memory_gb']:.0f} GiB; python {meta['python']}; "
        f"generated {meta['generated']}. Load average at the end: {meta['loadavg']} (the machine is shared "
        "with other jobs: expect 10-30% noise in single timings).",
        "",
        "| stage | "
        + " | ".join(f"{r['events'] / 1e6:g}M wall s" for r in runs)
        + " | "
        + " | ".join(f"{r['events'] / 1e6:g}M RSS MB" for r in runs)
        + " | "
        + " | ".join(
            f"slope {a['events'] / 1e6:g}M→{b['events'] / 1e6:g}M (wall / RSS)"
            for a, b in zip(runs, runs[1:], strict=False)
        )
        + " |",
        "|---|" + "---:|" * (2 * len(runs) + max(0, len(runs) - 1)),
    ]
    notes: list[str] = []
    for label, stage, part in rows_of(runs):
        walls = [value(r, stage, part, "wall_s") for r in runs]
        rss = [None if part else value(r, stage, part, "peak_rss_mb") for r in runs]
        slopes = []
        for i, (a, b) in enumerate(zip(runs, runs[1:], strict=False)):
            sw = slope(walls[i], walls[i + 1], a["events"], b["events"])
            sr = slope(rss[i], rss[i + 1], a["events"], b["events"])
            slopes.append(f"{_fmt(sw, 2)} / {_fmt(sr, 2)}")
        cells = [_fmt(w) for w in walls] + [_fmt(m, 0) for m in rss] + slopes
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if not part and not stage.startswith("total:"):
            for r in runs:
                status = (r["stages"].get(stage) or {}).get("status", "not run: not asked")
                if status != "ok":
                    notes.append(f"- {stage} at {r['events']:,} events: {status}")
    lines += [
        "",
        "Slope = log(cost at the larger size / cost at the smaller) / log(events ratio); 1.0 = linear.",
    ]
    if split_from := runs[0].get("split_from"):
        lines += [
            "",
            f"Training and evaluation only (`--on-kept-split`): on the split that an earlier run ({split_from}'s, "
            "the same data) left, whose result holds the data stages' costs and the baselines' fit; a "
            "model's whole pipeline is that result's data stages and baselines plus its rows here.",
        ]
    if notes:
        lines += ["", "Stages that did not finish:", "", *notes]
    lines += ["", f"Command: `{meta['command']}` at git `{meta['code_commit']}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="1000000:100000:50000,5000000:300000:250000,20000000:1000000:1000000"
    )
    parser.add_argument("--stages", default="ingest,validate,features,split,train,evaluate")
    parser.add_argument("--models", default="bpr", help=f"comma-separated; of {', '.join(MODELS)}")
    parser.add_argument("--data", type=Path, default=Path("/tmp/scale-data"))
    parser.add_argument("--rss-limit-mb", type=float, default=14_000)
    parser.add_argument("--stage-timeout-s", type=float, default=1_800)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale")
    parser.add_argument(
        "--on-kept-split",
        action="store_true",
        help="train and evaluate --models on the split an earlier run of each size left in --data",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--model", default="bpr", help=argparse.SUPPRESS)
    parser.add_argument("--first-model", default="bpr", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.dir, args.input, args.model, args.first_model)))
        return

    specs = [tuple(int(x) for x in s.split(":")) for s in args.sizes.split(",")]
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    args.data.mkdir(parents=True, exist_ok=True)
    runs = [
        bench_size(
            spec, args.data, stages, models, args.rss_limit_mb, args.stage_timeout_s, args.on_kept_split
        )  # type: ignore[arg-type]
        for spec in specs
    ]
    meta = {
        "code_commit": code_commit(),
        "command": "python bench/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(),
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "rss_limit_mb": args.rss_limit_mb,
        "stage_timeout_s": args.stage_timeout_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(meta, runs))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
