"""Lifecycle benchmark: a promotion and a rollback under load, against the real ``python -m serving``.

What it measures, with N client threads POSTing /recommend the whole time (loopback HTTP, Feast online
read per request, exactly as in production):

- the hot swap: a second packaged model is made the deployment's champion (a ``DeploymentEvent``
  appended to the run index, as the promote stage does); reported: how long until the first answer
  from the new model ("visible after"), failed requests, and p50/p99 latency before, during (promotion
  until one second after the first new answer) and after the swap;
- the rollback, twice: ``serving.package.rollback`` called in-process (its own time, plus the time until
  the service answers with the old tag), then the promotion repeated and ``recforge rollback`` run as a
  user runs it (CLI wall time, including Python start-up, plus the time until the old tag answers).

The service polls the run index every ``RECFORGE_SWAP_POLL_S`` seconds (default 2, the service's
default), so "visible after" is about half the poll interval plus the load of the new model.

    .venv/bin/python bench/bench_lifecycle.py                      # synthetic ML-100K-sized home
    .venv/bin/python bench/bench_lifecycle.py --clients 4 --phase-s 5 --out /tmp/lifecycle

Writes ``bench/results/lifecycle.json`` and ``bench/results/lifecycle.md``. The clients share the
machine's cores with the server, so latencies are a floor on what a separate client would see.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipeline.layout import Layout  # noqa: E402
from pipeline.provenance import code_commit  # noqa: E402
from pipeline.run_index import RunIndex  # noqa: E402
from serving.package import bento_env, rollback  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]
        if ordered
        else float("nan")
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Load:
    """N client threads POSTing /recommend until stopped; every request recorded with its model tag."""

    def __init__(self, url: str, users: list[str], clients: int, k: int = 10) -> None:
        self.url, self.users, self.k = url, users, k
        self.records: list[tuple[float, float, int, str]] = []  # (start, end, status, model tag or error)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                payload = {"user_id": rng.choice(self.users), "k": self.k}
                t0 = time.monotonic()
                try:
                    resp = http.post("/recommend", json=payload)
                    status = resp.status_code
                    tag = resp.json().get("model_tag", "") if status == 200 else resp.text[:200]
                except httpx.HTTPError as exc:
                    status, tag = -1, repr(exc)
                with self._lock:
                    self.records.append((t0, time.monotonic(), status, tag))

    def first_answer(self, tag: str, after: float) -> float | None:
        with self._lock:
            ends = [end for start, end, status, got in self.records if got == tag and start >= after]
        return min(ends) if ends else None

    def wait_for(self, tag: str, after: float, timeout_s: float = 60) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.first_answer(tag, after)
            if seen is not None:
                return seen
            time.sleep(0.02)
        raise TimeoutError(f"no answer from {tag} within {timeout_s}s of the change")


def cli_rollback(layout: Layout) -> subprocess.CompletedProcess:
    """``recforge rollback`` as a user runs it (a fresh Python process)."""
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("recforge")), "rollback"],
        cwd=REPO_ROOT,
        env=bento_env(layout),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if cli.returncode != 0:
        raise RuntimeError(f"recforge rollback failed ({cli.returncode}): {cli.stderr[-2000:]}")
    return cli


def wait_for_health_tag(url: str, tag: str, timeout_s: float = 60) -> float:
    """``time.monotonic()`` when ``/healthz`` first reports ``tag`` as live."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).json().get("model_tag") == tag:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{tag} not live within {timeout_s}s")


def phase_stats(records: list[tuple[float, float, int, str]], start: float, end: float) -> dict[str, Any]:
    chosen = [r for r in records if start <= r[0] < end]
    ms = [(r[1] - r[0]) * 1000 for r in chosen]
    return {
        "requests": len(chosen),
        "errors": sum(r[2] != 200 for r in chosen),
        "p50_ms": round(_pct(ms, 50), 2),
        "p99_ms": round(_pct(ms, 99), 2),
        "rps": round(len(chosen) / max(end - start, 1e-9), 1),
        "seconds": round(end - start, 2),
        "model_tags": sorted({r[3] for r in chosen if r[2] == 200}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo-users", type=int, default=943)
    parser.add_argument("--demo-items", type=int, default=1682)
    parser.add_argument("--per-user", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--phase-s", type=float, default=10.0, help="seconds of load before and after each change"
    )
    parser.add_argument("--poll-s", type=float, default=2.0, help="RECFORGE_SWAP_POLL_S of the service")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args()
    command = " ".join([".venv/bin/python bench/bench_lifecycle.py", *map(shlex.quote, sys.argv[1:])]).strip()

    from tests.serving_fixtures import build_serving_home, package_candidate, promote, serve

    home_dir = Path(tempfile.mkdtemp(prefix="recforge-bench-lifecycle-")) / "home"
    started = time.perf_counter()
    home = build_serving_home(
        home_dir, n_users=args.demo_users, n_items=args.demo_items, per_user=args.per_user
    )
    champion_tag = home.decision.bento_tag
    candidate, candidate_run = package_candidate(home, "popularity", "bench-candidate", 0.3)
    print(
        f"built home {home_dir} in {time.perf_counter() - started:.1f}s: {champion_tag} -> {candidate.bento_tag}"
    )
    layout, index = home.layout, RunIndex.for_layout(home.layout)

    # As users start it (`python -m serving`), in its own process group, stopped (group only) at the end.
    poll = {"RECFORGE_SWAP_POLL_S": str(args.poll_s)}
    with serve(layout, home_dir.parent / "server.log", env=poll, launcher=True) as server:
        started = time.perf_counter()
        server.wait_ready(timeout_s=180)
        startup_s = time.perf_counter() - started
        print(f"server ready in {startup_s:.1f}s at {server.url}", flush=True)
        with Load(server.url, home.user_ids, args.clients) as load:
            t_begin = time.monotonic()
            time.sleep(args.phase_s)
            # 1. promotion
            t_promote = time.monotonic()
            promote(home, candidate, candidate_run)
            t_new = load.wait_for(candidate.bento_tag, t_promote)
            time.sleep(args.phase_s)
            # 2. rollback, in-process
            t_rollback = time.monotonic()
            rollback(index, layout, "default")
            rollback_call_s = time.monotonic() - t_rollback
            t_old = load.wait_for(champion_tag, t_rollback)
            time.sleep(args.phase_s)
            # 3. promotion again, then `recforge rollback` as a user runs it
            t_promote2 = time.monotonic()
            promote(home, candidate, candidate_run)
            load.wait_for(candidate.bento_tag, t_promote2)
            time.sleep(args.phase_s / 2)
            t_cli = time.monotonic()
            cli = cli_rollback(layout)
            cli_s = time.monotonic() - t_cli
            t_cli_old = load.wait_for(champion_tag, t_cli)
            time.sleep(args.phase_s / 2)
            t_end = time.monotonic()
        records = load.records
        # 4. the same once more without the load: what an operator sees on a quiet machine
        promote(home, candidate, candidate_run)
        wait_for_health_tag(server.url, candidate.bento_tag)
        t_quiet = time.monotonic()
        quiet = cli_rollback(layout)
        quiet_cli_s = time.monotonic() - t_quiet
        quiet_visible_s = wait_for_health_tag(server.url, champion_tag) - t_quiet

    phases = {
        "before": phase_stats(records, t_begin, t_promote),
        "swap": phase_stats(records, t_promote, t_new + 1.0),
        "after_swap": phase_stats(records, t_new + 1.0, t_rollback),
        "rollback": phase_stats(records, t_rollback, t_old + 1.0),
        "after_rollback": phase_stats(records, t_old + 1.0, t_promote2),
        "promote_again_and_cli_rollback": phase_stats(records, t_promote2, t_end),
        "all": phase_stats(records, t_begin, t_end),
    }
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": code_commit(),
        "command": command,
        "machine": {
            "description": f"{os.cpu_count()}-core {platform.machine()} VM",
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "home": {
            "users": args.demo_users,
            "items": args.demo_items,
            "events_per_user": args.per_user,
            "champion": champion_tag,
            "candidate": candidate.bento_tag,
        },
        "server": {
            "launcher": "python -m serving",
            "workers": 1,
            "poll_s": args.poll_s,
            "startup_s": round(startup_s, 1),
        },
        "clients": args.clients,
        "phases": phases,
        "swap_visible_after_s": round(t_new - t_promote, 3),
        "rollback": {
            "function_call_s": round(rollback_call_s, 3),
            "visible_after_s": round(t_old - t_rollback, 3),
            "total_s": round(t_old - t_rollback, 3),
        },
        "cli_rollback": {
            "command": "recforge rollback",
            "cli_wall_s": round(cli_s, 3),
            "visible_after_s": round(t_cli_old - t_cli, 3),
            "output": cli.stdout.strip()[-500:],
        },
        "cli_rollback_quiet": {
            "command": "recforge rollback",
            "note": "no client load; /healthz polled every 50 ms for the old tag",
            "cli_wall_s": round(quiet_cli_s, 3),
            "visible_after_s": round(quiet_visible_s, 3),
            "output": quiet.stdout.strip()[-500:],
        },
        "failed_requests": sum(r[2] != 200 for r in records),
        "model_tags_seen": sorted({r[3] for r in records if r[2] == 200}),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lifecycle.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "lifecycle.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'lifecycle.json'} and {out / 'lifecycle.md'}")


def markdown(report: dict[str, Any]) -> str:
    m, h, s = report["machine"], report["home"], report["server"]
    lines = [
        "# Lifecycle benchmark: hot swap and rollback under load",
        "",
        f"`{report['command']}` at git `{report['git_commit']}`, {report['measured_at']}, on a "
        f"{m['description']} ({m['cpu_model']}; Python {m['python']}; load avg {m['loadavg_1m_at_end']} at the end).",
        "",
        f"Real `{s['launcher']}` ({s['workers']} worker, run-index poll every {s['poll_s']} s, ready in "
        f"{s['startup_s']} s) on a synthetic home built by the real features stage ({h['users']} users x "
        f"{h['items']} items, {h['events_per_user']} events each). {report['clients']} client threads POST "
        "`/recommend` (k=10, Feast online read per request) over loopback HTTP the whole time; they share "
        "the cores with the server.",
        "",
        f"- champion `{h['champion']}` (itemknn) -> promoted `{h['candidate']}` (popularity) -> rolled back",
        f"- **failed requests: {report['failed_requests']}**; model tags seen: "
        + ", ".join(f"`{t}`" for t in report["model_tags_seen"]),
        f"- **promotion visible after {report['swap_visible_after_s']} s** (run-index event -> first answer "
        "from the new model; the poll interval bounds it)",
        f"- **rollback: `serving.package.rollback` {report['rollback']['function_call_s']} s, service answers with "
        f"the old tag {report['rollback']['visible_after_s']} s after the call started**",
        f"- `recforge rollback` (CLI, as a user runs it): {report['cli_rollback']['cli_wall_s']} s wall "
        f"(Python start-up and imports included); old tag answering "
        f"{report['cli_rollback']['visible_after_s']} s after the command started; on the quiet machine (no "
        f"load) {report['cli_rollback_quiet']['cli_wall_s']} s wall, old tag live after "
        f"{report['cli_rollback_quiet']['visible_after_s']} s (the rollback itself is one run-index INSERT "
        "after checking the model's files; the rest is Python start-up and the poll interval)",
        "",
        "| phase | requests | errors | p50 ms | p99 ms | req/s | seconds | model tags |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    names = {
        "before": "before the promotion",
        "swap": "promotion -> 1 s after first new answer",
        "after_swap": "after the swap",
        "rollback": "rollback -> 1 s after first old answer",
        "after_rollback": "after the rollback",
        "promote_again_and_cli_rollback": "promote again + `recforge rollback`",
        "all": "all",
    }
    for key, p in report["phases"].items():
        tags = ", ".join(t.split(":")[0] for t in p["model_tags"])
        lines.append(
            f"| {names[key]} | {p['requests']} | {p['errors']} | {p['p50_ms']} | {p['p99_ms']} | {p['rps']} | "
            f"{p['seconds']} | {tags} |"
        )
    lines += [
        "",
        "How the swap works (serving/service.py): a watcher thread in each worker polls the run index; on "
        "a new champion it loads the model from the BentoML store, verifies its checksums, opens a Feast "
        "reader on the champion's namespace and checks it answers, then swaps one immutable bundle; "
        "requests in flight finish on the bundle they started with.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
