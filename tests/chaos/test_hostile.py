"""Hostile input: refused at enqueue, or dead-lettered with a specific reason; never run.

Nothing a store holds is ever used to import or resolve code: a task name is only
looked up in the app's own registry, so a forged ``os.system`` or ``module:function``
dies as ``UnknownTask`` and has no side effect, and the other jobs carry on.
"""

from __future__ import annotations

import base64
import math
import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from conveyor.job import new_job_id
from tests.chaos.harness import Cluster

MB = 1024 * 1024


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([object()], {}),
        ([b"bytes are not JSON"], {}),
        ([{1, 2}], {}),
        ([math.nan], {}),
        ([], {"x": math.inf}),
        ([], {1: "non-string key"}),
        ([_nested(100_000)], {}),
        ("a string, not a list", {}),
    ],
    ids=["object", "bytes", "set", "nan", "inf", "int-key", "deeply-nested", "str-args"],
)
def test_payloads_that_are_not_json_are_refused_at_enqueue(
    cluster: Cluster, args: Any, kwargs: dict[Any, Any]
) -> None:
    with pytest.raises(TypeError):
        cluster.app.enqueue("chaos.work", args=args, kwargs=kwargs)
    assert cluster.store() == []


def test_a_10_mb_payload_is_refused_at_enqueue(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="over the limit"):
        cluster.app.enqueue("chaos.work", args=["x" * (10 * MB)])
    with pytest.raises(ValueError, match="over the limit"):
        cluster.app.enqueue_many(
            [{"task": "chaos.work", "args": [0]}, {"task": "chaos.work", "args": ["x" * (10 * MB)]}]
        )
    assert cluster.store() == []  # not even the small job of the refused batch


def _forge(cluster: Cluster, task: str, args_json: str, kwargs_json: str = "{}") -> str:
    """A whole queued job written straight into the store, behind the API's back, in
    each engine's own terms (the schema and key layout the backend documents)."""
    job_id = new_job_id()
    now = time.time()
    if cluster.engine == "sqlite":  # backends/sqlite/schema.sql
        db = Path(cluster.url.removeprefix("sqlite:///"))
        with sqlite3.connect(db, timeout=30) as conn:
            conn.execute(
                "INSERT INTO jobs (id, task, queue, tenant, priority, base_priority, state,"
                " args_json, kwargs_json, attempt, max_attempts, enqueued_at, ready_at)"
                " VALUES (?, ?, 'default', '', 5, 5, 'queued', ?, ?, 0, 3, ?, ?)",
                (job_id, task, args_json, kwargs_json, now, now),
            )
        conn.close()
    elif cluster.engine == "postgres":  # backends/postgres/schema.sql
        import psycopg

        base, schema = _postgres_schema(cluster.url)
        with psycopg.connect(base, autocommit=True) as pg:
            pg.execute(
                f"INSERT INTO {schema}.jobs (id, task, queue, tenant, priority, base_priority,"
                " state, args_json, kwargs_json, attempt, max_attempts, enqueued_at, ready_at)"
                " VALUES (%s, %s, 'default', '', 5, 5, 'queued', %s, %s, 0, 3, %s, %s)",
                (job_id, task, args_json, kwargs_json, now, now),
            )
    elif cluster.engine == "redis":
        _forge_redis(cluster.url, job_id, task, args_json, kwargs_json, now)
    else:
        raise AssertionError(cluster.engine)
    return job_id


def _forge_redis(
    url: str, job_id: str, task: str, args_json: str, kwargs_json: str, now: float
) -> None:
    """A ready job as ``enqueue.lua`` leaves one (the layout is in ``_lib.lua``): the job
    hash, its lane of (priority 5, default tenant, task), the level and tenant entries
    that lead a claim to that lane, the tenant's ready set, the stats counter and the
    queue's registration, in one MULTI/EXEC."""
    import redis
    from conveyor.backends.redis._url import Keys, RedisOptions

    options = RedisOptions.parse(url)
    keys = Keys(options.prefix)
    qp = keys.queue("default")
    stamp = repr(now)
    client = redis.Redis.from_url(options.client_url, decode_responses=True)
    try:
        vtime = client.hget(qp + "tv", "") or "0"
        with client.pipeline(transaction=True) as tx:
            tx.hset(keys.store + "qp", "default", qp)
            tx.sadd(keys.store + "queues", "default")
            tx.hset(
                keys.job(job_id),
                mapping={
                    "id": job_id,
                    "task": task,
                    "queue": "default",
                    "qp": qp,
                    "tenant": "",
                    "priority": 5,
                    "base_priority": 5,
                    "state": "queued",
                    "args": args_json,
                    "kwargs": kwargs_json,
                    "attempt": 0,
                    "max_attempts": 3,
                    "errors": "[]",
                    "enqueued_at": stamp,
                    "ready_at": stamp,
                },
            )
            tx.zadd(f"{qp}l:5:0::{task}", {job_id: 0})  # lane: l:prio:#tenant:tenant:task
            # The (prio, tenant)'s tasks with ready jobs, in the form of stores written
            # before the 't1:<prio>' hash (which the scripts still read): enqueue.lua
            # now keeps a tenant's one task in 't1:5' instead.
            tx.zadd(qp + "t:5:", {task: 0})
            tx.zadd(qp + "p:5", {"": vtime}, nx=True)  # tenants ready at prio 5
            tx.zadd(qp + "r:", {job_id: stamp})  # the tenant's ready jobs
            tx.hincrby(qp + "cnt", "queued:", 1)
            tx.execute()
    finally:
        client.close()


def _postgres_schema(url: str) -> tuple[str, str]:
    base, query = url.split("?", 1)
    return base, dict(parse_qsl(query))["schema"]


def _overwrite_payload(cluster: Cluster, job_id: str, args_json: str, kwargs_json: str) -> None:
    """Replace a stored job's arguments behind the API's back, in each engine's own terms."""
    if cluster.engine == "sqlite":
        db = Path(cluster.url.removeprefix("sqlite:///"))
        with sqlite3.connect(db, timeout=30) as conn:
            conn.execute(
                "UPDATE jobs SET args_json = ?, kwargs_json = ? WHERE id = ?",
                (args_json, kwargs_json, job_id),
            )
        conn.close()
    elif cluster.engine == "postgres":
        import psycopg

        base, schema = _postgres_schema(cluster.url)
        with psycopg.connect(base, autocommit=True) as pg:
            updated = pg.execute(
                f"UPDATE {schema}.jobs SET args_json = %s, kwargs_json = %s WHERE id = %s",
                (args_json, kwargs_json, job_id),
            )
            assert updated.rowcount == 1
    elif cluster.engine == "redis":
        import redis

        client = redis.Redis.from_url(cluster.url.split("?", 1)[0], decode_responses=True)
        try:
            # The job's hash is the key that names its id (whatever the key layout).
            (key,) = [k for k in client.scan_iter(match=f"*{job_id}*") if client.type(k) == "hash"]
            client.hset(key, mapping={"args": args_json, "kwargs": kwargs_json})
        finally:
            client.close()
    else:
        raise AssertionError(cluster.engine)


def _pwned_module(tmp_path: Path) -> Path:
    """A module that leaves a mark if anything imports it (or runs it) by a stored name.
    The worker runs in tmp_path, which the CLI puts on sys.path for the app's own import."""
    pwned = tmp_path / "PWNED"
    mark = f"open({str(pwned)!r}, 'w').write"
    (tmp_path / "evil_module.py").write_text(
        f"{mark}('imported')\ndef run(*a, **k):\n    {mark}('ran')\n"
    )
    return pwned


UNKNOWN_TASKS = (
    "os.system",
    "subprocess:run",
    "evil_module:run",
    "evil_module.run",
    "builtins.eval",
)
BAD_PAYLOADS = (
    "not-json",
    "args-a-string",
    "kwargs-a-list",
    "pickle-base64",
    "pickle-text",
    "deeply-nested",
)


def _bad_payloads(pwned: Path) -> dict[str, tuple[str, str]]:
    pickled = pickle.dumps(("os", "system", f"touch {pwned}"), protocol=4)
    return {
        "not-json": ("{not json", "{}"),
        "args-a-string": (f'"{pwned}"', "{}"),
        "kwargs-a-list": ("[]", f'["{pwned}"]'),
        "pickle-base64": (base64.b64encode(pickled).decode(), "{}"),
        # Without NUL bytes, which a PostgreSQL text column refuses outright.
        "pickle-text": (pickled.decode("latin-1").replace("\x00", ""), "{}"),
        "deeply-nested": ("[" * 100_000 + "]" * 100_000, "{}"),
    }


@pytest.mark.timeout(90)
def test_hostile_records_are_dead_lettered_with_a_reason_and_nothing_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Unknown task names (enqueued by name, as a JSON producer can) and stored
    arguments overwritten behind the API's back, on every engine."""
    pwned = _pwned_module(tmp_path)
    cmd = f"touch {pwned}"
    ids = {name: cluster.enqueue(name, cmd) for name in UNKNOWN_TASKS}
    # Enqueued with a delay, so that no worker can take them before they are rewritten.
    for name, (args_json, kwargs_json) in _bad_payloads(pwned).items():
        ids[name] = cluster.enqueue("chaos.touch", str(pwned), delay=1.0)
        _overwrite_payload(cluster, ids[name], args_json, kwargs_json)
    good = cluster.enqueue_many("chaos.work", [[i] for i in range(20)])
    ids["valid-touch"] = cluster.enqueue("chaos.touch", str(tmp_path / "legit"))

    worker = cluster.start_worker("-c", "4", "--lease", "2")

    def ended() -> bool:  # counts only: listing decodes the records (see below)
        stats = cluster.app.stats()
        return not any(s.scheduled or s.queued or s.running or s.retrying for s in stats)

    cluster.wait_for(ended, 30, "every job to end")
    assert cluster.stop_gracefully(worker) == 0
    stats = cluster.app.stats()
    assert sum(s.dead for s in stats) == len(UNKNOWN_TASKS) + len(BAD_PAYLOADS), stats
    assert sum(s.succeeded for s in stats) == len(good) + 1, stats
    _assert_dead_lettered(cluster, ids, good, pwned)


@pytest.mark.timeout(90)
def test_forged_records_are_dead_lettered_with_a_reason_and_nothing_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Whole jobs written straight into the store, bypassing enqueue and its checks:
    rows of the jobs table (SQLite, PostgreSQL), or the job hash and every index entry
    the claim script reads (Redis). Unknown task names, and pickle or otherwise
    non-JSON payloads under a registered task's name."""
    cluster.app.stats()  # creates the schema
    pwned = _pwned_module(tmp_path)
    cmd = f"touch {pwned}"
    forged = {
        "os.system": ("os.system", f'["{cmd}"]', "{}"),
        "subprocess:run": ("subprocess:run", f'[["sh", "-c", "{cmd}"]]', '{"shell": false}'),
        "evil_module:run": ("evil_module:run", "[]", "{}"),
        "evil_module.run": ("evil_module.run", "[]", "{}"),
        "builtins.eval": ("builtins.eval", f"[\"__import__('os').system('{cmd}')\"]", "{}"),
    }
    for name, (args_json, kwargs_json) in _bad_payloads(pwned).items():
        forged[name] = ("chaos.touch", args_json, kwargs_json)
    ids = {name: _forge(cluster, *row) for name, row in forged.items()}
    for job_id in ids.values():
        cluster.recorder.record("enqueued", id=job_id)
    good = cluster.enqueue_many("chaos.work", [[i] for i in range(20)])
    ids["valid-touch"] = cluster.enqueue("chaos.touch", str(tmp_path / "legit"))

    cluster.drain("-c", "4", "--lease", "2", timeout=60)
    # The store's counters agree: the forged jobs went through claim and dead-lettering
    # like any other job, leaving nothing behind in a ready or running index.
    stats = cluster.app.stats()
    assert sum(s.dead for s in stats) == len(forged), stats
    assert sum(s.succeeded for s in stats) == len(good) + 1, stats
    assert not any(s.queued or s.running or s.scheduled or s.retrying for s in stats), stats
    _assert_dead_lettered(cluster, ids, good, pwned)


def _assert_dead_lettered(
    cluster: Cluster, ids: dict[str, str], good: list[str], pwned: Path
) -> None:
    # Listing the dead-letter queue works even with undecodable records in it.
    stored = {j.id: j for j in cluster.app.jobs(limit=1000)}
    reasons = {name: (stored[i].state.value, stored[i].error) for name, i in ids.items()}
    for name in UNKNOWN_TASKS:
        state, error = reasons[name]
        assert state == "dead" and error is not None, (name, reasons[name])
        assert error.type == "UnknownTask" and name in error.message, (name, error)
    for name in BAD_PAYLOADS:
        state, error = reasons[name]
        assert state == "dead" and error is not None, (name, reasons[name])
        assert error.type == "InvalidPayload", (name, error)
    for name, job_id in ids.items():
        if name != "valid-touch":
            # Dead at the first attempt: a poison record must not crash or loop a worker.
            assert stored[job_id].attempt == 1 and len(stored[job_id].errors) == 1, name
    assert not pwned.exists(), pwned.read_text()
    assert reasons["valid-touch"][0] == "succeeded"
    assert all(stored[i].state.value == "succeeded" for i in good)
    # No body of a hostile job ever started.
    started = {e["id"] for e in cluster.events() if e["ev"] == "start"}
    assert started == set(good) | {ids["valid-touch"]}
    report = cluster.check()
    assert report.ok, report.details()
    assert "worker failed" not in cluster.worker_logs()
