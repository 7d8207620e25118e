"""Where one machine runs out: each stage of the scale run carried from its largest measured size to
100M and 1B events along its own measured slope.

Reads ``bench/results/scale.json`` (``bench/bench_scale.py``). For every stage (and the parts of the
features stage and of the evaluation) it takes the wall seconds and peak RSS at the largest size
measured and the log-log slope between the two largest sizes, and projects

    cost(N) = cost(largest) x (N / largest events) ** max(slope, 0)

to each ``--events`` size. The bench's logs grow their users and items with the events, so a
projection assumes the catalogue keeps growing as it did across the measured sizes; a slope from
two sizes is an estimate, and the farther the projection the rougher it is. The point is the order
of magnitude at which a stage passes the machine's memory or a day of wall time, which is where
docs/scaling.md's switches (a distributed offline store, sharded training, more executors) begin.

Writes ``bench/results/scale_projection.json`` and ``.md``, with the commit this script ran at and the
scale run's own (no new measurement: rerun this script after every rerun of the scale bench; the
results check counts a newer ``scale.json`` as making the projection stale).

Usage:
    .venv/bin/python bench/project_scale.py [--scale bench/results/scale.json] [--events 100000000,1000000000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
sys.path[:0] = [str(Path(__file__).resolve().parent)]

from bench_scale import rows_of, slope, value  # noqa: E402

from pipeline.provenance import code_commit  # noqa: E402  (bench_scale put the repository on the path)

DAY_S = 24 * 3600.0


def projected(cost: float | None, slope: float | None, n_from: int, n_to: int) -> float | None:
    if cost is None or slope is None:
        return None
    return cost * (n_to / n_from) ** max(slope, 0.0)


def projected_run(before: dict[str, Any], last: dict[str, Any], events: int) -> dict[str, Any]:
    """A run record as ``bench_scale`` writes one, with every stage's (and part's) cost projected to
    ``events`` along its slope from ``before`` to ``last``: the whole pipeline is then summed (wall) and
    maxed (RSS) over projected stages by ``bench_scale``'s own rule."""
    stages: dict[str, Any] = {}
    for key, result in last["stages"].items():
        if not isinstance(result, dict) or result.get("status") != "ok":
            continue
        stage: dict[str, Any] = {"status": "ok"}
        for what in ("wall_s", "peak_rss_mb"):
            rate = slope(
                value(before, key, "", what), value(last, key, "", what), before["events"], last["events"]
            )
            stage[what] = projected(value(last, key, "", what), rate, last["events"], events)
        parts = {}
        for part in result.get("parts_s") or {}:
            rate = slope(
                value(before, key, part, "wall_s"),
                value(last, key, part, "wall_s"),
                before["events"],
                last["events"],
            )
            parts[part] = projected(value(last, key, part, "wall_s"), rate, last["events"], events)
        stages[key] = {**stage, "parts_s": parts}
    return {**last, "events": events, "stages": stages}


def project(scale: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """One row per line of the scale table: the largest measured cost, its slope, the projected costs."""
    runs = scale["runs"]
    if len(runs) < 2:
        raise SystemExit("a projection needs the scale run at two sizes at least")
    before, last = runs[-2], runs[-1]
    targets = {n: projected_run(before, last, n) for n in sizes}
    rows = []
    for label, stage, part in rows_of(runs):
        row: dict[str, Any] = {"stage": label.strip(), "part": bool(part)}
        for what in ("wall_s", "peak_rss_mb"):
            if part and what == "peak_rss_mb":
                continue  # the parts of a stage share its process
            measured = value(last, stage, part, what)
            row[what] = {
                "measured": measured,
                "slope": slope(value(before, stage, part, what), measured, before["events"], last["events"]),
                "projected": {str(n): value(run, stage, part, what) for n, run in targets.items()},
            }
        rows.append(row)
    return {
        "code_commit": code_commit(),  # of this script's run; the scale run's own is under "source"
        "source": {
            "scale_run_commit": scale["meta"]["code_commit"],
            "command": scale["meta"]["command"],
            "machine": scale["meta"]["machine"],
            "cpus": scale["meta"]["cpus"],
            "memory_gb": scale["meta"]["memory_gb"],
            "generated": scale["meta"]["generated"],
        },
        "slope_from": [before["events"], last["events"]],
        "catalogue_at_largest": {"items": last["items"], "users": last["users"]},
        "events": sizes,
        # What "the catalogue keeps growing as it did" means at each size.
        "catalogue": {
            str(n): {
                what: round(
                    projected(
                        last[what],
                        slope(before[what], last[what], before["events"], last["events"]),
                        last["events"],
                        n,
                    )
                    or 0
                )
                for what in ("items", "users")
            }
            for n in sizes
        },
        "rows": rows,
    }


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:,.0f} min"
    if seconds < DAY_S:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / DAY_S:,.1f} days"


def _events(n: int) -> str:
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def _gb(mb: float | None) -> str:
    return "–" if mb is None else f"{mb / 1024:,.1f} GB"


def _slope(s: float | None) -> str:
    return "–" if s is None else f"{s:.2f}"


def markdown(projection: dict[str, Any]) -> str:
    src = projection["source"]
    sizes = projection["events"]
    memory_mb = src["memory_gb"] * 1024
    a, b = projection["slope_from"]
    lines = [
        "# The scale run carried to 100M and 1B events",
        "",
        f"Projected, not measured: each stage's wall seconds and peak RSS at {b / 1e6:g}M events in "
        f"`bench/results/scale.md` (the scale run's commit: `{src['scale_run_commit']}`; {src['machine']}, {src['cpus']} CPUs, "
        f"{src['memory_gb']:.0f} GiB, {src['generated']}), times (N / {b / 1e6:g}M) to the power of the "
        f"stage's slope from {a / 1e6:g}M to {b / 1e6:g}M events (a negative slope counted as 0). The "
        f"bench's logs grow users and items with the events ({projection['catalogue_at_largest']['items']:,} "
        f"items and {projection['catalogue_at_largest']['users']:,} users at {b / 1e6:g}M), so the "
        "projection assumes the catalogue keeps growing as it did ("
        + "; ".join(
            f"{c['items'] / 1e6:,.1f}M items and {c['users'] / 1e6:,.1f}M users at {_events(int(n))}"
            for n, c in projection["catalogue"].items()
        )
        + "). Two sizes give a rough slope: read the orders of magnitude. **Bold**: past the machine's "
        "memory or past a day.",
        "",
        "| stage | wall at "
        + f"{b / 1e6:g}M | wall slope | "
        + " | ".join(f"wall at {_events(n)}" for n in sizes)
        + f" | RSS at {b / 1e6:g}M | RSS slope | "
        + " | ".join(f"RSS at {_events(n)}" for n in sizes)
        + " |",
        "|---|" + "---:|" * (4 + 2 * len(sizes)),
    ]
    for row in projection["rows"]:
        wall = row["wall_s"]
        rss = row.get("peak_rss_mb")
        walls = [wall["projected"][str(n)] for n in sizes]
        cells = [_wall(wall["measured"]), _slope(wall["slope"])]
        cells += [_mark(_wall(w), w is not None and w > DAY_S) for w in walls]
        if rss is None:
            cells += ["", ""] + [""] * len(sizes)
        else:
            cells += [_gb(rss["measured"]), _slope(rss["slope"])]
            cells += [
                _mark(_gb(m), m is not None and m > memory_mb)
                for m in (rss["projected"][str(n)] for n in sizes)
            ]
        label = f"  {row['stage']}" if row["part"] else row["stage"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Command: `python bench/project_scale.py` at commit `{projection['code_commit']}`, on the scale run "
        f"`{src['command']}`.",
        "",
    ]
    return "\n".join(lines)


def _mark(text: str, over: bool) -> str:
    return f"**{text}**" if over else text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--events", default="100000000,1000000000")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_projection")
    args = parser.parse_args(argv)
    projection = project(json.loads(args.scale.read_text()), [int(n) for n in args.events.split(",")])
    args.out.with_suffix(".json").write_text(json.dumps(projection, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(projection))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
