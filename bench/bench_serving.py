"""Serving benchmark: the real ``bentoml serve`` on a deployment's champion, ``POST /recommend`` over loopback HTTP.

Every request does what production does: a Feast online read of the user's history, the model's
full-catalogue scores, exclusion of seen items and a top-k. We report client-observed p50/p99 latency
and requests/s at 1, 8 and 16 concurrent clients (a bounded number of requests each), plus an in-process
breakdown (Feast read, scoring, served-answer log, response encoding, the whole service method) so a
regression can be placed (docs/serving-performance.md).

    RECFORGE_HOME=.recforge .venv/bin/python bench/bench_serving.py            # deployment "default"'s champion
    .venv/bin/python bench/bench_serving.py --demo sasrec                      # synthetic ML-100K-sized home
    .venv/bin/python bench/bench_serving.py --demo din --out /tmp/b            # DIN ranker + TwoTower retriever
    .venv/bin/python bench/bench_serving.py --demo sasrec --workers 1 2 --trace-requests on off --served-log on

Writes ``bench/results/serving.json`` and ``bench/results/serving.md``. Loopback only; the client shares
the machine's cores with the server, so numbers are a floor on what a separate client would see.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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

from pipeline.config import load_config  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.provenance import code_commit  # noqa: E402
from pipeline.run_index import RunIndex  # noqa: E402
from serving.package import ANN_SUBDIR, ARTIFACT_SUBDIR, RETRIEVER_SUBDIR, stored_model_dir  # noqa: E402
from tests.serving_fixtures import serve  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


SESSION_LENGTH = 10
DIVERSITY = 0.5
REQUEST_KINDS = ("user", "session", "diversity")


def request_body(kind: str, i: int, users: list[str], items: list[str], k: int) -> dict[str, Any]:
    """The i-th /recommend body of a kind: a known user (round-robin); an anonymous visitor's session of
    ``SESSION_LENGTH`` catalogue items (a different one each time); a known user with MMR re-ranking
    at ``DIVERSITY``."""
    if kind == "session":
        return {"session": [items[(i * 31 + j * 7) % len(items)] for j in range(SESSION_LENGTH)], "k": k}
    body: dict[str, Any] = {"user_id": users[i % len(users)], "k": k}
    if kind == "diversity":
        body["diversity"] = DIVERSITY
    return body


def run_load(
    url: str,
    users: list[str],
    concurrency: int,
    n_requests: int,
    k: int,
    kind: str = "user",
    items: list[str] | None = None,
) -> dict[str, Any]:
    """``n_requests`` POST /recommend of one ``request_body`` kind spread over ``concurrency`` threads,
    each with a keep-alive client."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker() -> None:
        nonlocal errors
        local: list[float] = []
        bad = 0
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                started = time.perf_counter()
                resp = client.post("/recommend", json=request_body(kind, i, users, items or [], k))
                local.append(time.perf_counter() - started)
                bad += resp.status_code != 200
        with lock:
            latencies.extend(local)
            errors += bad

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {
        "request": kind,
        "concurrency": concurrency,
        "requests": len(ms),
        "errors": errors,
        "p50_ms": round(_pct(ms, 50), 2),
        "p90_ms": round(_pct(ms, 90), 2),
        "p99_ms": round(_pct(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "rps": round(len(ms) / wall, 1),
        "wall_s": round(wall, 2),
    }


def run_events(url: str, users: list[str], items: list[str], batches: int, size: int) -> dict[str, Any]:
    """``batches`` sequential POST /events of ``size`` new events each (known users, catalogue items,
    distinct timestamps in the last day): latency per batch and events/s, one client."""
    import random

    rng = random.Random(2026)
    base = int(time.time()) - 86400
    latencies, errors = [], 0
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for b in range(batches):
            batch = [
                {"user_id": rng.choice(users), "item_id": rng.choice(items), "timestamp": base + b * size + i}
                for i in range(size)
            ]
            t0 = time.perf_counter()
            resp = client.post("/events", json={"events": batch})
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += resp.status_code != 200 or not resp.json().get("history_updated")
    wall = time.perf_counter() - started
    return {
        "batches": batches,
        "batch_size": size,
        "errors": errors,
        "p50_ms": round(_pct(latencies, 50), 2),
        "p99_ms": round(_pct(latencies, 99), 2),
        "events_per_s": round(batches * size / wall, 1),
    }


def breakdown(
    layout: Layout,
    model_dir: Path,
    namespace: str,
    users: list[str],
    cold_users: list[str] | None = None,
    n: int = 200,
) -> dict[str, Any]:
    """In-process cost of the request stages: Feast online read, then scoring + top-k.

    Also the cold path (a user unknown to the model): the Feast profile read, then scoring from
    attributes (``cold_users``: users in Feast but unknown to the model; else request attributes).
    """
    os.environ["RECFORGE_HOME"] = str(layout.home)
    import torch

    from serving.online import OnlineHistory
    from serving.recommender import load_recommender

    torch.set_num_threads(1)
    rec = load_recommender(
        model_dir / ARTIFACT_SUBDIR,
        model_dir / "titles.json",
        retriever_dir=model_dir / RETRIEVER_SUBDIR,
        ann_dir=model_dir / ANN_SUBDIR,  # as the service loads it: the Bento's ANN index, when packaged
    )
    online = OnlineHistory(namespace, home=layout.home)
    online.health()
    feast_ms, score_ms = [], []
    for i in range(n):
        user = users[i % len(users)]
        t0 = time.perf_counter()
        hist = online.recent_items(user)
        t1 = time.perf_counter()
        rec.recommend(user, hist, 10, exclude_seen=True)
        t2 = time.perf_counter()
        feast_ms.append((t1 - t0) * 1000)
        score_ms.append((t2 - t1) * 1000)
    result = {
        "stages": [f"{s['stage']}:{s['model']}" for s in rec.describe()["stages"]],
        "feast_read_p50_ms": round(_pct(feast_ms, 50), 3),
        "feast_read_p99_ms": round(_pct(feast_ms, 99), 3),
        "score_topk_p50_ms": round(_pct(score_ms, 50), 3),
        "score_topk_p99_ms": round(_pct(score_ms, 99), 3),
        **service_stages(layout, users, n),
    }
    if rec.wants_attributes("bench-cold-user"):
        cold_users = [u for u in cold_users or [] if u not in rec.user_index] or ["bench-cold-user"]
        given = {"age": 30, "gender": "M", "occupation": "engineer"}
        profile_ms, cold_ms, strategies = [], [], set()
        for i in range(n):
            user = cold_users[i % len(cold_users)]
            t0 = time.perf_counter()
            hist = online.recent_items(user)
            attributes = online.profile(user, list(given)) or given
            t1 = time.perf_counter()
            strategies.add(rec.recommend(user, hist, 10, user_features=attributes).strategy)
            t2 = time.perf_counter()
            profile_ms.append((t1 - t0) * 1000)
            cold_ms.append((t2 - t1) * 1000)
        result.update(
            cold_strategies=sorted(strategies),
            cold_feast_reads_p50_ms=round(_pct(profile_ms, 50), 3),
            cold_score_topk_p50_ms=round(_pct(cold_ms, 50), 3),
            cold_score_topk_p99_ms=round(_pct(cold_ms, 99), 3),
        )
    return result


def service_stages(layout: Layout, users: list[str], n: int = 200) -> dict[str, Any]:
    """In-process cost of what ``Recommender.recommend`` adds around the model, and of the whole method.

    The service class is instantiated without HTTP (``Recommender.inner()``: the same model, Feast
    reader and code path as a worker); the served-answer log goes to a temporary directory. What the
    HTTP numbers add on top of ``service_method_p50_ms`` + ``response_json_p50_ms`` is BentoML's and
    uvicorn's (request parsing, middleware, response writing) plus the loopback client.
    """
    os.environ.update(
        BENTOML_HOME=str(layout.bentoml_home),
        RECFORGE_LOG_SERVED="0",  # never write bench records into a real home's served log
    )
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    # A --demo home was built in this process: BentoML's store may already point elsewhere.
    BentoMLContainer.model_store.set(ModelStore(layout.bentoml_home / "models"))
    import serving.service as service
    from serving.served_log import ServedLog

    svc = service.Recommender.inner()
    live = svc.live
    served = ServedLog(Path(tempfile.mkdtemp(prefix="recforge-bench-served-")), flush_s=3600)
    spans: dict[str, list[float]] = {"served_log_record": [], "response_model": [], "response_json": []}
    method_ms = []
    for i in range(n):
        user = users[i % len(users)]
        result = live.rec.recommend(user, live.online.recent_items(user), 10, exclude_seen=True)
        t0 = time.perf_counter()
        served.record(
            request_id=service.new_request_id(),
            served_at=service.served_now(),
            user_id=user,
            items=[item.item_id for item in result.items],
            scores=[float(item.score) for item in result.items],
            k=10,
            strategy=result.strategy,
            fallback=result.fallback,
            history_used=result.history_used,
            model_tag=live.tag,
            deployment=service.TARGET.deployment,
        )
        t1 = time.perf_counter()
        response = service.RecommendResponse(
            request_id="bench",
            user_id=user,
            items=service._items(result.items),
            model=live.rec.name,
            model_tag=live.tag,
            deployment=service.TARGET.deployment,
            fallback=result.fallback,
            strategy=result.strategy,
            stages=result.stages,
            history_used=result.history_used,
        )
        t2 = time.perf_counter()
        response.model_dump_json()
        t3 = time.perf_counter()
        svc.recommend(user_id=user, k=10)
        t4 = time.perf_counter()
        for name, start, end in (
            ("served_log_record", t0, t1),
            ("response_model", t1, t2),
            ("response_json", t2, t3),
        ):
            spans[name].append((end - start) * 1000)
        method_ms.append((t4 - t3) * 1000)
    served.close()
    svc._stop_following()
    out = {f"{name}_p50_ms": round(_pct(ms, 50), 3) for name, ms in spans.items()}
    out.update(
        service_method_p50_ms=round(_pct(method_ms, 50), 3),
        service_method_p99_ms=round(_pct(method_ms, 99), 3),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", help="RECFORGE_HOME with a champion (default: $RECFORGE_HOME / config)")
    parser.add_argument("--deployment", default="default", help="whose champion to serve")
    parser.add_argument("--demo", metavar="MODEL", help="build a synthetic home with this model instead")
    parser.add_argument("--demo-users", type=int, default=943)
    parser.add_argument("--demo-items", type=int, default=1682)
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--omp", nargs="+", default=["PASSIVE"], help="OMP_WAIT_POLICY values to compare")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="server worker processes to compare"
    )
    parser.add_argument(
        "--trace-requests",
        nargs="+",
        default=["off"],
        choices=["on", "off"],
        help="OpenTelemetry spans for the API endpoints (serving.trace_requests): compare the overhead",
    )
    parser.add_argument(
        "--served-log",
        nargs="+",
        default=["on", "off"],
        choices=["on", "off"],
        help="log every answer (serving/served_log.py) or not: compare the overhead",
    )
    parser.add_argument(
        "--event-batches",
        type=int,
        default=60,
        help="POST /events batches to time (demo homes only: they append to the home's event log)",
    )
    parser.add_argument("--event-batch-size", type=int, default=100)
    parser.add_argument(
        "--request",
        nargs="+",
        default=["user"],
        choices=REQUEST_KINDS,
        help="request kinds to time: a known user, an anonymous session, a known user with diversity",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args()

    if args.demo:
        from serving.package import is_ranker_model
        from tests.serving_fixtures import build_ranker_serving_home, build_serving_home

        home = Path(tempfile.mkdtemp(prefix="recforge-bench-")) / "home"
        started = time.perf_counter()
        sizes = {"n_users": args.demo_users, "n_items": args.demo_items, "per_user": 30}
        if is_ranker_model(args.demo):  # trained with its TwoTower retriever on the home's split
            built = build_ranker_serving_home(home, ranker=args.demo, **sizes)
        else:
            built = build_serving_home(home, model=args.demo, **sizes)
        cold_users = built.new_users
        print(f"built demo home {home} in {time.perf_counter() - started:.1f}s", flush=True)
        layout = Layout(home)
    else:
        layout = Layout(Path(args.home).resolve() if args.home else load_config().home_dir)
        cold_users = []
    champion = RunIndex.for_layout(layout, load_config().run_index.url).champion(args.deployment)
    if champion is None:
        sys.exit(f"deployment {args.deployment!r} has no champion in {layout.home}: run the pipeline first")
    tag = champion.model_tag
    model_dir = stored_model_dir(layout, tag)
    users = json.loads((model_dir / ARTIFACT_SUBDIR / "user_ids.json").read_text())
    n_items = len(json.loads((model_dir / ARTIFACT_SUBDIR / "item_ids.json").read_text()))

    item_ids = json.loads((model_dir / ARTIFACT_SUBDIR / "item_ids.json").read_text())
    runs = []
    events = None
    load_at_start = round(os.getloadavg()[0], 2)
    # Server configurations measured in turn (repeat them, e.g. --served-log on off on off, to see the
    # spread): slow drifts of the shared machine then do not land on one side of a comparison.
    configurations = [
        (w, p, s, t)
        for w in args.workers
        for p in args.omp
        for s in args.served_log
        for t in args.trace_requests
    ]
    for position, (workers, policy, logged, traced) in enumerate(configurations):
        log_path = Path(tempfile.mkdtemp(prefix="recforge-bench-log-")) / "bentoml.log"
        env = {
            "OMP_WAIT_POLICY": policy,
            "RECFORGE_SERVE_WORKERS": str(workers),
            "RECFORGE_DEPLOYMENT": args.deployment,
            "RECFORGE_LOG_SERVED": "1" if logged == "on" else "0",
            "RECFORGE_TRACE_REQUESTS": traced,
        }
        with serve(layout, log_path, env=env) as server:  # `bentoml serve`, own process group
            started = time.perf_counter()
            server.wait_ready(timeout_s=180)
            startup_s = time.perf_counter() - started
            run_load(server.url, users, 1, 30, args.k)  # warm-up: first calls, registry cache
            for kind, c in ((kind, c) for kind in args.request for c in args.concurrency):
                load_before = os.getloadavg()[0]
                result = run_load(server.url, users, c, args.requests, args.k, kind, item_ids)
                result.update(
                    omp_wait_policy=policy,
                    workers=workers,
                    served_log=logged,
                    trace_requests=traced,
                    startup_s=round(startup_s, 1),
                    loadavg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)],
                )
                print(json.dumps(result), flush=True)
                runs.append(result)
            last = position == len(configurations) - 1
            # Last, so that the pushed events (longer histories) reach no latency comparison.
            if args.demo and last and args.event_batches:
                events = run_events(server.url, users, item_ids, args.event_batches, args.event_batch_size)
                print(json.dumps(events), flush=True)

    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": code_commit(),
        "command": "python bench/bench_serving.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1m_at_start": load_at_start,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "model": champion.model,
        "model_tag": tag,
        "deployment": args.deployment,
        "n_users": len(users),
        "n_items": n_items,
        "demo": bool(args.demo),
        "request": {
            "endpoint": "POST /recommend",
            "k": args.k,
            "exclude_seen": True,
            "users": "known, round-robin",
            "kinds": {kind: request_body(kind, 0, ["<user>"], ["<item>"], args.k) for kind in args.request},
        },
        "server": {"threads_per_worker": 4, "torch_threads": 1},
        "runs": runs,
        "events": events,
        "in_process_breakdown": breakdown(layout, model_dir, champion.feature_namespace, users, cold_users),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "serving.md").write_text(_markdown(report))
    print(json.dumps(report["in_process_breakdown"]))
    print(f"wrote {out / 'serving.json'} and {out / 'serving.md'}")


def _markdown(report: dict) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"`{report['command']}` at commit `{report['code_commit']}`, {report['measured_at']}: real "
        "`bentoml serve serving.service:Recommender`, "
        f"`POST /recommend` (k={report['request']['k']}, exclude_seen, Feast online read per request) over "
        f"loopback HTTP. Model `{report['model_tag']}` ({report['model']}, {report['n_users']} users x "
        f"{report['n_items']} items{', synthetic demo home' if report['demo'] else ''}). "
        f"{report['machine']['cpus']} CPUs shared by client and server (load avg {report['machine']['loadavg_1m_at_end']}"
        " at the end); 4 request threads per worker, 1 torch thread.",
        "",
        "Request kinds: `user` = a known user; `session` = an anonymous visitor's session of "
        f"{SESSION_LENGTH} items; `diversity` = a known user with diversity {DIVERSITY} (MMR re-ranking).",
        "",
        "| request | workers | OMP_WAIT_POLICY | served log | traced | clients | requests | errors | p50 ms | p90 ms | p99 ms | req/s | load avg before/after |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        load = "/".join(str(x) for x in r.get("loadavg_1m", [])) or "-"
        lines.append(
            f"| {r.get('request', 'user')} | {r['workers']} | {r['omp_wait_policy']} | {r.get('served_log', 'on')} | "
            f"{r.get('trace_requests', 'on')} | {r['concurrency']} | "
            f"{r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['rps']} | {load} |"
        )
    settings = sorted({r.get("served_log", "on") for r in report["runs"]})
    if len(settings) > 1:
        lines += [
            "",
            "Served-answer logging, median over the servers of each setting (known-user requests):",
            "",
        ]
        for c in sorted({r["concurrency"] for r in report["runs"]}):
            parts = []
            for setting in settings:
                same = [
                    r
                    for r in report["runs"]
                    if r["concurrency"] == c
                    and r.get("served_log", "on") == setting
                    and r.get("request", "user") == "user"
                ]
                p50 = statistics.median(r["p50_ms"] for r in same)
                p99 = statistics.median(r["p99_ms"] for r in same)
                spread = f"{min(r['p50_ms'] for r in same)}-{max(r['p50_ms'] for r in same)}"
                parts.append(
                    f"{setting}: p50 {p50:.2f} ms (range {spread}), p99 {p99:.2f} ms ({len(same)} servers)"
                )
            lines.append(f"- {c} client{'s' if c > 1 else ''}: " + "; ".join(parts))
    e = report.get("events")
    if e:
        lines += [
            "",
            f"`POST /events` ({e['batches']} batches of {e['batch_size']} new events, one client, each batch "
            f"checked, appended to the event log and pushed to Feast): p50 {e['p50_ms']} ms / p99 "
            f"{e['p99_ms']} ms per batch, {e['events_per_s']} events/s, {e['errors']} errors.",
        ]
    b = report["in_process_breakdown"]
    lines += [
        "",
        f"In-process breakdown (no HTTP), stages {' -> '.join(b.get('stages', []))}: Feast online read p50 "
        f"{b['feast_read_p50_ms']} ms / p99 {b['feast_read_p99_ms']} ms; scoring + exclusion + top-k p50 "
        f"{b['score_topk_p50_ms']} ms / p99 {b['score_topk_p99_ms']} ms.",
        "",
    ]
    if "service_method_p50_ms" in b:
        lines += [
            "Around the model, in-process (p50): served-answer log record "
            f"{b['served_log_record_p50_ms']} ms, response model {b['response_model_p50_ms']} ms, response "
            f"JSON {b['response_json_p50_ms']} ms; the whole `Recommender.recommend` method p50 "
            f"{b['service_method_p50_ms']} ms / p99 {b['service_method_p99_ms']} ms. The rest of an HTTP "
            "request's latency is BentoML's, uvicorn's and the loopback client's (docs/serving-performance.md).",
            "",
        ]
    if "cold_score_topk_p50_ms" in b:
        lines += [
            f"Cold users ({', '.join(b['cold_strategies'])}): Feast history + profile reads p50 "
            f"{b['cold_feast_reads_p50_ms']} ms; scoring p50 {b['cold_score_topk_p50_ms']} ms / p99 "
            f"{b['cold_score_topk_p99_ms']} ms.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
