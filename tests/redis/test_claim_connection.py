"""The claim path's own connection (``RedisBackend._hot_call``): it packs its commands
itself, so check that it survives what redis-py's general path survives."""

from __future__ import annotations

import pytest
import redis.exceptions

from conveyor.backends.base import NewJob, Outcome, OutcomeKind
from conveyor.backends.redis.backend import RedisBackend
from conveyor.job import new_job_id
from redis import Redis
from tests.redis.conftest import StartRedis


def _job(args_json: str = "[]") -> NewJob:
    return NewJob(
        id=new_job_id(),
        task="t",
        queue="default",
        tenant=None,
        priority=5,
        args_json=args_json,
        kwargs_json="{}",
        max_attempts=3,
    )


async def test_scripts_flushed_then_server_restarted(private_redis: StartRedis) -> None:
    server = private_redis([])
    backend = RedisBackend(server.url)
    admin = Redis.from_url(server.url)
    await backend.open()
    try:
        # Arguments that are not plain ASCII travel packed by hand: they must arrive intact.
        first, second, third = _job('["é ✓ \\u0000"]'), _job(), _job()
        await backend.enqueue([first, second, third])
        (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30.0)
        assert claimed.id == first.id and claimed.args_json == first.args_json

        admin.script_flush()  # as after a restart: NOSCRIPT, the script is loaded again
        done = Outcome(claimed.id, claimed.lease_token, OutcomeKind.SUCCEEDED, result_json="7")
        applied, more = await backend.finish_and_claim(
            [done], ["default"], 1, worker="w", lease=30.0
        )
        assert applied == [True] and [j.id for j in more] == [second.id]
        job = await backend.get(first.id)
        assert job is not None and job.result == 7

        server.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            await backend.claim(["default"], 1, worker="w", lease=30.0)
        server.start()  # the kept connection was dropped; it connects again when used
        # A fresh store (no persistence): nothing to claim, and no error on the way.
        assert await backend.claim(["default"], 5, worker="w", lease=30.0) == []
        job = _job()
        try:
            await backend.enqueue([job])
        except redis.exceptions.ConnectionError:
            # The pool's connection broke with the server too; its first use may report
            # it (callers treat connection errors as transient and try again).
            await backend.enqueue([job])
        assert len(await backend.claim(["default"], 5, worker="w", lease=30.0)) == 1
    finally:
        admin.close()
        await backend.close()
