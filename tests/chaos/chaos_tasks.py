"""The tasks every chaos scenario runs, and the recorder wrapped around the worker's store.

``make_app(url, history)`` builds a fresh ``App`` with these tasks; worker processes get
theirs from ``tests/chaos/worker_app.py``. Every task body records ``start`` and ``end``
(``fail`` when it raises, ``stop`` when cancelled) in the shared history, naming the job
and attempt.

``record_backend`` wraps one backend instance's ``claim``/``heartbeat``/``finish`` so that
every lease granted, renewed or lost and every outcome accepted or rejected is in the
history with its lease token (which a task cannot see). It replaces the bound methods
on that one instance only: the backend's own code runs unchanged.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence

import conveyor
from conveyor.backends import create_backend
from conveyor.backends.base import Backend, ClaimedJob, Clock, HeartbeatReply, Lease, Outcome
from tests.chaos.history import Recorder

HISTORY_ENV = "CONVEYOR_CHAOS_HISTORY"


def make_app(url: str, history: str | os.PathLike[str]) -> conveyor.App:
    """An App on ``url`` whose task bodies record into ``history``.

    ``result_ttl=None`` keeps every finished record, so the checker sees them all.
    """
    rec = Recorder(history)
    app = conveyor.App(url, result_ttl=None, max_attempts=5)

    def begin() -> conveyor.JobContext:
        job = conveyor.current_job()
        rec.record("start", id=job.id, attempt=job.attempt)
        return job

    def done(job: conveyor.JobContext) -> None:
        rec.record("end", id=job.id, attempt=job.attempt)

    @app.task(name="chaos.work")
    def work(n: int, seconds: float = 0.0) -> int:
        job = begin()
        time.sleep(seconds)
        done(job)
        return n

    @app.task(name="chaos.busy")
    def busy(n: int, seconds: float) -> int:
        # Counts running time by the clock in short naps, so that after a SIGSTOP/SIGCONT
        # it notices at once that its time is up and completes (late).
        job = begin()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(0.02)
        done(job)
        return n

    @app.task(name="chaos.steps")
    async def steps(n: int, count: int, step: float = 0.1, later: int | None = None) -> int:
        # ``count`` naps: time spent frozen (SIGSTOP) does not count, so the body is
        # still running when its worker wakes up and learns that its lease is gone.
        # ``later`` naps for attempts after the first, for scenarios about how the first
        # one ends that need not wait for the next one.
        job = begin()
        if later is not None and job.attempt > 1:
            count = later
        try:
            for _ in range(count):
                await asyncio.sleep(step)
        except asyncio.CancelledError:
            rec.record("stop", id=job.id, attempt=job.attempt)
            raise
        done(job)
        return n

    @app.task(name="chaos.flaky", max_attempts=3, backoff=conveyor.Backoff(base=0.05, cap=0.2))
    def flaky(n: int, fail_rate: float = 0.3, seconds: float = 0.0) -> int:
        # Fails at random; the last attempt always succeeds, so every job ends succeeded
        # unless a crash (not an exception) used up its attempts.
        job = begin()
        time.sleep(seconds)
        if job.attempt < job.max_attempts and random.random() < fail_rate:
            rec.record("fail", id=job.id, attempt=job.attempt)
            raise RuntimeError(f"flaky failure of job {n}")
        done(job)
        return n

    @app.task(name="chaos.suicide", max_attempts=3)
    def suicide(n: int, rate: float = 0.3) -> int:
        # Kills its own worker process now and then (an OOM, a segfault).
        job = begin()
        if random.random() < rate:
            os.kill(os.getpid(), signal.SIGKILL)
        done(job)
        return n

    @app.task(name="chaos.touch", max_attempts=1)
    def touch(path: str) -> str:
        job = begin()
        with open(path, "a") as f:
            f.write(f"{job.id}\n")
        done(job)
        return path

    return app


def record_backend(backend: Backend, rec: Recorder) -> Backend:
    """Record every lease and outcome that passes through ``backend``."""
    claim, heartbeat, finish = backend.claim, backend.heartbeat, backend.finish

    async def recorded_claim(
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None = None,
    ) -> list[ClaimedJob]:
        jobs = await claim(queues, limit, worker=worker, lease=lease, task_caps=task_caps)
        for j in jobs:
            rec.record(
                "claim",
                id=j.id,
                attempt=j.attempt,
                token=j.lease_token,
                expires=j.lease_expires_at,
                lease=lease,
            )
        return jobs

    async def recorded_heartbeat(leases: Sequence[Lease], *, lease: float) -> HeartbeatReply:
        sent = time.time()
        reply = await heartbeat(leases, lease=lease)
        acked = time.time()
        for held in leases:
            if held.id in reply.lost:
                rec.record("lost", id=held.id, token=held.token)
            else:
                rec.record(
                    "renew", id=held.id, token=held.token, sent=sent, acked=acked, lease=lease
                )
        return reply

    def record_finished(outcomes: Sequence[Outcome], accepted: Sequence[bool], sent: float) -> None:
        for outcome, ok in zip(outcomes, accepted, strict=True):
            rec.record(
                "finish",
                id=outcome.id,
                token=outcome.lease_token,
                kind=outcome.kind.value,
                accepted=ok,
                sent=sent,
            )

    async def recorded_finish(outcomes: Sequence[Outcome]) -> list[bool]:
        sent = time.time()
        accepted = await finish(outcomes)
        record_finished(outcomes, accepted, sent)
        return accepted

    # Instance attributes shadow the class's methods for this one instance only.
    backend.claim = recorded_claim  # type: ignore[method-assign]
    backend.heartbeat = recorded_heartbeat  # type: ignore[method-assign]
    backend.finish = recorded_finish  # type: ignore[method-assign]
    if type(backend).finish_and_claim is not Backend.finish_and_claim:
        # The engine does both in one call (Redis), past the wrappers above: record it
        # too. (The default calls self.finish and self.claim, which record already.)
        both = backend.finish_and_claim

        async def recorded_finish_and_claim(
            outcomes: Sequence[Outcome],
            queues: Sequence[str],
            limit: int,
            *,
            worker: str,
            lease: float,
            task_caps: Mapping[str, int] | None = None,
        ) -> tuple[list[bool], list[ClaimedJob]]:
            sent = time.time()
            accepted, jobs = await both(
                outcomes, queues, limit, worker=worker, lease=lease, task_caps=task_caps
            )
            record_finished(outcomes, accepted, sent)
            for j in jobs:
                rec.record(
                    "claim",
                    id=j.id,
                    attempt=j.attempt,
                    token=j.lease_token,
                    expires=j.lease_expires_at,
                    lease=lease,
                )
            return accepted, jobs

        backend.finish_and_claim = recorded_finish_and_claim  # type: ignore[method-assign]
    return backend


def recording_factory(rec: Recorder) -> Callable[..., Backend]:
    """A drop-in for ``create_backend`` whose backends record (see ``install``)."""

    def factory(url: str, *, clock: Clock | None = None) -> Backend:
        return record_backend(create_backend(url, clock=clock), rec)

    return factory


def install(rec: Recorder) -> None:
    """Make every ``Worker`` in this process record: the worker loop opens its own backend
    through ``conveyor.worker.loop.create_backend``, which this replaces."""
    import conveyor.worker.loop as loop

    loop.create_backend = recording_factory(rec)  # type: ignore[attr-defined]
