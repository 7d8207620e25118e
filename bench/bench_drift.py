"""Calibration of the drift monitor's data-drift decision on MovieLens-100K.

The question: how often does the data-drift decision fire when nothing changed (false alarms), and
how often does it catch a real change? Both on windows the size the monitor compares
(``MonitoringConfig.current_window_share`` of the events), through the monitor's own code
(``monitoring.windows.data_drift_frame``, ``monitoring.reports.column_drift_report``,
``monitoring.drift.decide``).

- **Stationary pairs**: a random period of two windows' worth of consecutive events is split into two
  disjoint halves. The unit of the split is a *calendar day* (every event of one UTC day goes to the
  same half), not a single event: MovieLens users rate in bursts within a day, and two real windows
  differ in which days (and weekdays) they hold; splitting single events would make the halves far
  more alike than two real windows ever are, so thresholds tuned on them would fire on every real run.
  The larger half is trimmed at random to the smaller one's size (windows of equal size). Users and
  items are "new" when they have no event before the period. The first ``--tune`` pairs choose the
  thresholds, the next ``--evaluate`` pairs (other seeds) measure the false-alarm rate out of sample.
- **Injected shifts**, each applied to the second half of fresh stationary pairs: (a) popularity moves
  towards other genres (half, or in the ``_strong`` variant three quarters, of the events on items
  outside a random third of the genres dropped), (b) a surge of new users: new visitors with short
  visits (1-5 events each) take over a third of the events, (c) the rating scale changes (ratings x2,
  2-10), (d) a broken upstream column (one attribute, in turn, missing in most events). Detected = the
  decision fired *and* named a column of the shift (for a surge: the share of new users or user
  activity). Also reported: ``new_user_relabel``, existing users (a third of the events) relabelled to
  new ids with their behaviour unchanged. Most of a MovieLens window's events already come from users
  new to it (users rate in a burst after signing up; the table reports the share), so relabelling
  barely moves any distribution: it measures what the monitor cannot see, not a miss to tune away.
- **The real timeline**: the monitor's windows (the newest share against the window before it) and
  every consecutive pair of windows along the timeline, for reading; nothing is tuned on them.

Threshold rule (per column): the larger of the smallest effect worth acting on (``EFFECT_FLOOR``, a
policy, not a measurement: in reference standard deviations for numbers, Jensen-Shannon distance for
categories, missing-share points for the broken-feed check) and ``MARGIN`` x the
largest distance any tuning pair showed; the per-type thresholds are the floors, columns above them get
an override. The missing-share threshold is the larger of its floor and the same margin over the
tuning pairs. ``--use-config`` instead evaluates the thresholds in ``configs/pipeline.yaml``.

    .venv/bin/python bench/bench_drift.py                    # tune + evaluate + shifts, ~minutes
    .venv/bin/python bench/bench_drift.py --tune 20 --evaluate 20 --shift-pairs 4   # a quick look

Reads MovieLens-100K as the pipeline does (``ingestion.fetch.fetch_ml100k`` under ``.recforge/cache``).
Writes ``bench/results/drift_calibration.json`` and ``bench/results/drift_calibration.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ingestion.fetch import fetch_ml100k  # noqa: E402
from ingestion.readers import read_recbole_atomic  # noqa: E402
from ingestion.schema import GENRE_SEPARATOR  # noqa: E402
from monitoring.drift import Checks, data_drift_check, data_thresholds, decide  # noqa: E402
from monitoring.reports import DriftReport  # noqa: E402
from monitoring.windows import data_drift_frame, drift_columns  # noqa: E402
from pipeline.config import MonitoringConfig, load_config  # noqa: E402
from pipeline.provenance import bench_provenance  # noqa: E402
from pipeline.schema import DataSchema  # noqa: E402

SCHEMA = REPO_ROOT / "configs" / "schemas" / "movielens.yaml"
EFFECT_FLOOR = {"numerical": 0.05, "categorical": 0.05, "missing": 0.1}
MARGIN = 1.5
SHIFTS = (
    "genre_popularity",
    "genre_popularity_strong",
    "new_user_surge",
    "new_user_relabel",
    "rating_scale_x2",
    "broken_column",
)
# The columns that may name each shift: a surge of new visitors shows as new users or as light activity.
AUDIENCE_COLUMNS = ("new_user", "log_user_window_events")


# ------------------------------------------------------------------------------------------------ data


def load_events() -> pd.DataFrame:
    """MovieLens-100K events with the schema's attributes, as the examples carry them."""
    raw = read_recbole_atomic(fetch_ml100k(REPO_ROOT / ".recforge" / "cache"), "ml-100k")
    events = raw.interactions[["user_id", "item_id", "rating", "timestamp"]].copy()
    events["rating"] = pd.to_numeric(events["rating"]).astype(float)
    events["event_timestamp"] = pd.to_datetime(pd.to_numeric(events["timestamp"]), unit="s", utc=True)
    users = raw.users[["user_id", "age", "gender", "occupation"]].copy()
    users["age"] = pd.to_numeric(users["age"], errors="coerce")
    items = raw.items[["item_id", "release_year", "genres"]].copy()
    items["release_year"] = pd.to_numeric(items["release_year"], errors="coerce")
    items["genres"] = items["genres"].map(
        lambda g: g.split(GENRE_SEPARATOR) if isinstance(g, str) and g else []
    )
    events = events.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    events = events.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable").reset_index(
        drop=True
    )
    events["event_id"] = np.arange(len(events))
    events["day"] = events["event_timestamp"].dt.strftime("%Y-%m-%d")
    return events.drop(columns=["timestamp"])


def stationary_pair(events: pd.DataFrame, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, ...]:
    """(a, b, earlier): two equal, disjoint resamples of whole days of one period of 2n events, and the
    events before the period."""
    start = int(rng.integers(0, len(events) - 2 * n + 1))
    period = events.iloc[start : start + 2 * n]
    days = period["day"].unique()
    side = pd.Series(rng.random(len(days)) < 0.5, index=days)
    in_a = period["day"].map(side).to_numpy()
    a, b = period[in_a], period[~in_a]
    size = min(len(a), len(b))
    a = a.iloc[np.sort(rng.choice(len(a), size, replace=False))]
    b = b.iloc[np.sort(rng.choice(len(b), size, replace=False))]
    return a.reset_index(drop=True), b.reset_index(drop=True), events.iloc[:start][["user_id", "item_id"]]


def inject(shift: str, a: pd.DataFrame, b: pd.DataFrame, rng: np.random.Generator, attribute: str) -> tuple:
    """(a, b shifted, the columns that may name the shift, what was done in words)."""
    b = b.copy()
    if shift.startswith("genre_popularity"):
        genres = sorted({g for gs in b["genres"] for g in gs})
        target = {str(g) for g in rng.choice(genres, max(1, len(genres) // 3), replace=False)}
        hit = b["genres"].map(lambda gs: bool(target & set(gs))).to_numpy()
        kept_elsewhere = 0.25 if shift.endswith("_strong") else 0.5
        keep = hit | (rng.random(len(b)) < kept_elsewhere)
        before = hit.mean()
        b = b[keep].reset_index(drop=True)
        a = a.iloc[np.sort(rng.choice(len(a), len(b), replace=False))].reset_index(drop=True)
        what = f"events on {sorted(target)}: {before:.0%} -> {hit[keep].mean():.0%}"
        return a, b, ("primary_genres",), what
    if shift == "new_user_surge":
        # New visitors, each with a short visit (1-5 events), take over a third of the window's events.
        taken = np.flatnonzero(rng.random(len(b)) < 1 / 3)
        visit_lengths = rng.integers(1, 6, size=len(taken))
        visitor = np.repeat(np.arange(len(taken)), visit_lengths)[: len(taken)]
        b.loc[taken, "user_id"] = [f"visitor-{v}" for v in visitor]
        what = (
            f"{len(taken) / len(b):.0%} of the events by {visitor.max() + 1} new visitors (1-5 events each)"
        )
        return a, b, AUDIENCE_COLUMNS, what
    if shift == "new_user_relabel":
        # Existing users (about a third of the events) get ids never seen before, behaviour unchanged.
        counts = b["user_id"].value_counts().sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
        chosen = counts.index[counts.cumsum() <= len(b) / 3]
        renamed = b["user_id"].isin(chosen)
        b.loc[renamed, "user_id"] = "surge-" + b.loc[renamed, "user_id"]
        return a, b, AUDIENCE_COLUMNS, f"{renamed.mean():.0%} of the events relabelled to new user ids"
    if shift == "rating_scale_x2":
        b["rating"] = b["rating"] * 2
        return a, b, ("rating",), "ratings x2 (scale 2-10)"
    if shift == "broken_column":
        broken = rng.random(len(b)) < 0.8
        if attribute == "genres":
            b["genres"] = [[] if x else g for x, g in zip(broken, b["genres"], strict=True)]
            column = "primary_genres"
        else:
            b[attribute] = b[attribute].astype(object).where(~broken, None)
            column = attribute
        return a, b, (column,), f"{attribute} missing in {broken.mean():.0%} of the events"
    raise ValueError(shift)


# ------------------------------------------------------------------------------------------- measuring


def measure(
    a: pd.DataFrame,
    b: pd.DataFrame,
    earlier: pd.DataFrame,
    schema: DataSchema,
    cfg: MonitoringConfig,
    earlier_b: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The monitor's data-drift decision of ``b`` against ``a``; a user or item is new in a window when
    it is not in ``earlier`` (``earlier_b`` for ``b`` when the windows start at different times)."""
    earlier_b = earlier if earlier_b is None else earlier_b
    ref = data_drift_frame(a, schema, earlier["user_id"], earlier["item_id"])
    cur = data_drift_frame(b, schema, earlier_b["user_id"], earlier_b["item_id"])
    data, thresholds, missing = data_drift_check(ref, cur, schema, cfg, {}, [])
    quiet = DriftReport(snapshot=None, columns=[], share=0.0, drifted=[], distances={})
    checks = Checks(data, quiet, True, math.inf, thresholds, missing, frozenset(schema.user_features))
    decision = decide(checks, cfg)
    return {
        "rows": [len(a), len(b)],
        "distances": data.distances,
        "drifted": data.drifted,
        "missing_increase": {c: cur_ - ref_ for c, (ref_, cur_) in missing.items()},
        "broken": decision.broken_columns,
        "fired": bool(decision.reasons),
        "verdict": decision.verdict,
    }


def choose_thresholds(tuning: list[dict[str, Any]], schema: DataSchema) -> dict[str, Any]:
    """Per-type floors, per-column overrides where the stationary distances need more (module doc)."""
    numerical, _ = drift_columns(schema)
    columns = sorted({c for r in tuning for c in r["distances"]})
    overrides = {}
    largest = {c: max(r["distances"].get(c, 0.0) for r in tuning) for c in columns}
    for column in columns:
        floor = EFFECT_FLOOR["numerical" if column in numerical else "categorical"]
        needed = math.ceil(MARGIN * largest[column] * 100) / 100
        if needed > floor:
            overrides[column] = needed
    worst_missing = max((v for r in tuning for v in r["missing_increase"].values()), default=0.0)
    return {
        "num_drift_threshold": EFFECT_FLOOR["numerical"],
        "cat_drift_threshold": EFFECT_FLOOR["categorical"],
        "column_drift_thresholds": overrides,
        "missing_share_increase": max(EFFECT_FLOOR["missing"], math.ceil(MARGIN * worst_missing * 100) / 100),
        "largest_stationary_distance": largest,
        "largest_stationary_missing_increase": worst_missing,
    }


def timeline_pairs(events: pd.DataFrame, n: int, schema: DataSchema, cfg: MonitoringConfig) -> list[dict]:
    """Consecutive windows of n events along the timeline, ending with the monitor's pair (newest two)."""
    out = []
    for end in list(range(len(events), 2 * n - 1, -n))[::-1]:
        ref, cur = events.iloc[end - 2 * n : end - n], events.iloc[end - n : end]
        before_ref = events.iloc[: end - 2 * n][["user_id", "item_id"]]
        before_cur = events.iloc[: end - n][["user_id", "item_id"]]
        result = measure(ref, cur, before_ref, schema, cfg, earlier_b=before_cur)
        out.append(
            {
                "reference": [str(ref["event_timestamp"].min()), str(ref["event_timestamp"].max())],
                "current": [str(cur["event_timestamp"].min()), str(cur["event_timestamp"].max())],
                "rows": result["rows"],
                "monitor_pair": end == len(events),
                "distances": result["distances"],
                "verdict": result["verdict"],
                "fired": result["fired"],
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune", type=int, default=100, help="stationary pairs that choose the thresholds")
    parser.add_argument(
        "--evaluate", type=int, default=100, help="stationary pairs that measure false alarms"
    )
    parser.add_argument("--shift-pairs", type=int, default=10, help="pairs per injected shift")
    parser.add_argument(
        "--use-config", action="store_true", help="evaluate configs/pipeline.yaml's thresholds"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    t0 = time.perf_counter()
    schema = DataSchema.load(SCHEMA)
    base = load_config(REPO_ROOT / "configs" / "pipeline.yaml").monitoring
    events = load_events()
    n = math.ceil(base.current_window_share * len(events))

    # Thresholds are irrelevant for the tuning pass: it records distances and missing shares only.
    tuning = [
        measure(*stationary_pair(events, n, np.random.default_rng(s)), schema, base) for s in range(args.tune)
    ]
    chosen = choose_thresholds(tuning, schema)
    t_tune = time.perf_counter() - t0
    if args.use_config:
        cfg = base
    else:
        cfg = base.model_copy(
            update={
                k: chosen[k]
                for k in (
                    "num_drift_threshold",
                    "cat_drift_threshold",
                    "column_drift_thresholds",
                    "missing_share_increase",
                )
            }
        )
    seeds = range(10_000, 10_000 + args.evaluate)
    evaluation = [measure(*stationary_pair(events, n, np.random.default_rng(s)), schema, cfg) for s in seeds]
    false_alarms = sum(r["fired"] for r in evaluation)
    tuning_alarms = sum(measure_fired_from_distances(r, cfg, schema) for r in tuning)

    attributes = [*schema.user_features, *[k for k, v in schema.item_features.items() if v.type != "text"]]
    shifts: dict[str, Any] = {}
    for s_i, shift in enumerate(SHIFTS):
        runs = []
        for k in range(args.shift_pairs):
            rng = np.random.default_rng(20_000 + 1000 * s_i + k)
            a, b, earlier = stationary_pair(events, n, rng)
            a, b, columns, what = inject(shift, a, b, rng, attributes[k % len(attributes)])
            result = measure(a, b, earlier, schema, cfg)
            named = bool(set(columns) & {*result["drifted"], *result["broken"]})
            new_share = [new_user_share(w, earlier) for w in (a, b)]
            runs.append(
                {
                    **result,
                    "expected_columns": list(columns),
                    "what": what,
                    "detected": result["fired"] and named,
                    "new_user_event_share": new_share,
                }
            )
        shifts[shift] = {
            "pairs": len(runs),
            "fired": sum(r["fired"] for r in runs),
            "detected": sum(r["detected"] for r in runs),
            "runs": runs,
        }
    timeline = timeline_pairs(events, n, schema, cfg)
    seconds = time.perf_counter() - t0

    result = {
        **bench_provenance("bench/bench_drift.py", sys.argv[1:]),
        "data": {
            "events": len(events),
            "window_events": n,
            "current_window_share": base.current_window_share,
        },
        "rule": {"effect_floor": EFFECT_FLOOR, "margin": MARGIN, "used_config": args.use_config},
        "chosen": chosen,
        "applied": {
            k: getattr(cfg, k)
            for k in (
                "num_drift_threshold",
                "cat_drift_threshold",
                "column_drift_thresholds",
                "data_drift_share_threshold",
                "missing_share_increase",
            )
        },
        "stationary": {
            "tuning_pairs": len(tuning),
            "tuning_false_alarms": tuning_alarms,
            "evaluation_pairs": len(evaluation),
            "evaluation_false_alarms": false_alarms,
            "false_alarm_rate": false_alarms / max(1, len(evaluation)),
            "evaluation_verdicts_fired": [r["verdict"] for r in evaluation if r["fired"]],
            "distance_quantiles": quantiles(evaluation),
        },
        "shifts": {
            k: {kk: vv for kk, vv in v.items() if kk != "runs"} | {"runs": slim(v["runs"])}
            for k, v in shifts.items()
        },
        "timeline": timeline,
        "seconds": {"tuning": round(t_tune, 1), "total": round(seconds, 1)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift_calibration.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "drift_calibration.md").write_text(markdown(result))
    print((args.out / "drift_calibration.md").read_text())


def measure_fired_from_distances(run: dict[str, Any], cfg: MonitoringConfig, schema: DataSchema) -> bool:
    """Would the chosen thresholds have fired on a tuning pair (in-sample check, from its distances)?"""
    numerical, _ = drift_columns(schema)
    limits = data_thresholds(list(run["distances"]), numerical, cfg)
    drifted = [c for c, d in run["distances"].items() if d >= limits[c]]
    share = len(drifted) / max(1, len(run["distances"]))
    broken = any(v > cfg.missing_share_increase for v in run["missing_increase"].values())
    return bool(drifted and share > cfg.data_drift_share_threshold) or broken


def new_user_share(window: pd.DataFrame, earlier: pd.DataFrame) -> float:
    """Share of a window's events by users with no event before the period."""
    return float((~window["user_id"].isin(set(earlier["user_id"]))).mean())


def quantiles(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    columns = sorted({c for r in runs for c in r["distances"]})
    out = {}
    for c in columns:
        values = np.array([r["distances"][c] for r in runs if c in r["distances"]])
        out[c] = {
            q: round(float(np.quantile(values, p)), 4) for q, p in (("p50", 0.5), ("p95", 0.95), ("max", 1.0))
        }
    return out


def slim(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("rows", "expected_columns", "what", "fired", "detected", "verdict", "drifted", "broken")
    return [
        {k: r[k] for k in keep}
        | {
            "distance": round(
                max(
                    (r["distances"][c] for c in r["expected_columns"] if c in r["distances"]),
                    default=math.nan,
                ),
                4,
            ),
            "new_user_event_share": [round(x, 3) for x in r["new_user_event_share"]],
        }
        for r in runs
    ]


def markdown(r: dict[str, Any]) -> str:
    st, applied, chosen = r["stationary"], r["applied"], r["chosen"]
    lines = [
        "# Drift monitor calibration: false alarms and detection on MovieLens-100K",
        "",
        f"`{r['command']}` at git `{r['code_commit']}`, {r['created_at']}, on {r['machine']['platform']} "
        f"({r['machine']['cpus']} CPUs, Python {r['machine']['python']}; load avg {r['machine']['load_avg_end']} "
        f"at the end); {r['seconds']['total']} s in all.",
        "",
        f"MovieLens-100K ({r['data']['events']} events); windows of {r['data']['window_events']} events "
        f"(`current_window_share` {r['data']['current_window_share']}). Method: `bench/bench_drift.py`'s docstring. "
        "Detection and false alarms are the data-drift decision of `monitoring.drift.decide` "
        "(data drift or a broken feed); prediction drift and ranking quality need a model and are not part of it.",
        "",
        "## Thresholds, chosen on the stationary tuning pairs",
        "",
        f"Rule: per column, the larger of the effect floor ({r['rule']['effect_floor']}) and {r['rule']['margin']} x the "
        f"largest distance of the {st['tuning_pairs']} tuning pairs; "
        + (
            "**these thresholds are what `configs/pipeline.yaml` sets**, evaluated below."
            if r["rule"]["used_config"]
            else "evaluated below as chosen."
        ),
        "",
        f"- applied: `{json.dumps(applied)}`",
        f"- chosen by the rule: num {chosen['num_drift_threshold']}, cat {chosen['cat_drift_threshold']}, "
        f"overrides `{json.dumps(chosen['column_drift_thresholds'])}`, missing-share increase "
        f"{chosen['missing_share_increase']}",
        "",
        "| column | largest tuning distance | evaluation p50 | p95 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for c, q in st["distance_quantiles"].items():
        lines.append(
            f"| {c} | {chosen['largest_stationary_distance'].get(c, math.nan):.4f} | {q['p50']} | {q['p95']} | {q['max']} |"
        )
    lines += [
        "",
        "## False alarms (stationary pairs)",
        "",
        f"- tuning pairs (in sample): {st['tuning_false_alarms']} of {st['tuning_pairs']}",
        f"- **evaluation pairs (other seeds, out of sample): {st['evaluation_false_alarms']} of "
        f"{st['evaluation_pairs']} = {st['false_alarm_rate']:.1%}** (target <= 5%)",
    ]
    if st["evaluation_verdicts_fired"]:
        lines.append(f"- what fired: {sorted(set(st['evaluation_verdicts_fired']))}")
    lines += [
        "",
        "## Detection of injected shifts",
        "",
        "| shift | pairs | fired | detected (named the column) | example | distance of the shifted column (median) "
        "| events by new users, median (reference -> shifted) |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for name, s in r["shifts"].items():
        if not s["runs"]:
            continue
        med = float(np.nanmedian([x["distance"] for x in s["runs"]]))
        new_ref, new_cur = (
            float(np.median([x["new_user_event_share"][i] for x in s["runs"]])) for i in (0, 1)
        )
        lines.append(
            f"| {name} | {s['pairs']} | {s['fired']} | **{s['detected']} ({s['detected'] / max(1, s['pairs']):.0%})** | "
            f'{s["runs"][0]["what"]}: "{s["runs"][0]["verdict"]}" | {med:.3f} | {new_ref:.0%} -> {new_cur:.0%} |'
        )
    lines += [
        "",
        "Broken column: the attribute rotates over the pairs; a fully or mostly missing column is caught by the "
        "missing-share check (the distance test ignores missing values, so its distance stays small).",
        "",
        "New users: most of a MovieLens window's events already come from users new to it (last column), because "
        "users rate in a burst after signing up. Existing users relabelled as new (`new_user_relabel`) therefore "
        "change no distribution the monitor could test; a surge of new visitors with short visits "
        "(`new_user_surge`) changes the activity per user, which it tests.",
        "",
        "## The real timeline (consecutive windows; read only, nothing tuned on it)",
        "",
        "| reference | current | events | fired | verdict |",
        "|---|---|---|---|---|",
    ]
    for t in r["timeline"]:
        mark = " (the monitor's pair)" if t["monitor_pair"] else ""
        lines.append(
            f"| {t['reference'][0][:16]} .. {t['reference'][1][:16]} | {t['current'][0][:16]} .. {t['current'][1][:16]}{mark} "
            f"| {t['rows'][0]} / {t['rows'][1]} | {t['fired']} | {t['verdict']} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
