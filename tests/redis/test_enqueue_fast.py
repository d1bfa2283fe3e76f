"""The enqueue fast paths: calls without options, jobs sent as runs that share their
fields, and the sync path's own connections. Each must store exactly what the general
path stores."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from redis.client import Redis
from redis.connection import Connection

import conveyor
from conveyor.backends.base import NewJob
from conveyor.backends.redis import _blocking
from conveyor.backends.redis._url import RedisOptions
from conveyor.backends.redis.backend import RedisBackend
from conveyor.job import JobState
from tests.redis.conftest import StartRedis
from tests.redis.jobs import job


def test_a_mixed_batch_keeps_its_order_and_each_jobs_fields(store_url: str) -> None:
    app = conveyor.App(store_url)

    @app.task(name="a", priority=2, timeout=7.0)
    def a(x: int) -> None: ...

    @app.task(name="b", queue="other", max_attempts=9)
    def b(x: int) -> None: ...

    try:
        first = a.enqueue(0)
        calls = [
            a.s(1),
            a.s(2),
            b.s(3),  # another task: a new run
            a.s(4),  # back to the first: a third run
            a.options(tenant="org-1").s(5),
            a.options(tenant="org-1").s(6),
            a.options(key="k").s(7),
            a.options(key="k").s(8),  # the same key in the same batch: refused
            a.options(delay=60.0).s(9),
            a.options(at=datetime.now(UTC) + timedelta(hours=1)).s(10),
            a.options(after=[first.id]).s(11),
            {"task": "by.name", "args": [12], "priority": 0},
        ]
        handles = app.enqueue_many(calls)
        assert handles[7].id == handles[6].id  # the key's holder, in the refused job's place
        jobs = {h.id: h.info() for h in handles}
        got = [(jobs[h.id].args[0], jobs[h.id].task) for h in handles]
        expected_args = [1, 2, 3, 4, 5, 6, 7, 7, 9, 10, 11, 12]
        assert [x for x, _ in got] == expected_args
        by_arg = {jobs[h.id].args[0]: jobs[h.id] for h in handles}
        assert by_arg[1].priority == 2 and by_arg[1].queue == "default"
        assert by_arg[3].queue == "other" and by_arg[3].max_attempts == 9
        assert by_arg[3].priority == 5 and by_arg[4].priority == 2
        assert by_arg[5].tenant == "org-1" and by_arg[1].tenant is None
        assert by_arg[7].state is JobState.QUEUED
        assert by_arg[9].state is JobState.SCHEDULED and by_arg[10].state is JobState.SCHEDULED
        assert by_arg[11].state is JobState.BLOCKED
        assert by_arg[12].task == "by.name" and by_arg[12].priority == 0
        queued = {j.id for j in app.jobs(state="queued", limit=100)}
        assert queued == {first.id} | {by_arg[x].id for x in (1, 2, 3, 4, 5, 6, 7, 12)}
    finally:
        app.close()


def test_changing_a_tasks_defaults_reaches_the_next_enqueue(store_url: str) -> None:
    app = conveyor.App(store_url)

    @app.task(name="t")
    def t() -> None: ...

    try:
        assert t.enqueue().info().priority == 5  # the task's defaults are now cached
        t.priority = 1
        t.queue = "q2"
        job = t.enqueue().info()
        assert (job.priority, job.queue) == (1, "q2")
        t.priority = 10  # invalid: refused at the next enqueue, as by the general path
        with pytest.raises(ValueError, match="priority"):
            t.enqueue()
    finally:
        app.close()


def test_options_given_as_none_are_the_defaults(store_url: str) -> None:
    app = conveyor.App(store_url)

    @app.task(name="t", priority=3)
    def t() -> None: ...

    try:
        job = app.enqueue("t", tenant=None, priority=None).info()
        assert (job.tenant, job.priority) == (None, 3)
        with pytest.raises(TypeError, match="unknown option"):
            app.enqueue("t", tennant=None)
    finally:
        app.close()


def test_an_idle_connection_to_a_restarted_server_is_renewed(
    private_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_blocking, "_CHECK_AFTER_IDLE", 0.0)  # any idle time counts
    server = private_redis([])
    app = conveyor.App(server.url)
    try:
        app.enqueue("t")  # leaves one idle connection
        server.kill()
        server.start()
        job = app.enqueue("t")  # not an error: the closed connection is replaced first
        assert [j.id for j in app.jobs()] == [job.id]
    finally:
        app.close()


def test_a_forked_child_uses_connections_of_its_own(private_redis: StartRedis) -> None:
    server = private_redis([])
    app = conveyor.App(server.url)
    admin = Redis.from_url(server.url)
    try:
        parent = app.enqueue("t")
        pid = os.fork()
        if pid == 0:  # the child: enqueue, then leave without running any clean-up
            code = 1
            try:
                app.enqueue("child")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        after = app.enqueue("t")  # the parent's connection was not disturbed
        tasks = sorted(j.task for j in app.jobs(limit=10))
        assert tasks == ["child", "t", "t"]
        assert {parent.id, after.id} <= {j.id for j in app.jobs(limit=10)}
    finally:
        admin.close()
        app.close()


def test_a_task_known_only_by_name_gets_the_apps_defaults(store_url: str) -> None:
    app = conveyor.App(store_url, priority=2, max_attempts=7, queue="q9", result_ttl=60.0)
    try:
        first, second = app.enqueue("elsewhere.task", args=[1]), app.enqueue("elsewhere.task")
        for job in (first.info(), second.info()):  # the second from the cached defaults
            assert (job.task, job.priority, job.max_attempts, job.queue) == (
                "elsewhere.task",
                2,
                7,
                "q9",
            )
        with pytest.raises(ValueError, match="task name"):
            app.enqueue("")
    finally:
        app.close()


def test_the_jobs_argument_encodes_each_run_once() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0?prefix=t")

    def job(n: int, tenant: str | None = None, delay: float | None = None) -> NewJob:
        return NewJob(
            id=f"id{n}",
            task="t",
            queue="q",
            tenant=tenant,
            priority=5,
            args_json=f"[{n}]",
            kwargs_json="{}",
            max_attempts=3,
            delay=delay,
            result_ttl=60.0,
        )

    for _ in range(2):  # the second time from the kept heads of the runs
        args = backend._enqueue_args([job(1), job(2), job(3, "org"), job(4, delay=2.5)])
        shared = ["t", 1, "", "5", "3", "", "60.0", "", "", "", "", "success", ""]
        assert json.loads(args[3]) == [
            [*shared, ["id1", "[1]", "{}", "id2", "[2]", "{}"]],
            [*shared[:2], "org", *shared[3:], ["id3", "[3]", "{}"]],
            [*shared[:8], "2.5", *shared[9:], ["id4", "[4]", "{}"]],
        ]
    for n in range(1500):  # one head per due time: the caches stay bounded
        backend._enqueue_args([job(n, delay=n + 1.0), job(n + 1, delay=n + 1.0)])
        backend._enqueue_args([job(n, delay=n + 1.0)])  # a single job's own cache
    assert len(backend._group_heads) <= 1000
    assert len(backend._single_heads) <= 1000


def test_the_packed_command_is_what_redis_py_would_send() -> None:
    enqueuer = _blocking.BlockingEnqueuer(RedisOptions.parse("redis://127.0.0.1:1/0"))
    reference = Connection()
    for args in (["", "G:", "[]", '[["t",1]]'], ["", "G:", "[]", "[é]"], ["1.5", "G:", "x", "y"]):
        for command in (("EVALSHA", "a" * 40), ("FCALL", "conveyor_0123_enqueue")):
            packed = enqueuer._pack(command, ["G:queues"], args)
            assert packed == b"".join(reference.pack_command(*command, 1, "G:queues", *args))


def test_threads_enqueueing_to_different_queues_each_get_their_own(store_url: str) -> None:
    app = conveyor.App(store_url)
    errors: list[BaseException] = []

    def produce(queue: str) -> None:
        try:
            for _ in range(200):
                app.enqueue("t", [queue], queue=queue)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=produce, args=(f"q{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for i in range(4):  # the packed start of each call named its own queue
            jobs = app.jobs(queue=f"q{i}", limit=500)
            assert len(jobs) == 200 and {j.args[0] for j in jobs} == {f"q{i}"}
    finally:
        app.close()


async def test_jobs_that_exist_already_are_not_written_again(backend: RedisBackend) -> None:
    """A call sent again (its reply lost) or a caller's retry: whichever of its jobs
    exist keep their state, the others are inserted; an id given twice in one call is
    stored once. (The script asks once per call whether any job exists, then per job.)"""
    first, second = job("a"), job("a")
    assert await backend.enqueue([first]) == [first.id]
    (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30.0)
    assert claimed.id == first.id
    again = [first, second, second]
    assert await backend.enqueue(again) == [first.id, second.id, second.id]
    assert (await backend.get(first.id)).state is JobState.RUNNING  # not reset to queued
    assert [j.id for j in await backend.query(state=JobState.QUEUED)] == [second.id]
    (row,) = await backend.stats()
    assert (row.queued, row.running) == (1, 1)

    third = job("a")
    assert await backend.enqueue([third, third]) == [third.id, third.id]  # none existed
    queued = await backend.query(state=JobState.QUEUED)
    assert sorted(j.id for j in queued) == sorted([second.id, third.id])
    assert len(await backend.claim(["default"], 10, worker="w", lease=30.0)) == 2
    later = dataclasses.replace(job("a"), delay=60.0)
    assert await backend.enqueue([later, later]) == [later.id, later.id]
    (row,) = await backend.stats()
    assert row.scheduled == 1  # counted once


async def test_a_long_run_sent_again_writes_only_its_missing_jobs(backend: RedisBackend) -> None:
    """A run of four or more jobs is written from a template hash (COPY), which refuses
    a job that exists: the same guarantees as above on that path, and no template left."""
    run = [job("a") for _ in range(5)]
    assert await backend.enqueue(run[:3]) == [j.id for j in run[:3]]
    claimed = await backend.claim(["default"], 2, worker="w", lease=30.0)
    assert {c.id for c in claimed} == {run[0].id, run[1].id}
    again = [*run, run[4], run[3]]  # sent again, two of them twice
    assert await backend.enqueue(again) == [j.id for j in again]
    states = [(await backend.get(j.id)).state for j in run]
    assert states == [JobState.RUNNING] * 2 + [JobState.QUEUED] * 3
    (row,) = await backend.stats()
    assert (row.queued, row.running) == (3, 2)
    assert len(await backend.claim(["default"], 10, worker="w", lease=30.0)) == 3
    assert not await backend._client.exists(backend.keys.store + "enqueue:template")


async def test_a_template_left_by_a_failed_call_is_not_reused(backend: RedisBackend) -> None:
    """A script that fails half-way cannot roll back: were a run's template hash left
    behind, the next run must not inherit its fields."""
    template = backend.keys.store + "enqueue:template"
    await backend._client.hset(template, mapping={"timeout": "99", "key": "stale"})
    run = [job("a") for _ in range(4)]
    await backend.enqueue(run)
    for j in run:
        stored = await backend._client.hgetall(backend.keys.job(j.id))
        assert "timeout" not in stored and "key" not in stored
    assert not await backend._client.exists(template)


async def test_a_job_alone_is_stored_as_the_same_job_in_a_batch(store_url: str) -> None:
    """One job goes as plain arguments, a batch as JSON: with every option set, both
    forms store the same fields (but the id and the arguments)."""
    backend = RedisBackend(store_url)
    await backend.open()
    parent = job()
    options = {
        "tenant": "org é",
        "priority": 2,
        "timeout": 7.5,
        "result_ttl": 60.0,
        "delay": 30.0,
        "after": (parent.id,),
        "after_policy": "always",
    }
    shared = {"task": "t.b", "queue": "q", "max_attempts": 4}

    def one(n: int, **more: object) -> NewJob:
        fields = {"kwargs_json": '{"k": "ü"}', **shared, **options, **more}
        return NewJob(id=f"id{n}", args_json=f"[{n}]", **fields)  # type: ignore[arg-type]

    client = Redis.from_url(store_url.partition("?")[0], decode_responses=True)
    try:
        await backend.enqueue([parent])
        alone = one(1)
        assert len(backend._enqueue_args([alone])) > 4  # not the JSON form
        await backend.enqueue([alone])
        await backend.enqueue([one(2), one(3)])
        await backend.enqueue([one(n) for n in range(10, 14)])  # a run long enough for a template
        plain = [one(n, kwargs_json="{}") for n in range(20, 25)]  # the template's own kwargs
        await backend.enqueue([one(30, kwargs_json="{}")])  # alone: every field written
        await backend.enqueue(plain)
        for keyed in ({"key": "k1", "unique_for": 90.0}, {"key": "k2"}):
            await backend.enqueue([one(4, **keyed)])
            await backend.enqueue([one(5, **keyed), one(6)])

        def stored(n: int) -> dict[str, str]:
            fields = client.hgetall(backend.keys.job(f"id{n}"))
            assert fields, f"id{n} was not stored"
            timed = ("enqueued_at", "run_at")  # now, and now + delay
            return {k: v for k, v in fields.items() if k not in ("id", "args", *timed)}

        assert stored(1) == stored(2) == stored(13) and stored(1)["state"] == "blocked"
        assert stored(30) == stored(24) and stored(24)["kwargs"] == "{}"
        assert stored(1)["tenant"] == "org é" and stored(1)["timeout"] == "7.5"
        assert stored(4)["key"] == "k1"
        # The same dedup key again: the holder's id takes the new job's place.
        assert await backend.enqueue([one(7, key="k1", unique_for=90.0)]) == ["id4"]
        assert not client.exists(backend.keys.job("id7"))
    finally:
        client.close()
        await backend.close()
