"""One worker process: an asyncio loop of small pieces.

* the claim loop claims the free slots, woken by the backend, a freed slot, or stop;
  while the queue is deep and jobs are short it also claims a buffer of up to
  ``prefetch`` jobs ahead, so the store works on the next claim while this process
  runs the buffered jobs (see ``Worker._claim_limit``);
* the heartbeat loop renews leases every lease/3, honours cancel requests, and stops
  jobs whose lease it can no longer vouch for;
* the flush loop sends finished attempts and progress in batches;
* the maintenance loop (one elected worker at a time) reaps, promotes and purges.

A crash of any loop stops the worker loudly (``Worker.run`` raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from conveyor import notify
from conveyor.backends import create_backend
from conveyor.backends.base import Backend, ClaimedJob, Lease, Outcome, OutcomeKind
from conveyor.context import JobContext
from conveyor.job import JobState, from_timestamp
from conveyor.metrics import WorkerCounts
from conveyor.scheduler import Scheduler
from conveyor.worker import maintenance, presence
from conveyor.worker.runner import run_attempt
from conveyor.worker.threads import DaemonThreadPool

if TYPE_CHECKING:
    from conveyor.app import App

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

#: Exit status of a worker process that must be replaced (a sync task overran its
#: timeout and its thread cannot be stopped). The supervisor starts a new one.
EXIT_REPLACE = 75

#: asyncio.Task(..., eager_start=True) exists from Python 3.12 on.
_EAGER_TASKS = sys.version_info >= (3, 12)
_MAINTENANCE_LOCK = "conveyor:maintenance"
_PURGE_EVERY = 60.0
_FLUSH_BATCH = 256
_FLUSH_WINDOW = 0.002  # seconds to gather more outcomes before a flush
#: Jobs are claimed ahead of free slots only while attempts last less than this on
#: average (seconds): a buffered job then waits about a round trip, not a long job's
#: run, and other workers are not starved of work this one holds. An attempt is timed
#: from its start, so this includes its wait behind the others started in the same
#: loop turn: at 2 ms, no-op jobs on a busy machine crossed it now and then and turned
#: prefetch off and on (each time a cycle split into a claim and a separate flush).
_PREFETCH_MAX_RUN = 0.01
#: ... and only as many as the slots run in about this long (seconds), at the average
#: run time: a large ``prefetch`` (Backend.prefetch_per_slot) serves tiny jobs only.
_PREFETCH_MAX_WAIT = 0.01
#: How long the flush loop leaves outcomes to the claim loop while it holds buffered
#: jobs (see ``Worker._buffering``) before it sends them itself.
_CARRY_WAIT = 0.02
#: Floor of the time a store call may take before the worker gives up on it (see
#: ``Worker._call``): one lease, but never less than this.
_MIN_CALL_TIMEOUT = 5.0

StopReason = Literal["cancel", "lost", "release"]


@dataclass(eq=False)
class _Attempt:
    job: ClaimedJob
    ctx: JobContext | None
    renewed_at: float  # monotonic time of the last lease grant or renewal
    task: asyncio.Task[Outcome | None] | None = None
    started_at: float = 0.0  # monotonic
    stop_reason: StopReason | None = None
    stuck: bool = False
    progress: tuple[float | None, str | None] | None = field(default=None)


class Worker:
    """Runs jobs from ``queues`` with ``concurrency`` slots in this process.

    ``Worker(app).run(burst=True)`` runs until nothing is ready, running or retrying in
    its queues and returns (handy in tests and notebooks). ``run()`` without burst runs
    until SIGTERM/SIGINT (main thread) or ``stop()``.
    """

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        lease: float = 30.0,
        grace: float = 10.0,
        *,
        name: str | None = None,
        poll_interval: float = 1.0,
        maintenance_interval: float = 1.0,
        replace_on_stuck: bool = False,
        handle_signals: bool = True,
        prefetch: int | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if lease <= 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace}")
        if prefetch is not None and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0
        ):
            raise ValueError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        queue_list = list(queues) if queues else [app.defaults.queue]
        if any(not isinstance(q, str) or not q for q in queue_list):
            raise ValueError("queue names must be non-empty strings")
        self.app = app
        self.queues = queue_list
        self.concurrency = concurrency
        self.lease = float(lease)
        self.grace = float(grace)
        self.id = name or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.poll_interval = poll_interval
        #: Jobs claimed ahead of free slots (see ``_claim_limit``); 0 turns it off. None:
        #: the engine's default, ``Backend.prefetch_per_slot`` per slot, set by ``run``.
        self.prefetch = prefetch
        self.maintenance_interval = maintenance_interval
        self._call_timeout = max(self.lease, _MIN_CALL_TIMEOUT)
        self._scheduler = Scheduler(app)
        #: In a supervised process: exit (and be replaced) when a sync task overruns its
        #: timeout. In-process (tests, notebooks) the stuck thread is abandoned instead.
        self.replace_on_stuck = replace_on_stuck
        self.handle_signals = handle_signals
        self.processed = 0
        #: Exact counts for /metrics, written with the presence heartbeat (metrics.py).
        self.counts = WorkerCounts(self.id)
        self._running: dict[str, _Attempt] = {}
        #: Claimed ahead of a free slot, in claim order; leased and heartbeated like the
        #: running ones, started as slots free, released at shutdown.
        self._prefetched: dict[str, _Attempt] = {}
        self._deep = False  # the last claim got all it asked for
        #: A finish_and_claim is on its way: outcomes that arrive meanwhile go with the
        #: next one (see _flush_loop).
        self._claiming = False
        self._run_time = 1.0  # moving average of attempts' run time (s); starts slow
        self._pending: list[Outcome] = []
        #: Jobs whose pending outcome has listeners or webhooks to tell (notify.py), by
        #: lease token: a retry may be claimed again, and end, before the store's answer
        #: about its previous attempt is settled.
        self._announce: dict[str, ClaimedJob] = {}
        self._progress: dict[str, _Attempt] = {}
        self._progress_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend: Backend | None = None
        self._executor: DaemonThreadPool | None = None
        self._fatal: BaseException | None = None
        self._exit_code: int | None = None
        self._stopping = False
        self._signals = 0

    # -- public control ------------------------------------------------------------------
    def run(self, burst: bool = False) -> None:
        asyncio.run(self.run_async(burst=burst))

    def stop(self) -> None:
        """Ask the worker to stop gracefully; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._request_stop)

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def exit_code(self) -> int | None:
        """Set when the worker asks its process to be replaced (see ``EXIT_REPLACE``)."""
        return self._exit_code

    async def run_async(self, burst: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()  # slot freed, stop requested, or new outcome
        self._flush_now = asyncio.Event()
        self._drain_now = asyncio.Event()
        self._executor = DaemonThreadPool()
        # Our own connection: closing it at the end must not close one the app's other
        # users on this loop share.
        self._backend = create_backend(self.app.url, clock=self.app._clock)
        if self.prefetch is None:
            self.prefetch = self.concurrency * self._backend.prefetch_per_slot
        await self._backend.open()
        # Tasks that call the app's API (the webhook delivery task does) open the app's
        # backend for this loop; one we did not find here is ours to close at the end.
        app_backend_before = self.app._backends.get(self._loop)
        installed = self._install_signals()
        log.info("worker %s serving %s with %d slots", self.id, self.queues, self.concurrency)
        side = [
            asyncio.create_task(self._supervised(self._heartbeat_loop, "heartbeat")),
            asyncio.create_task(self._supervised(self._flush_loop, "flush")),
            asyncio.create_task(self._supervised(self._maintenance_loop, "maintenance")),
            asyncio.create_task(presence.presence_loop(self, self._backend)),
        ]
        try:
            await self._claim_loop(burst)
            await self._drain()
        finally:
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._flush()
            with contextlib.suppress(Exception):
                await self._backend.unlock(_MAINTENANCE_LOCK, self.id)
            await self.counts.publish_quietly(self._backend, force=True)
            await presence.leave(self, self._backend)
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)
            await self._backend.close()
            if app_backend_before is None:
                with contextlib.suppress(Exception):
                    await self.app.close_async()
        if self._fatal is not None:
            raise RuntimeError(f"worker {self.id} stopped: {self._fatal!r}") from self._fatal

    # -- stopping ------------------------------------------------------------------------
    def _install_signals(self) -> list[signal.Signals]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        assert self._loop is not None
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._on_signal, sig)
            installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning(
                "%s: stopping; running jobs get %.0f s to finish (signal again to release now)",
                signal.Signals(sig).name,
                self.grace,
            )
            self._request_stop()
        else:
            self._drain_now.set()

    def _request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _die(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._drain_now.set()
        self._request_stop()

    async def _supervised(self, loop_fn: Callable[[], Awaitable[None]], name: str) -> None:
        try:
            await loop_fn()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.critical("worker %s: the %s loop crashed; stopping", self.id, name, exc_info=exc)
            self._die(exc)

    async def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T | None:
        """Run a backend call; a transient store error is logged and yields None.

        So is a call unanswered after one lease (at least ``_MIN_CALL_TIMEOUT``): no
        answer is of use to the worker that late, and a connection that went silent for
        good (a middlebox that forgot it; no reset ever comes) would otherwise hold the
        loop until TCP gives up, or forever. Cancelling the call drops its connection
        (redis-py disconnects, the pool discards a connection left mid-query); like a
        reply lost to a reset, a call the store did run is then settled by leases and
        fencing."""
        assert self._backend is not None
        try:
            async with asyncio.timeout(self._call_timeout):
                return await make()
        except TimeoutError:
            log.warning(
                "worker %s: %s got no answer in %.0f s; will retry",
                self.id,
                what,
                self._call_timeout,
            )
            return None
        except self._backend.transient_errors as exc:
            log.warning("worker %s: %s failed (%s); will retry", self.id, what, exc)
            return None

    # -- claiming ------------------------------------------------------------------------
    async def _claim_loop(self, burst: bool) -> None:
        backend = self._backend
        assert backend is not None
        caps = self.app.task_caps()
        errors = 0
        while not self._stopping:
            await self._flush_progress()  # a job's progress goes before its outcome
            free = self._claim_limit()
            claimed: list[ClaimedJob] = []
            if free > 0:
                # The outcomes of the jobs that freed these slots travel with the claim:
                # one round trip (one atomic call where the engine can) per refill.
                batch, self._pending = self._pending[:_FLUSH_BATCH], self._pending[_FLUSH_BATCH:]
                asked_at = time.monotonic()  # the store's lease starts no earlier
                self._claiming = True
                try:
                    got = await self._call(
                        "claim",
                        functools.partial(
                            backend.finish_and_claim,
                            batch,
                            self.queues,
                            free,
                            worker=self.id,
                            lease=self.lease,
                            task_caps=caps,
                        ),
                    )
                except asyncio.CancelledError:
                    self._pending[:0] = batch  # the final flush sends them (fenced)
                    raise
                finally:
                    self._claiming = False
                if got is None:
                    self._pending[:0] = batch  # keep them; the store is having a moment
                    errors += 1
                    await self._sleep(min(0.05 * 2**errors, 5.0))
                    continue
                errors = 0
                accepted, claimed = got
                self._deep = len(claimed) >= free
                for job in claimed:
                    self._take(job, asked_at)
                await self._settle(batch, accepted)
            elif not self._buffering():  # (else the next claim carries the outcomes)
                await self._flush()
            if len(claimed) < free:
                if (
                    burst
                    and not self._running
                    and not self._prefetched
                    and not self._pending
                    and await self._idle()
                ):
                    return
                await self._wait(work=True)
            else:
                await self._wait(work=False)

    def _claim_limit(self) -> int:
        """How many jobs the next claim asks for: the free slots, plus a buffer of up to
        ``prefetch`` jobs while the queue is deep (the last claim got all it asked for)
        and attempts are short. The buffer lets the store work on the next claim while
        this process runs the buffered jobs, instead of one waiting for the other.

        Buffered jobs are claimed like running ones (attempt counted, leased, counted
        against task and tenant caps, so caps stay exact; order is decided at claim
        time, so priorities and fairness are the store's), heartbeated, started in
        claim order as slots free, and released (no attempt burned) at shutdown."""
        held = len(self._running) + len(self._prefetched)
        room = self.concurrency - held
        if self.prefetch and self._deep and self._run_time < _PREFETCH_MAX_RUN:
            # No more than about _PREFETCH_MAX_WAIT of work buffered, however large
            # ``prefetch`` is: a job that arrives now waits behind the buffer.
            by_time = self.concurrency * _PREFETCH_MAX_WAIT / max(self._run_time, 1e-6)
            room += min(self.prefetch, int(by_time))
        return room

    def _buffering(self) -> bool:
        """In the prefetch regime (see ``_claim_limit``) with jobs buffered: slots free
        up within milliseconds, and the claim that refills them carries the outcomes
        of the jobs that freed them (one round trip and one commit for both)."""
        return (
            bool(self._prefetched)
            and not self._stopping
            and self._deep
            and self._run_time < _PREFETCH_MAX_RUN
        )

    def _take(self, job: ClaimedJob, asked_at: float) -> None:
        attempt = _Attempt(job=job, ctx=None, renewed_at=asked_at)
        previous = self._prefetched.pop(job.id, None)
        if previous is not None:  # handed out again: that claim's lease is gone
            self._drop_prefetched(previous, "lost")
        if len(self._running) < self.concurrency and not self._prefetched:
            self._start(attempt)
        else:
            self._prefetched[job.id] = attempt

    def _start_prefetched(self) -> None:
        while self._prefetched and len(self._running) < self.concurrency:
            job_id = next(iter(self._prefetched))
            self._start(self._prefetched.pop(job_id))

    def _drop_prefetched(self, attempt: _Attempt, reason: StopReason) -> None:
        """A buffered job that will not start: its outcome, as if it had been stopped."""
        self._prefetched.pop(attempt.job.id, None)
        job = attempt.job
        if reason == "lost":
            log.warning("job %s: lease lost before it started", job.id)
            return
        kind = OutcomeKind.CANCELLED if reason == "cancel" else OutcomeKind.RELEASED
        self._pending.append(Outcome(job.id, job.lease_token, kind))
        self._flush_now.set()
        self._wake.set()

    async def _idle(self) -> bool:
        """Burst mode: nothing ready, running or retrying in our queues, anywhere."""
        assert self._backend is not None
        stats = await self._backend.stats()
        return not any(s.queued or s.running or s.retrying for s in stats if s.queue in self.queues)

    async def _wait(self, work: bool) -> None:
        """Sleep until a slot frees, stop is requested, or (``work``) a job may be ready."""
        assert self._backend is not None
        if self._wake.is_set():
            self._wake.clear()
            return
        if not work:  # the common case under load: no helper tasks to start and cancel
            await self._wake.wait()
            self._wake.clear()
            return
        # The store's wait sets the same event as a freed slot does, so the loop wakes
        # two event-loop turns sooner than when waiting on both (asyncio.wait, then
        # cancelling the loser): an idle pickup's latency is mostly such turns.
        waiter = asyncio.ensure_future(self._backend.wait_for_work(self.queues, self.poll_interval))
        waiter.add_done_callback(self._work_may_be_ready)
        try:
            # Bounded like a store call: waiting for work may query the store too.
            async with asyncio.timeout(self.poll_interval + self._call_timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
        self._wake.clear()

    def _work_may_be_ready(self, waiter: asyncio.Future[Any]) -> None:
        if not waiter.cancelled():
            waiter.exception()  # a failed wait (the store is away) only ends the wait
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._drain_now.wait()

    # -- running -------------------------------------------------------------------------
    def _start(self, attempt: _Attempt) -> None:
        job = attempt.job
        previous = self._running.get(job.id)
        if previous is not None:
            # The store handed this job out again, so the lease of our earlier attempt
            # is gone (it stalled past its lease): stop that attempt, do not shadow it.
            self._stop_attempt(previous, "lost")
        task = self.app.tasks.get(job.task)
        attempt.started_at = time.monotonic()
        if task is not None:
            attempt.ctx = JobContext(
                id=job.id,
                task=job.task,
                queue=job.queue,
                tenant=job.tenant,
                priority=job.priority,
                attempt=job.attempt,
                max_attempts=job.max_attempts,
                enqueued_at=from_timestamp(job.enqueued_at),  # type: ignore[arg-type]
                _sink=functools.partial(self._report_progress, attempt),
                completion_token=job.lease_token,
            )
        assert self._executor is not None
        coro = run_attempt(
            task,
            job,
            attempt.ctx,
            self._executor,
            functools.partial(self._mark_stuck, attempt),
            self._backend,
        )
        self.counts.started(job, self.lease)
        name = f"conveyor-job-{job.id}"
        if _EAGER_TASKS:
            # Python 3.12+: the attempt runs at once, up to its first real wait, as the
            # current task (timeouts and current_task() behave as in any task); a job
            # that never waits is done here, without a trip through the loop's queue.
            eager: dict[str, Any] = {"eager_start": True}  # unknown to 3.11's typeshed
            attempt.task = asyncio.Task(coro, loop=self._loop, name=name, **eager)
        else:
            attempt.task = asyncio.create_task(coro, name=name)
        attempt.task.add_done_callback(functools.partial(self._finished, attempt))
        self._running[job.id] = attempt

    def _finished(self, attempt: _Attempt, _done: object = None) -> None:
        job = attempt.job
        if self._running.get(job.id) is attempt:  # not a newer attempt of the same job
            del self._running[job.id]
        # Prefetching is for short attempts only (see _claim_limit).
        self._run_time += (time.monotonic() - attempt.started_at - self._run_time) * 0.2
        if self._prefetched and not self._stopping:  # stopping: _drain releases them
            self._start_prefetched()
        assert attempt.task is not None
        reason = attempt.stop_reason
        outcome: Outcome | None
        if reason == "lost":
            log.warning("job %s: lease lost; its outcome is dropped", job.id)
            outcome = None
        elif reason == "cancel":
            outcome = Outcome(job.id, job.lease_token, OutcomeKind.CANCELLED)
        elif reason == "release" or attempt.task.cancelled():
            outcome = Outcome(job.id, job.lease_token, OutcomeKind.RELEASED)
        else:
            exc = attempt.task.exception()
            if exc is not None:  # a bug in the runner itself: loud, and the job is released
                self._die(exc)
                outcome = Outcome(job.id, job.lease_token, OutcomeKind.RELEASED)
            else:
                outcome = attempt.task.result()
        self.counts.ended(job, outcome)
        if outcome is not None:
            if self.app.notifier.wants(job, outcome):  # announced once the store accepts
                self._announce[job.lease_token] = job
            self._pending.append(outcome)
            self.processed += 1
            self._flush_now.set()
        self._wake.set()
        if attempt.stuck and self.replace_on_stuck:
            self._replace_process()

    def _mark_stuck(self, attempt: _Attempt) -> None:
        attempt.stuck = True
        if not self.replace_on_stuck:
            log.warning(
                "job %s: sync task %s overran its timeout; its thread is abandoned "
                "(under `conveyor worker` the process would be replaced)",
                attempt.job.id,
                attempt.job.task,
            )

    def _replace_process(self) -> None:
        """A sync thread cannot be killed: release the other jobs and exit to be replaced."""
        if self._exit_code is None:
            log.error("worker %s: a sync task overran its timeout; replacing process", self.id)
            self._exit_code = EXIT_REPLACE
            self._drain_now.set()
            self._request_stop()

    def _stop_attempt(self, attempt: _Attempt, reason: StopReason) -> None:
        if attempt.task is None and self._prefetched.get(attempt.job.id) is attempt:
            self._drop_prefetched(attempt, reason)
            return
        if attempt.stop_reason is None:
            attempt.stop_reason = reason
        if attempt.task is not None:
            attempt.task.cancel()

    async def _drain(self) -> None:
        """Graceful stop: wait up to ``grace`` for running jobs, then release the rest."""
        for attempt in list(self._prefetched.values()):  # not started: given back at once
            self._drop_prefetched(attempt, "release")
        tasks = [a.task for a in self._running.values() if a.task is not None]
        if tasks and not self._drain_now.is_set():
            drain_now = asyncio.ensure_future(self._drain_now.wait())
            try:
                await _wait_all_or(tasks, drain_now, self.grace)
            finally:
                drain_now.cancel()
        leftover = list(self._running.values())
        for attempt in leftover:
            self._stop_attempt(attempt, "release")
        if leftover:
            log.warning("worker %s: released %d unfinished job(s)", self.id, len(leftover))
            await asyncio.gather(
                *(a.task for a in leftover if a.task is not None), return_exceptions=True
            )
        await self._flush()

    # -- progress and completions --------------------------------------------------------
    def _report_progress(self, attempt: _Attempt, fraction: float | None, msg: str | None) -> None:
        """Called from the task (loop or thread): remember the latest, flush soon."""
        with self._progress_lock:
            attempt.progress = (fraction, msg)
            self._progress[attempt.job.id] = attempt
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._flush_now.set)

    async def _flush_progress(self) -> None:
        if not self._progress:
            return
        backend = self._backend
        assert backend is not None
        with self._progress_lock:
            progress, self._progress = self._progress, {}
            reports = [(a, a.progress) for a in progress.values()]
        for attempt, value in reports:
            if value is None or attempt.stop_reason is not None:
                continue
            lease = Lease(attempt.job.id, attempt.job.lease_token)
            await self._call("progress", functools.partial(backend.progress, lease, *value))

    async def _flush(self) -> None:
        backend = self._backend
        assert backend is not None
        await self._flush_progress()
        while self._pending:
            batch, self._pending = self._pending[:_FLUSH_BATCH], self._pending[_FLUSH_BATCH:]
            try:
                accepted = await self._call("finish", functools.partial(backend.finish, batch))
            except asyncio.CancelledError:
                # Shutdown cancelled us mid-send: the final flush sends these again (if
                # the first send landed, fencing turns the repeat into a no-op).
                self._pending[:0] = batch
                raise
            if accepted is None:
                self._pending[:0] = batch  # keep them; the store is having a moment
                await self._sleep(0.2)
                return
            await self._settle(batch, accepted)

    async def _settle(self, batch: Sequence[Outcome], accepted: Sequence[bool]) -> None:
        """After the store answered for ``batch``: log what fencing rejected, and
        announce the accepted outcomes that someone listens for."""
        backend = self._backend
        assert backend is not None
        cancelled = await self._cancelled_by_store(batch, accepted)
        self.counts.settled(batch, accepted, cancelled)
        if not self._announce and len(accepted) == len(batch) and all(accepted):
            return  # the common case: nothing to log, nobody to tell
        announce = []
        for outcome, ok in zip(batch, accepted, strict=True):
            job = self._announce.pop(outcome.lease_token, None)
            if ok and job is not None:
                if cancelled and outcome.lease_token in cancelled:
                    announce.append((job, dataclasses.replace(outcome, kind=OutcomeKind.CANCELLED)))
                else:
                    announce.append((job, outcome))
            if not ok and outcome.kind is OutcomeKind.PARKED:
                log.info("job %s: completed from outside before it was parked", outcome.id)
            elif not ok:
                log.warning(
                    "job %s: %s rejected: the lease is no longer ours (fencing)",
                    outcome.id,
                    outcome.kind.value,
                )
        if announce:
            await self.app.notifier.emit(backend, announce)

    async def _cancelled_by_store(
        self, batch: Sequence[Outcome], accepted: Sequence[bool]
    ) -> frozenset[str]:
        """Lease tokens of the accepted retries, releases and parks in ``batch`` that the
        store turned into ``cancelled`` (``notify.MAY_BE_CANCELLED``).

        A cancel request that came after the attempt's last heartbeat reply is unknown
        here; the store honours it when the outcome arrives, and ``finish`` answers only
        "applied". So those jobs are read back, in one call, and only on these paths
        (a failed attempt, a shutdown, a hand-over to an outside service), never for a
        success. Converted means cancelled
        with the request still set: ``cancel`` of a job no worker holds never sets it,
        and a claim clears it. A job retried with no delay and then claimed, asked to
        cancel and cancelled again by another worker between our finish and this read
        would be taken for one of ours (one round trip; a retry with a backoff delay
        cannot be claimed that soon). A failed read keeps the outcomes as sent."""
        backend = self._backend
        assert backend is not None
        asked = [
            o
            for o, ok in zip(batch, accepted, strict=True)
            if ok and o.kind in notify.MAY_BE_CANCELLED
        ]
        if not asked:
            return frozenset()
        read = functools.partial(backend.get_many, [o.id for o in asked])
        jobs = await self._call("read back retries", read)
        if jobs is None:
            return frozenset()
        return frozenset(
            o.lease_token
            for o, job in zip(asked, jobs, strict=True)
            if job is not None and job.state is JobState.CANCELLED and job.cancel_requested
        )

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_now.wait()
            self._flush_now.clear()
            await asyncio.sleep(_FLUSH_WINDOW)  # let a burst of completions gather
            if self._claiming and not self._stopping:
                # The claim loop is in a store call and, slots being free, claims again
                # as soon as it returns, with these outcomes: a flush now would cost
                # one more round trip and commit for nothing.
                continue
            # The same while it holds a buffer of tiny jobs: a slot frees within
            # milliseconds and the refill claim carries the outcomes. Not for long,
            # though: if none frees (all slots held by a job that hangs), flush.
            waited = 0.0
            while self._pending and self._buffering() and waited < _CARRY_WAIT:
                await asyncio.sleep(_FLUSH_WINDOW)
                waited += _FLUSH_WINDOW
            await self._flush()

    # -- leases --------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        backend = self._backend
        assert backend is not None
        interval = self.lease / 3
        while True:
            await asyncio.sleep(interval)
            attempts = [a for a in self._running.values() if a.stop_reason is None]
            attempts += self._prefetched.values()
            if not attempts:
                continue
            sent_at = time.monotonic()
            leases = [Lease(a.job.id, a.job.lease_token) for a in attempts]
            call = asyncio.ensure_future(
                self._call(
                    "heartbeat", functools.partial(backend.heartbeat, leases, lease=self.lease)
                )
            )
            # A store that hangs (a held lock, a black-holed connection) is as bad as
            # one that fails: while the answer is late, keep applying the rule below.
            try:
                while not (await asyncio.wait({call}, timeout=interval))[0]:
                    self._stop_unrenewed(attempts, interval)
            except asyncio.CancelledError:
                call.cancel()  # shutting down: do not leave the call behind
                raise
            reply = call.result()
            if reply is None:
                self._stop_unrenewed(attempts, interval)
                continue
            for a in attempts:
                if a.job.id in reply.lost:
                    self._stop_attempt(a, "lost")
                    continue
                a.renewed_at = sent_at
                if a.job.id in reply.cancel_requested and (a.ctx is not None or a.task is None):
                    if a.ctx is not None:
                        a.ctx._cancel_requested = True
                    self._stop_attempt(a, "cancel")

    def _stop_unrenewed(self, attempts: Sequence[_Attempt], interval: float) -> None:
        """Could not renew: stop what we can no longer vouch for before the lease ends,
        so the reaper's hand-over to another worker never overlaps us. The next try
        comes one interval from now, so decide now if that would be too late."""
        for a in attempts:
            if time.monotonic() - a.renewed_at + interval >= self.lease * 0.9:
                self._stop_attempt(a, "lost")

    async def _maintenance_loop(self) -> None:
        backend = self._backend
        assert backend is not None
        ttl = max(5.0, self.maintenance_interval * 5)
        last_purge = 0.0
        while True:
            if await self._call(
                "maintenance lock", lambda: backend.try_lock(_MAINTENANCE_LOCK, self.id, ttl)
            ):
                reaped = await self._call("reap", backend.reap_lost)
                if reaped is not None and reaped[0]:
                    log.warning("reaped %d job(s) whose worker was lost", reaped[0])
                    self.counts.reaped(*reaped)
                    self._wake.set()
                    await maintenance.announce(self, backend, [("job.dead", i) for i in reaped[1]])
                if backend.capabilities.external_completion:
                    await maintenance.expire_waiting(self, backend)
                await maintenance.drain_outbox(self, backend)
                await self._call("promote", backend.promote)
                await self._call("periodic", lambda: self._scheduler.run_due(backend))
                if time.monotonic() - last_purge > _PURGE_EVERY:
                    last_purge = time.monotonic()
                    await self._call("purge", backend.purge)
            else:
                self._scheduler.lost_lock()
            await asyncio.sleep(self.maintenance_interval)


async def _wait_all_or(
    tasks: Sequence[asyncio.Task[Any]], stop: asyncio.Future[Any], timeout: float
) -> None:
    """Wait until every task is done, ``stop`` completes, or ``timeout`` passes."""
    all_done = asyncio.ensure_future(asyncio.wait(tasks))
    try:
        await asyncio.wait([all_done, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        all_done.cancel()
