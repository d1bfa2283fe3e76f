"""PostgreSQL throughput with 1,000,000 finished jobs in the table, against a fresh one.

    python benchmarks/postgres_scale.py                      # local server, 1,000,000 rows
    python benchmarks/postgres_scale.py --url postgresql://root@127.0.0.1:5432/test \\
        --finished 1000000 -n 20000 --repeats 3

Two stores (schemas) on one server: ``<prefix>_fresh`` (empty, made anew for every
repeat) and ``<prefix>_full``, filled once with ``--finished`` succeeded jobs by
``INSERT ... SELECT generate_series`` (and their count in ``job_totals``, as finishing
them would have left it), then vacuumed and analyzed, as autovacuum would have done by
the time a table holds that many rows, and checkpointed, so that the checkpoint the fill
starts does not land in a measured drain. Each repeat enqueues the same backlog of no-op
jobs into both stores (fresh first, then full), analyzes, and drains it with one
``conveyor worker -c 10 -p 1 --burst`` process; the rate comes from the store's own
timestamps (first start to last finish), so process start-up is not counted. It also
times ``stats()`` (what ``--burst`` calls to decide it is idle) on both stores.

Prints each repeat, the medians and the ratio full / fresh (target: >= 0.8). Both
schemas are dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conveyor  # noqa: E402
from conveyor.backends.postgres import PostgresBackend  # noqa: E402
from throughput import start_worker  # noqa: E402

FILLED_TASK = "bench.filled"  # the finished rows; never claimed, left out of the rates

# Succeeded jobs as finish() leaves them: finished a day ago, kept for a week more.
FILL = """
INSERT INTO {schema}.jobs (
    id, task, queue, tenant, priority, base_priority, state, args_json, kwargs_json,
    attempt, max_attempts, result_ttl, enqueued_at, ready_at, started_at, finished_at,
    expires_at, result_json, worker)
SELECT '0' || lpad(to_hex(g), 31, '0'), %(task)s, 'default', '', 5, 5, 'succeeded',
       '[]', '{{}}', 1, 3, 691200, %(t)s, %(t)s, %(t)s, %(t)s, %(t)s + 691200, 'null', 'w'
FROM generate_series(%(start)s, %(stop)s) AS g
"""
COUNT_FILLED = """
INSERT INTO {schema}.job_totals (queue, tenant, state, shard, n)
VALUES ('default', '', 'succeeded', 0, %(n)s)
ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = job_totals.n + excluded.n
"""


def store_url(base: str, schema: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}schema={schema}"


def drop(base: str, schema: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def create(base: str, schema: str) -> None:
    """A new, migrated store."""
    drop(base, schema)

    async def migrate() -> None:
        await PostgresBackend(store_url(base, schema)).migrate()

    asyncio.run(migrate())


def fill(base: str, schema: str, rows: int, chunk: int = 200_000) -> float:
    """Add ``rows`` succeeded jobs; returns the seconds it took (VACUUM ANALYZE included)."""
    started = time.perf_counter()
    ident = sql.Identifier(schema)
    then = time.time() - 86400
    with psycopg.connect(base, autocommit=True) as conn:
        for start in range(1, rows + 1, chunk):
            stop = min(rows, start + chunk - 1)
            with conn.transaction():
                params = {"task": FILLED_TASK, "t": then, "start": start, "stop": stop}
                conn.execute(sql.SQL(FILL).format(schema=ident), params)
                conn.execute(sql.SQL(COUNT_FILLED).format(schema=ident), {"n": stop - start + 1})
        conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(ident))
        # The fill writes about 1 GB of WAL, which starts a checkpoint: let it finish
        # now rather than during the first measured drain (needs superuser or
        # pg_checkpoint; without, the first repeat may be slow).
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            print("  (no privilege to CHECKPOINT; the first repeat may be slow)")
    return time.perf_counter() - started


def enqueue_backlog(url: str, jobs: int) -> None:
    app = conveyor.App(url)
    try:
        for offset in range(0, jobs, 1000):
            app.enqueue_many([{"task": "bench.noop"}] * min(1000, jobs - offset))
    finally:
        app.close()


def drain(base: str, schema: str, concurrency: int, since: float) -> tuple[float, int]:
    """Drain with one worker process: (jobs/s from the store's timestamps, jobs done),
    over the jobs started after ``since``."""
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}.jobs").format(sql.Identifier(schema)))
    worker = start_worker(store_url(base, schema), concurrency, burst=True)
    if worker.wait(timeout=900) != 0:
        raise SystemExit(f"worker failed on {schema}")
    query = sql.SQL(
        "SELECT min(started_at), max(finished_at), count(*) FROM {}.jobs "
        "WHERE state = 'succeeded' AND task <> %s AND started_at >= %s"
    ).format(sql.Identifier(schema))
    with psycopg.connect(base, autocommit=True) as conn:
        row = conn.execute(query, [FILLED_TASK, since]).fetchone()
    assert row is not None
    first, last, done = row
    return done / (last - first), int(done)


def time_stats(url: str, calls: int = 20) -> float:
    """Median milliseconds of ``stats()``."""

    async def run() -> float:
        backend = PostgresBackend(url)
        await backend.open()
        try:
            await backend.stats()
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await backend.stats()
                times.append(time.perf_counter() - started)
            return statistics.median(times) * 1000
        finally:
            await backend.close()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished rows")
    parser.add_argument("-n", "--jobs", type=int, default=20_000, help="backlog per drain")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefix", default="bench_scale", help="schema name prefix")
    parser.add_argument("--keep", action="store_true", help="keep the schemas")
    args = parser.parse_args()

    fresh, full = f"{args.prefix}_fresh", f"{args.prefix}_full"
    print(f"filling {full} with {args.finished:,} finished jobs ...", flush=True)
    create(args.url, full)
    seconds = fill(args.url, full, args.finished)
    print(f"  filled in {seconds:.1f} s", flush=True)
    rates: dict[str, list[float]] = {fresh: [], full: []}
    stats_ms: dict[str, list[float]] = {fresh: [], full: []}
    try:
        for repeat in range(1, args.repeats + 1):
            create(args.url, fresh)
            for schema in (fresh, full):
                url = store_url(args.url, schema)
                enqueue_backlog(url, args.jobs)
                rate, done = drain(args.url, schema, args.concurrency, since=time.time() - 1)
                if done != args.jobs:
                    raise SystemExit(f"{schema}: {done} jobs done, expected {args.jobs}")
                rates[schema].append(rate)
                stats_ms[schema].append(time_stats(url))
                print(
                    f"repeat {repeat} {schema:<20} {rate:8,.0f} jobs/s   "
                    f"stats() {stats_ms[schema][-1]:6.2f} ms   load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    finally:
        if not args.keep:
            drop(args.url, fresh)
            drop(args.url, full)

    fresh_rate, full_rate = statistics.median(rates[fresh]), statistics.median(rates[full])
    ratio = full_rate / fresh_rate
    print()
    print(
        f"machine      {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    print(f"command      python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(
        f"fresh        {fresh_rate:,.0f} jobs/s (median of {args.repeats}), "
        f"stats() {statistics.median(stats_ms[fresh]):.2f} ms"
    )
    print(
        f"{args.finished:,} finished  {full_rate:,.0f} jobs/s (median of {args.repeats}), "
        f"stats() {statistics.median(stats_ms[full]):.2f} ms"
    )
    print(f"ratio        {ratio:.2f} (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
