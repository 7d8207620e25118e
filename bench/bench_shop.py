"""The synthetic shop through every attribute-aware model's pipeline, with and without its attributes.

For each model (two-tower, hybrid MF, DeepFM, DIN, DIEN, content) one ``run_all`` on ``recforge example shop``
data runs the stages the model's DAG runs (ingest, validate, Feast, split, train, evaluate, gate,
package with a service Bento, promote, drift), each model in a fresh ``RECFORGE_HOME`` so that every
one is judged against popularity alone and gets its own service and drift report. The ablation reruns
a model with an ids-only schema (the same files; the attributes are not declared, so not read).

Measured per run: test NDCG@10 and recall@10 next to popularity's (same split), the gate's decision,
the service Bento, the drift report (columns monitored, decision), and three checks through the
serving code (``serving.recommender.Recommender``, the object the Bento service wraps):

- **cold items placed**: for each item with attributes but no training event, its mean score
  percentile among all items for users who bought items of the same category and brand, minus the
  same for users who never bought its category (0 = cannot tell them apart);
- **similar to a cold item**: share of ``/similar_items`` neighbours of a cold item in its category,
  next to the category's share of the catalogue;
- **cold users**: how a user never seen is served from ``user_features`` alone (strategy) and how
  different the top-10 of two users of different segments are (Jaccard overlap; 1 = identical).

    .venv/bin/python bench/bench_shop.py                   # all models + ablations, 10 epochs
    .venv/bin/python bench/bench_shop.py --models twotower --epochs 3 --out /tmp/shop

Writes ``bench/results/shop.json`` and ``bench/results/shop.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipeline.provenance import code_commit  # noqa: E402

ATTRIBUTE_MODELS = ("twotower", "hybridmf", "deepfm", "din", "dien", "content")
ABLATED = ("twotower", "hybridmf", "deepfm")  # ablation: the gain over popularity must go with the attributes
SHOP = {"n_users": 2000, "n_items": 1500, "n_events": 60000, "cold_items": 20, "seed": 7}


def run_one(model: str, variant: str, data_dir: Path, home: Path, epochs: int) -> dict[str, Any]:
    """One pipeline run in this process (called in a fresh interpreter per run: see ``main``)."""
    import numpy as np
    import pandas as pd

    files = {name: data_dir / f"{name}.csv" for name in ("events", "users", "items")}
    schema = data_dir / "schema.yaml"
    if variant == "ids_only":
        schema = home / "ids_only_schema.yaml"
        schema.parent.mkdir(parents=True, exist_ok=True)
        schema.write_text("name: shop_ids_only\ndescription: the shop without its attributes\n")
    config = home / "pipeline.yaml"
    config.write_text(
        f'source: {{kind: events, path: "{files["events"]}", users: "{files["users"]}", '
        f'items: "{files["items"]}", name: shop, schema: "{schema}"}}\n'
        "split: {protocol: temporal}\n"
        f"trainer: {{max_epochs: {epochs}}}\n"
        f"gate: {{build_bento: {'true' if variant == 'attributes' else 'false'}}}\n"
    )
    os.environ.update(
        RECFORGE_HOME=str(home), RECFORGE_CONFIG=str(config), BENTOML_HOME=str(home / "bentoml")
    )
    from orchestration import stages
    from pipeline.run_index import RunIndex
    from serving.recommender import load_recommender
    from training.split import SplitIndex, train_matrix

    t0 = time.perf_counter()
    _, decision = stages.run_all(model, f"bench_{variant}")
    seconds = time.perf_counter() - t0
    _, layout = stages.context()
    run_dir = layout.run(model, f"bench_{variant}")
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    record = RunIndex.for_layout(layout).run(f"{model}/bench_{variant}")
    out: dict[str, Any] = {
        "model": model,
        "variant": variant,
        "seconds": round(seconds, 1),
        "ndcg@10": evaluation["metrics"]["ndcg@10"],
        "recall@10": evaluation["metrics"]["recall@10"],
        "popularity_ndcg@10": evaluation["baselines"]["popularity"]["ndcg@10"],
        "promoted": decision.promoted,
        "gate_reason": decision.reason,
        "bento": decision.bento,
    }
    drift_path = run_dir / "drift.json"
    if drift_path.is_file():
        drift = json.loads(drift_path.read_text())
        out["drift"] = {
            "detected": drift["drift_detected"],
            "data_columns": len(drift["data_columns"]),
            "prediction_columns": len(drift["prediction_columns"]),
            "current_ndcg10": drift["current_ndcg10"],
            "reasons": drift["reasons"],
        }

    # Serving checks on the artifact the Bento carries, through the service's recommender.
    from pipeline.artifacts import Split

    split = Split.load(run_dir / "split.json")
    rec = load_recommender(Path(record.artifact_dir))
    index = SplitIndex.load(split)
    matrix = train_matrix(split).tocsr()
    items = pd.read_csv(files["items"], dtype=str).set_index("item_id")
    known = [i for i in index.item_ids if i in items.index]
    cold = [i for i in known if matrix[:, index.item_index[i]].nnz == 0]
    category, key = items["category"], items["category"] + "/" + items["brand"]
    rng = np.random.default_rng(0)
    lifts, same_category, base_rate, new_item_same_category = [], [], [], []
    for item in cold:
        similar = [index.item_index[i] for i in known if key[i] == key[item] and i != item]
        in_category = [index.item_index[i] for i in known if category[i] == category[item]]
        buyers = np.unique(matrix[:, similar].nonzero()[0])
        others = np.setdiff1d(np.arange(index.n_users), np.unique(matrix[:, in_category].nonzero()[0]))
        if len(buyers) >= 5 and len(others) >= 5:
            users = [
                index.user_ids[u]
                for u in np.concatenate([rng.permutation(buyers)[:50], rng.permutation(others)[:50]])
            ]
            rows = rec.scorer.user_rows(users)
            scores = rec.scorer.scores(rows, [[] for _ in users])[:, 1:]
            column = rec.item_index[item] - 1
            percentile = (scores < scores[:, column : column + 1]).float().mean(dim=1).numpy()
            n_buyers = min(len(buyers), 50)
            lifts.append(float(percentile[:n_buyers].mean() - percentile[n_buyers:].mean()))
        if rec.embeds_new_items:  # the same item as a request's item_features (not by its id)
            row = items.loc[item]
            features = {
                "category": row["category"],
                "brand": row["brand"],
                "price": float(row["price"]),
                "tags": str(row["tags"]).split("|"),
                "title": row["title"],
            }
            placed = rec.similar_to_attributes(features, 10)
            new_item_same_category.append(np.mean([category[n.item_id] == category[item] for n in placed]))
        try:
            neighbours = rec.similar_items(item, 10)
        except KeyError:
            continue
        if neighbours:
            same_category.append(np.mean([category[n.item_id] == category[item] for n in neighbours]))
            base_rate.append(float((category == category[item]).mean()))
    out["cold_items"] = {
        "items": len(cold),
        "placement_lift": float(np.mean(lifts)) if lifts else None,
        "measured": len(lifts),
        "similar_same_category": float(np.mean(same_category)) if same_category else None,
        "category_base_rate": float(np.mean(base_rate)) if base_rate else None,
        "new_item_same_category": float(np.mean(new_item_same_category)) if new_item_same_category else None,
        "similarity_method": rec.similarity_method,
    }
    users = pd.read_csv(files["users"], dtype=str)
    segments = sorted(users["segment"].dropna().unique())[:2]
    profiles = [users[users["segment"] == s].iloc[0].drop("user_id").dropna().to_dict() for s in segments]
    for profile in profiles:  # the CSV is read as text; the request model sends numbers as numbers
        profile.update({k: float(v) for k, v in profile.items() if k == "age"})
    answers = [
        rec.recommend(f"bench_new_user_{s}", None, 10, user_features=p)
        for s, p in zip(segments, profiles, strict=True)
    ]
    tops = [{i.item_id for i in a.items} for a in answers]
    out["cold_users"] = {
        "strategy": answers[0].strategy,
        "segments": segments,
        "top10_jaccard": len(tops[0] & tops[1]) / max(1, len(tops[0] | tops[1])),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(ATTRIBUTE_MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="shop size factor (users, items, events)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--one", nargs=4, metavar=("MODEL", "VARIANT", "DATA", "HOME"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        model, variant, data, home = args.one
        print("RESULT " + json.dumps(run_one(model, variant, Path(data), Path(home), args.epochs)))
        return

    from ingestion.examples import write_shop

    work = args.out or Path(tempfile.mkdtemp(prefix="recforge-shop-"))
    data_dir = work / "data"
    shop = dict(SHOP)
    for key in ("n_users", "n_items", "n_events"):
        shop[key] = int(shop[key] * args.scale)
    write_shop(data_dir, **shop)
    models = [m for m in args.models.split(",") if m]
    plan = [(m, "attributes") for m in models]
    plan += [] if args.no_ablation else [(m, "ids_only") for m in models if m in ABLATED]
    runs = []
    for model, variant in plan:
        home = work / f"{model}-{variant}"
        home.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--epochs",
            str(args.epochs),
            "--one",
            model,
            variant,
            str(data_dir),
            str(home),
        ]
        print(f"== {model} ({variant})", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            runs.append({"model": model, "variant": variant, "error": proc.stderr[-2000:]})
            print(proc.stderr[-2000:], flush=True)
            continue
        runs.append(json.loads(line[len("RESULT ") :]))
        print(json.dumps(runs[-1], indent=1), flush=True)
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": code_commit(),
        "command": "python bench/bench_shop.py " + " ".join(sys.argv[1:]),
        "machine": {
            "description": f"{os.cpu_count()}-core {platform.machine()} VM",
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "shop": shop,
        "epochs": args.epochs,
        "runs": runs,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "shop.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / "shop.md").write_text(markdown(report))
    print((args.results / "shop.md").read_text())


def _f(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    shop = report["shop"]
    lines = [
        "# The synthetic shop through the attribute-aware models",
        "",
        f"`{report['command']}` at commit `{report['git_commit']}`, {report['generated_at']}, on a "
        f"{report['machine']['description']} ({report['machine']['platform']}, Python {report['machine']['python']}).",
        "",
        f"Data: `recforge example shop` with {shop['n_users']} users, {shop['n_items']} items "
        f"({shop['cold_items']} of them new, with attributes and no events), {shop['n_events']} events, "
        f"seed {shop['seed']}; temporal split; model defaults from `configs/models/`, at most "
        f"{report['epochs']} epochs with early stopping on validation NDCG@10. Each run is a full "
        "`run_all` (the stages of the model's DAG) in its own `RECFORGE_HOME`. `ids_only` = the same "
        "files read with a schema that declares no attribute.",
        "",
        "| model | variant | test NDCG@10 | popularity | lift | recall@10 | promoted | Bento | drift columns (data / prediction) | drift detected | cold-item placement | similar: same category (base rate) | new item by item_features: same category | cold users: strategy, top-10 overlap across segments | run s |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|---:|---|---:|---|---:|",
    ]
    for run in report["runs"]:
        if "error" in run:
            lines.append(f"| {run['model']} | {run['variant']} | failed: see shop.json |" + " |" * 12)
            continue
        drift = run.get("drift") or {}
        cold, users = run["cold_items"], run["cold_users"]
        lift = run["ndcg@10"] / run["popularity_ndcg@10"] if run["popularity_ndcg@10"] else float("nan")
        lines.append(
            f"| {run['model']} | {run['variant']} | {run['ndcg@10']:.4f} | {run['popularity_ndcg@10']:.4f} | "
            f"{lift:.2f}x | {run['recall@10']:.4f} | {'yes' if run['promoted'] else 'no'} | "
            f"{'`' + run['bento'] + '`' if run.get('bento') else '–'} | "
            f"{drift.get('data_columns', '–')} / {drift.get('prediction_columns', '–')} | "
            f"{('yes' if drift['detected'] else 'no') if drift else '–'} | {_f(cold['placement_lift'], 3)} | "
            f"{_f(cold['similar_same_category'], 2)} ({_f(cold['category_base_rate'], 2)}, {cold['similarity_method']}) | "
            f"{_f(cold.get('new_item_same_category'), 2)} | "
            f"{users['strategy']}, {users['top10_jaccard']:.2f} | {run['seconds']:.0f} |"
        )
    lines += [
        "",
        "Columns: *lift* = NDCG@10 / popularity's on the same test split. *Cold-item placement* = mean, "
        "over the new items, of (score percentile of the item for users who bought items of its "
        "category and brand) minus (the same for users who never bought its category); 0 = the model "
        "cannot tell them apart. *Similar* = share of a new item's 10 `/similar_items` neighbours in its "
        "category. *New item by item_features* = the same share when the new item is given to "
        "`/similar_items` by its attributes under an id the catalogue does not have (models declaring "
        "`EmbedsNewItems`). *Cold users* = how `/recommend` serves an unknown user given only `user_features`, "
        "and the Jaccard overlap of the top-10 for two users of different segments (1 = identical). "
        "Drift reasons per run are in `shop.json`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
