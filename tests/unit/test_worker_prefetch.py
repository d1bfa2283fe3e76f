"""How far ahead of its free slots a worker claims (Worker._claim_limit), no store needed.

What buffered jobs do (leases, caps, release at stop) is tested per engine in
tests/contract/test_app_worker.py (``test_prefetched_jobs_*``).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import conveyor
from conveyor.backends.base import Outcome, OutcomeKind


def _worker(concurrency: int, prefetch: int, run_time: float) -> conveyor.Worker:
    # Not run: the App does not open its store until it is used.
    app = conveyor.App("redis://127.0.0.1:6379/0")
    worker = conveyor.Worker(app, concurrency=concurrency, prefetch=prefetch)
    worker._deep = True  # the last claim got every job it asked for
    worker._run_time = run_time
    return worker


def test_tiny_jobs_get_the_whole_prefetch() -> None:
    assert _worker(concurrency=10, prefetch=160, run_time=0.0005)._claim_limit() == 10 + 160


def test_the_buffer_holds_about_ten_milliseconds_of_work() -> None:
    """A large prefetch (PostgreSQL's default is 16 per slot) is cut to what the slots
    run in about 10 ms at the average run time: a job that arrives behind the buffer
    waits that long at most, as with the engine-independent default."""
    assert _worker(concurrency=10, prefetch=160, run_time=0.002)._claim_limit() == 10 + 50
    assert _worker(concurrency=2, prefetch=32, run_time=0.005)._claim_limit() == 2 + 4


def test_jobs_over_ten_milliseconds_are_not_prefetched() -> None:
    assert _worker(concurrency=10, prefetch=160, run_time=0.011)._claim_limit() == 10
    # Nor while the queue is not known to be deep (the last claim got all it asked).
    worker = _worker(concurrency=10, prefetch=10, run_time=0.0005)
    worker._deep = False
    assert worker._claim_limit() == 10


class _FinishRecorder:
    """Stands in for a store: records ``finish`` calls, accepts every outcome."""

    transient_errors = (ConnectionError,)

    def __init__(self) -> None:
        self.finished: list[list[Outcome]] = []

    async def finish(self, outcomes: list[Outcome]) -> list[bool]:
        self.finished.append(list(outcomes))
        return [True] * len(outcomes)


def _buffering_worker(monkeypatch: pytest.MonkeyPatch, carry_wait: float) -> conveyor.Worker:
    from conveyor.worker import loop

    monkeypatch.setattr(loop, "_CARRY_WAIT", carry_wait)
    worker = _worker(concurrency=2, prefetch=8, run_time=0.0005)
    worker._backend = _FinishRecorder()  # type: ignore[assignment]
    worker._flush_now = asyncio.Event()
    # A job claimed ahead and not started yet: the worker is buffering.
    worker._prefetched["buffered"] = None  # type: ignore[assignment]
    return worker


async def test_a_buffering_worker_leaves_outcomes_to_its_next_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While tiny jobs are buffered a slot frees within milliseconds, and the claim that
    refills it carries the outcomes: the flush loop does not send them on its own."""
    worker = _buffering_worker(monkeypatch, carry_wait=5.0)
    recorder = worker._backend
    assert isinstance(recorder, _FinishRecorder)
    flusher = asyncio.create_task(worker._flush_loop())
    try:
        worker._pending.append(Outcome("j1", "t1", OutcomeKind.SUCCEEDED))
        worker._flush_now.set()
        await asyncio.sleep(0.2)  # a flush would have gone after 2 ms
        assert recorder.finished == []
        worker._pending.clear()  # the claim loop took them with its claim
        await asyncio.sleep(0.1)
        assert recorder.finished == []
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher


async def test_outcomes_are_flushed_when_no_claim_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If no slot frees (every slot held by a job that hangs), the flush loop sends the
    outcomes itself after a short wait."""
    worker = _buffering_worker(monkeypatch, carry_wait=0.05)
    recorder = worker._backend
    assert isinstance(recorder, _FinishRecorder)
    flusher = asyncio.create_task(worker._flush_loop())
    try:
        outcome = Outcome("j1", "t1", OutcomeKind.SUCCEEDED)
        worker._pending.append(outcome)
        worker._flush_now.set()
        for _ in range(200):
            if recorder.finished:
                break
            await asyncio.sleep(0.01)
        assert recorder.finished == [[outcome]] and not worker._pending
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
