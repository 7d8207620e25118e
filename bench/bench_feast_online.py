"""Feast's production profile at a shop's size: materialise a million users into Redis, then read them.

1. ``recforge example synthetic`` writes a log of ``--events`` events by ``--users`` users over ``--items``
   items under ``--data`` (reused when present).
2. In a child process (its peak RSS is its own): ingest, validate and the features stage with
   ``RECFORGE_FEAST_PROFILE=production``: the SQL registry in a throwaway PostgreSQL database, the online
   store in a Redis database of its own (flushed before and after). The features stage's sub-timings
   (tables, Feast apply, point-in-time retrieval, materialise) come from its ``build_stats.json``.
3. Online reads as the service makes them: ``serving.online.OnlineHistory.recent_items`` (one user's
   history, the read on every ``/recommend``) and ``profile`` (a cold user's attributes), users drawn
   at random from the million, from 1 and 8 client threads sharing one reader, as a service worker's
   request threads do.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379. Writes
``bench/results/feast_online.{json,md}``.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_feast_online.py
        [--events 2000000 --items 100000 --users 1000000] [--reads 2000] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from bench.bench_scale import generate, process_peak_rss_mb, watched  # noqa: E402
from pipeline.provenance import bench_provenance, provenance_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("RECFORGE_BENCH_PG_USER", "postgres")}
MODEL, RUN_ID = "bpr", "feast-online"
PROFILE_FIELDS = ["region", "age_band"]  # the synthetic schema's user attributes


def production_env(database: str, redis_db: int) -> dict[str, str]:
    """The production profile's environment (features/feature_repo/profiles/production)."""
    return {
        "RECFORGE_FEAST_PROFILE": "production",
        "RECFORGE_REDIS": f"127.0.0.1:6379,db={redis_db}",
        "RECFORGE_PG_USER": PG["user"],
        "RECFORGE_PG_PASSWORD": "",
        "RECFORGE_PG_HOST": PG["host"],
        "RECFORGE_PG_PORT": str(PG["port"]),
        "RECFORGE_PG_DB": database,
    }


def run_child(data_dir: Path) -> dict[str, Any]:
    """Ingest, validate and build the features of ``data_dir`` in this process; their seconds."""
    os.environ["RECFORGE_HOME"] = str(data_dir / "home")
    os.environ["RECFORGE_CONFIG"] = str(data_dir / "pipeline.yaml")
    from orchestration import stages

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    staging = stages.ingest(MODEL, RUN_ID)
    seconds["ingest"] = time.perf_counter() - started
    started = time.perf_counter()
    snapshot = stages.validate(MODEL, RUN_ID, staging)
    seconds["validate"] = time.perf_counter() - started
    started = time.perf_counter()
    output = stages.features(MODEL, RUN_ID, snapshot)
    seconds["features"] = time.perf_counter() - started
    manifest = json.loads(Path(output).read_text())
    stats = json.loads((Path(manifest["examples"]).parent / "build_stats.json").read_text())
    return {
        "seconds": seconds,
        "features_parts_s": stats["timings_s"],
        "namespace": manifest["namespace"],
        "peak_rss_mb": process_peak_rss_mb(),
    }


def time_reads(read, users: list[str], n: int, clients: int) -> dict[str, Any]:
    """``n`` reads of random ``users`` spread over ``clients`` threads; latency percentiles, reads/s."""
    rng = random.Random(clients)
    todo = [rng.choice(users) for _ in range(n)]
    latencies: list[float] = []
    misses = [0]
    lock = threading.Lock()

    def worker(share: list[str]) -> None:
        mine, missed = [], 0
        for user in share:
            t0 = time.perf_counter()
            value = read(user)
            mine.append((time.perf_counter() - t0) * 1000)
            missed += value is None
        with lock:
            latencies.extend(mine)
            misses[0] += missed

    threads = [threading.Thread(target=worker, args=(todo[i::clients],)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)

    return {
        "clients": clients,
        "reads": n,
        "misses": misses[0],
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "reads_per_s": round(n / wall, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=2000, help="reads per kind and client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--redis-db", type=int, default=12, help="a Redis database of the bench's own")
    parser.add_argument("--data", default="/tmp/feast-online-data")
    parser.add_argument("--rss-limit-mb", type=float, default=16_000)
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(Path(args.child))))
        return

    import psycopg
    import redis

    data_dir, generated = generate((args.events, args.items, args.users), Path(args.data))
    subprocess.run(["rm", "-rf", str(data_dir / "home")], check=True)
    database = f"recforge_bench_{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host="127.0.0.1", port=6379, db=args.redis_db)
    client.flushdb()
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    env = production_env(database, args.redis_db)
    try:
        print(
            f"building features of {data_dir} into Redis db {args.redis_db} ...", file=sys.stderr, flush=True
        )
        child_env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO), **env)
        cmd = [sys.executable, __file__, "--child", str(data_dir)]
        built = watched(cmd, child_env, args.rss_limit_mb, args.timeout_s)
        print(f"built: {built}", file=sys.stderr, flush=True)
        if built["status"] != "ok":
            raise SystemExit(f"the features stage did not finish: {built['status']}")
        info = client.info("memory")
        keys = client.dbsize()

        os.environ.update(env)
        from serving.online import OnlineHistory

        online = OnlineHistory(built["namespace"], home=data_dir / "home")
        ok, detail = online.health()
        if not ok:
            raise SystemExit(f"the online store does not answer: {detail}")
        import pandas as pd

        known = pd.read_parquet(data_dir / "users.parquet", columns=["user_id"])["user_id"].astype(str)
        users = known.tolist()
        reads = []
        for kind, read in (
            ("history", online.recent_items),
            ("profile", lambda u: online.profile(u, PROFILE_FIELDS)),
        ):
            for _ in range(50):  # warm the connection pool and the registry cache
                read(random.choice(users))
            for clients in args.clients:
                row = {"read": kind, **time_reads(read, users, args.reads, clients)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                reads.append(row)
    finally:
        client.flushdb()
        with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    report = {
        **bench_provenance("bench/bench_feast_online.py", sys.argv[1:] if argv is None else argv),
        "events": args.events,
        "items": args.items,
        "users": len(users),
        "generate": generated,
        "build": built,
        "redis_keys": keys,
        "redis_used_memory_mb": round(info["used_memory"] / 2**20, 1),
        "reads": reads,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "feast_online.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "feast_online.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    b = r["build"]
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in b["features_parts_s"].items())
    lines = [
        "# Feast production profile at a million users",
        "",
        f"{provenance_line(r)} Load avg {r['machine']['load_avg_end']} at the end. Synthetic log "
        f"(`recforge example synthetic`): {r['events']:,} events, {r['users']:,} users with attributes, {r['items']:,} items. Feast with "
        "its SQL registry on the machine's PostgreSQL and its online store on its Redis "
        "(`feature_repo/profiles/production`), built by the pipeline's own stages in one process.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {stage} | {seconds:.1f} |" for stage, seconds in b["seconds"].items()),
        "",
        f"Features stage parts: {parts}. Peak RSS of the build process: {b['peak_rss_mb']:.0f} MB. Redis "
        f"after materialising: {r['redis_keys']:,} keys, {r['redis_used_memory_mb']:,.0f} MB used.",
        "",
        "Online reads as the service makes them (`serving.online.OnlineHistory`: `history` = the user's "
        "recent items, read on every `/recommend`; `profile` = a cold user's attributes), random users, "
        "client threads sharing one reader as a service worker's request threads do:",
        "",
        "| read | clients | reads | misses | p50 ms | p90 ms | p99 ms | reads/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {x['read']} | {x['clients']} | {x['reads']} | {x['misses']} | {x['p50_ms']} | {x['p90_ms']} "
            f"| {x['p99_ms']} | {x['reads_per_s']} |"
            for x in r["reads"]
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
