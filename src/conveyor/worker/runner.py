"""Running one attempt of one job, and turning how it ended into an ``Outcome``."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from conveyor.backends.base import Backend, ClaimedJob, Lease, Outcome, OutcomeKind
from conveyor.context import JobContext, _current
from conveyor.ratelimit import buckets_for
from conveyor.retry import Await, Fail, Retry
from conveyor.sandbox import SANDBOX_LIMIT_ERROR
from conveyor.serialize import dumps, loads
from conveyor.task import Task
from conveyor.worker.sandbox import SandboxEnd, run_in_sandbox
from conveyor.workflow import MissingResult, is_marker, resolve_inputs


class _TimedOut(Exception):
    """The attempt ran past the job's timeout (as opposed to the task raising TimeoutError)."""


def error_json(job: ClaimedJob, type_: str, message: str, tb: str | None = None) -> str:
    return dumps(
        {
            "attempt": job.attempt,
            "type": type_,
            "message": message,
            "traceback": tb,
            "at": time.time(),
        }
    )


def dead(job: ClaimedJob, type_: str, message: str, tb: str | None = None) -> Outcome:
    return Outcome(
        job.id, job.lease_token, OutcomeKind.DEAD, error_json=error_json(job, type_, message, tb)
    )


def failed(
    job: ClaimedJob,
    task: Task[Any, Any] | None,
    type_: str,
    message: str,
    tb: str | None = None,
    delay: float | None = None,
) -> Outcome:
    """A failed attempt: retry with backoff while attempts are left, else dead."""
    if job.attempt >= job.max_attempts:
        note = f" (attempt {job.attempt} of {job.max_attempts}, no attempts left)"
        return dead(job, type_, message + note, tb)
    if delay is None:
        delay = task.backoff.delay(job.attempt) if task is not None else 0.0
    return Outcome(
        job.id,
        job.lease_token,
        OutcomeKind.RETRY,
        error_json=error_json(job, type_, message, tb),
        retry_delay=delay,
    )


def _exc_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _format_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


async def run_attempt(
    task: Task[Any, Any] | None,
    job: ClaimedJob,
    ctx: JobContext | None,
    executor: Executor,
    on_stuck: Callable[[], None],
    backend: Backend | None = None,
) -> Outcome | None:
    """Run the job's task once; every way it can end becomes an Outcome (None: over its
    rate limit, the store put the job back to wait for its slot; nothing to report).

    ``asyncio.CancelledError`` is the one thing that escapes: the worker cancelled the
    attempt (cancel request, lost lease, shutdown) and decides the outcome itself.
    """
    if task is None or ctx is None:
        return dead(job, "UnknownTask", f"unknown task {job.task!r}")
    try:
        args = _decode(job.args_json)
        kwargs = _decode(job.kwargs_json)
    except ValueError as exc:
        # Not JSON, or nested too deep (serialize.TooDeep): only a record written around
        # the API can hold it; it must be dead-lettered, not crash (and so loop) the worker.
        return dead(job, "InvalidPayload", f"stored arguments are not valid JSON: {exc}")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return dead(job, "InvalidPayload", "stored arguments must be a JSON list and object")
    if backend is not None and (task.rate_limit is not None or task.app.tenant_rates):
        buckets = buckets_for(job.task, task.rate_limit, job.tenant, task.app.tenant_rates)
        if buckets and await backend.take_rate(Lease(job.id, job.lease_token), buckets) > 0:
            return None
    if backend is not None and args and is_marker(args[0]):
        # A chain step or merge job: its first argument names the results it gets.
        try:
            args, kwargs = await resolve_inputs(backend, args, kwargs)
        except MissingResult as exc:
            return dead(job, "MissingResult", str(exc))
        except Exception as exc:  # the store is briefly unreachable: try again later
            return failed(job, task, _exc_type(exc), f"reading dependency results: {exc}")
    if task.sandbox is not None:
        end = await run_in_sandbox(task, ctx, args, kwargs, job.timeout)
        return _sandbox_outcome(job, task, end)

    token = _current.set(ctx)
    # One timeout scope for both kinds (not asyncio.wait_for, which on Python 3.11 can
    # swallow the worker's own cancellation of the attempt); none without a timeout.
    scope = None if job.timeout is None else asyncio.timeout(job.timeout)
    try:
        try:
            if scope is None:
                if task.is_async:  # one coroutine fewer per job than through _call
                    result = await task.fn(*args, **kwargs)
                else:
                    result = await _call(task, args, kwargs, executor)
            else:
                async with scope:
                    result = await _call(task, args, kwargs, executor)
        except TimeoutError:
            if scope is None or not scope.expired():  # the task raised TimeoutError itself
                raise
            if not task.is_async:
                on_stuck()  # its thread runs on; the worker decides what to do
            raise _TimedOut from None
    except _TimedOut:
        return failed(job, task, "TimeoutError", f"timed out after {job.timeout:g} s")
    except Retry as exc:
        return failed(job, task, "Retry", exc.reason, None, delay=exc.delay)
    except Await as exc:
        if backend is not None and not backend.capabilities.external_completion:
            return dead(
                job, "Await", f"{type(backend).__name__} does not support external completion"
            )
        return Outcome(job.id, job.lease_token, OutcomeKind.PARKED, retry_delay=exc.deadline)
    except Fail as exc:
        return dead(job, "Fail", exc.reason)
    except (Exception, SystemExit) as exc:  # a sync task's sys.exit() is its own failure
        return failed(job, task, _exc_type(exc), str(exc), _format_tb(exc))
    finally:
        _current.reset(token)

    try:
        result_json = "null" if result is None else dumps(result, what="result")
    except TypeError as exc:
        return failed(job, task, "TypeError", str(exc))
    return Outcome(job.id, job.lease_token, OutcomeKind.SUCCEEDED, result_json=result_json)


def _decode(text: str) -> Any:
    # Most jobs have no args or no kwargs: spare the decoder the two commonest texts.
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return loads(text)


async def _call(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any], executor: Executor
) -> Any:
    if task.is_async:
        return await task.fn(*args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, task.fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _sandbox_outcome(job: ClaimedJob, task: Task[Any, Any], end: SandboxEnd) -> Outcome:
    """The same policy as in-process attempts, plus broken limits: ``dead`` unless the
    task's ``Sandbox(retry_on_limit=True)`` (running it again would break it again)."""
    if end.kind == "result":
        return Outcome(job.id, job.lease_token, OutcomeKind.SUCCEEDED, result_json=end.result_json)
    if end.kind == "limit":
        assert task.sandbox is not None
        if task.sandbox.retry_on_limit:
            return failed(job, task, SANDBOX_LIMIT_ERROR, end.message)
        return dead(job, SANDBOX_LIMIT_ERROR, end.message)
    if end.kind == "retry":
        return failed(job, task, "Retry", end.message, None, delay=end.delay)
    if end.kind == "fail":
        return dead(job, end.type, end.message)
    if end.kind == "timeout":
        return failed(job, task, "TimeoutError", end.message)
    return failed(job, task, end.type, end.message, end.traceback)
