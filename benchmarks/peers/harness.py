"""Run every system through the same measurements and report medians of the repeats."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import adapters_path  # noqa: F401  (puts the peer modules on sys.path)
import measure
from base import Peer
from report import machine, plot, ratios, table

from services import Services

HERE = Path(__file__).resolve().parent

# system -> (module, class, store, PyPI distribution whose version is reported)
SYSTEMS: dict[str, tuple[str, str, str, str]] = {
    "conveyor-sqlite": ("peer_conveyor", "ConveyorSQLite", "sqlite", "conveyor"),
    "conveyor-redis": ("peer_conveyor", "ConveyorRedis", "redis", "conveyor"),
    "rq": ("peer_rq", "RQPeer", "redis", "rq"),
    "arq": ("peer_arq", "ArqPeer", "redis", "arq"),
    "saq": ("peer_saq", "SaqPeer", "redis", "saq"),
    "dramatiq": ("peer_dramatiq", "DramatiqPeer", "redis", "dramatiq"),
    "celery": ("peer_celery", "CeleryPeer", "redis", "celery"),
    "huey": ("peer_huey", "HueyPeer", "redis", "huey"),
    "taskiq": ("peer_taskiq", "TaskiqPeer", "redis", "taskiq-redis"),
    "conveyor-postgres": ("peer_conveyor", "ConveyorPostgres", "postgres", "conveyor"),
    "procrastinate": ("peer_procrastinate", "ProcrastinatePeer", "postgres", "procrastinate"),
    "pgqueuer": ("peer_pgqueuer", "PgQueuerPeer", "postgres", "pgqueuer"),
}
CONVEYOR_ENGINE = {"conveyor-redis": "redis", "conveyor-postgres": "postgresql"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/peers/run.py",
        description="Conveyor against other Python job queues, in one run on the same servers.",
    )
    parser.add_argument("-n", "--jobs", type=int, default=10_000, help="no-op jobs per drain")
    parser.add_argument("--repeats", type=int, default=3, help="medians of this many runs")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 jobs, 1 repeat")
    parser.add_argument("--only", help="comma-separated systems (default: all available)")
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/11",
        help="a Redis DB this run may own (must be empty)",
    )
    parser.add_argument(
        "--pg-url",
        default="postgresql://root@127.0.0.1:5432",
        help="PostgreSQL server (no database): private ones are created",
    )
    parser.add_argument("--pg-admin-db", default="test", help="database to connect to for CREATE")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    parser.add_argument(
        "--drain-budget",
        type=float,
        default=60.0,
        help="cut a slower drain short and rate the jobs done by then",
    )
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument(
        "--plot",
        type=Path,
        nargs="?",
        const=Path("docs/img/peers.png"),
        help="write a PNG bar chart (default docs/img/peers.png)",
    )
    parser.add_argument("--workdir", type=Path, help="record files and worker logs")
    parser.add_argument(
        "--enqueue-only",
        action="store_true",
        help="measure the two enqueue rates only (no workers, no processing, pickup or fairness)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = min(args.jobs, 500)
        args.repeats = 1
        args.latency_samples = min(args.latency_samples, 30)
    return args


def choose_systems(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The systems to run, and why the others are left out."""
    from conveyor.backends import available_engines

    wanted = args.only.split(",") if args.only else list(SYSTEMS)
    skipped = {name: "--skip" for name in args.skip.split(",") if name}
    unknown = [name for name in wanted if name not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    engines = available_engines()
    chosen = []
    for name in wanted:
        if name in skipped:
            continue
        engine = CONVEYOR_ENGINE.get(name)
        if engine and engine not in engines:
            skipped[name] = f"conveyor has no {engine} backend yet"
            continue
        chosen.append(name)
    return chosen, skipped


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def open_peer(name: str) -> Peer:
    module_name, class_name, _, _ = SYSTEMS[name]
    peer: Peer = getattr(importlib.import_module(module_name), class_name)()
    try:
        peer.prepare()
    except BaseException:
        peer.close()
        raise
    return peer


def one_repeat(peer: Peer, settings: measure.Settings) -> dict[str, Any]:
    run: dict[str, Any] = {}
    if settings.enqueue_only:
        run["enqueue_single_per_s"] = measure.enqueue_rate(peer, settings, bulk=False)
        bulk = measure.enqueue_rate(peer, settings, bulk=True) if peer.has_bulk else None
        run["enqueue_bulk_per_s"] = bulk
        return run
    single, run["processed_per_s_1p"], run["rated_jobs_1p"] = measure.enqueue_and_process(
        peer, settings, processes=1, bulk=False
    )
    run["enqueue_single_per_s"] = single
    bulk, run["processed_per_s_2p"], run["rated_jobs_2p"] = measure.enqueue_and_process(
        peer, settings, processes=2, bulk=peer.has_bulk
    )
    run["enqueue_bulk_per_s"] = bulk if peer.has_bulk else None
    waits = measure.pickup_latency(peer, settings)
    run["pickup_p50_ms"] = measure.percentile(waits, 0.50)
    run["pickup_p99_ms"] = measure.percentile(waits, 0.99)
    run["fairness_b_last"] = measure.fairness(peer, settings)
    return run


def run_all(systems: list[str], repeats: int, settings: measure.Settings) -> list[dict[str, Any]]:
    """Repeats go round robin: every system runs its n-th repeat before any runs its
    (n+1)-th, so a burst of load from elsewhere on the machine spoils one repeat of several
    systems (which the median absorbs) rather than every repeat of one system."""
    rows: dict[str, dict[str, Any]] = {
        name: {"system": name, "store": SYSTEMS[name][2], "version": version(SYSTEMS[name][3])}
        for name in systems
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    peers: dict[str, Peer] = {}
    try:
        for repeat in range(repeats):
            for name in systems:
                if "error" in rows[name]:
                    continue
                print(f"- {name} repeat {repeat + 1}/{repeats}", flush=True)
                try:
                    if name not in peers:
                        peers[name] = open_peer(name)
                    run = one_repeat(peers[name], settings)
                except Exception as exc:  # one peer failing must not lose the others
                    traceback.print_exc()
                    rows[name]["error"] = f"{type(exc).__name__}: {exc}"[:200]
                    continue
                runs[name].append(run)
                print(f"  {_brief(run)}", flush=True)
    finally:
        for peer in peers.values():
            peer.close()
    for name, row in rows.items():
        row["runs"] = runs[name]
        if runs[name] and "error" not in row:
            for key in runs[name][0]:
                values = [r[key] for r in runs[name] if r[key] is not None]
                row[key] = measure.median(values) if values else None
    return list(rows.values())


def _brief(run: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.1f}" for k, v in run.items() if v is not None)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = "python benchmarks/peers/run.py " + shlex.join(argv)
    results_dir = HERE / "results"  # git-ignored: record files and worker logs per run
    results_dir.mkdir(exist_ok=True)
    workdir = args.workdir or Path(
        tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=results_dir)
    )
    workdir.mkdir(parents=True, exist_ok=True)
    services = Services(args.redis_url, args.pg_url, args.pg_admin_db)
    os.environ.update(services.env())
    os.environ["PEERBENCH_WORKDIR"] = str(workdir)

    systems, skipped = choose_systems(args)
    info = machine()
    print(f"$ {command}")
    print(
        f"machine: {info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, "
        f"Python {info['python']}, {info['os']}"
    )
    print(
        f"jobs={args.jobs} repeats={args.repeats} concurrency={args.concurrency} "
        f"latency samples={args.latency_samples}; worker logs in {workdir}"
    )

    rows: list[dict[str, Any]] = []
    try:
        if any(SYSTEMS[s][2] == "redis" for s in systems):
            why = services.open_redis()
            if why:
                raise SystemExit(why)
        pg_systems = [s for s in systems if SYSTEMS[s][2] == "postgres"]
        if pg_systems:
            why = services.open_postgres(
                [s.replace("conveyor-postgres", "conveyor") for s in pg_systems]
            )
            if why:
                raise SystemExit(why)
        print("servers: " + ", ".join(f"{k} {v}" for k, v in services.versions.items()))
        for reason in sorted(set(skipped.values())):
            print(f"left out ({reason}): {', '.join(s for s in skipped if skipped[s] == reason)}")

        settings = measure.Settings(
            jobs=args.jobs,
            concurrency=args.concurrency,
            latency_samples=args.latency_samples,
            fairness_a=2_000,
            fairness_b=20,
            timeout=args.timeout,
            drain_budget=args.drain_budget,
            workdir=workdir,
            enqueue_only=args.enqueue_only,
        )
        rows = run_all(systems, args.repeats, settings)
    finally:
        services.cleanup()

    print()
    print(table(rows))
    print()
    for line in [] if args.enqueue_only else ratios(rows):
        print(line)
    result = {
        "command": command,
        "machine": info,
        "servers": services.versions,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "left_out": skipped,
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        title = (
            f"{args.jobs:,} no-op jobs, concurrency {args.concurrency}, medians of "
            f"{args.repeats}; {info['cores']} cores, Python {info['python']}"
        )
        plot(rows, args.plot, title)
        print(f"plot: {args.plot}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
