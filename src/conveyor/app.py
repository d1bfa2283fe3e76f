"""The App: tasks register on it, producers enqueue through it, operators query it.

Every operation is written once, async (``*_async``); the sync method is a one-line call
through a private background loop (``Portal``). Each event loop gets its own backend
instance, because connections belong to the loop that opened them.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar, overload

from conveyor import notify
from conveyor.backends import create_backend
from conveyor.backends.base import Backend, Clock, NewJob, QueueStats
from conveyor.config import Defaults, parse_url, resolve_url
from conveyor.external import ExternalMixin
from conveyor.handle import JobHandle
from conveyor.job import Job, JobState, new_job_id, new_job_ids, to_timestamp
from conveyor.portal import Portal
from conveyor.ratelimit import RateLimit
from conveyor.retry import Backoff
from conveyor.sandbox import Sandbox
from conveyor.scheduler import Schedule
from conveyor.serialize import (
    DEFAULT_MAX_PAYLOAD,
    batch_encoder,
    encode_arguments,
    quick_args_json,
)
from conveyor.task import NO_OPTIONS, EnqueueOptions, Signature, Task
from conveyor.workflow import PLAIN_VALUES, check_after, check_unique_for, check_user_args
from conveyor.workflow_app import WorkflowMixin

P = ParamSpec("P")
R = TypeVar("R")

_MAX_NAME = 200


class App(WorkflowMixin, ExternalMixin):
    """One Conveyor application: a storage URL and the tasks that run against it."""

    def __init__(
        self,
        url: str | None = None,
        *,
        queue: str = "default",
        priority: int = 5,
        max_attempts: int = 3,
        result_ttl: float | None = 7 * 86400.0,
        timeout: float | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock: Clock | None = None,
    ) -> None:
        self.url = resolve_url(url)
        parse_url(self.url)  # an invalid URL fails here, not at the first enqueue
        _check_priority(priority)
        _check_attempts(max_attempts)
        self.defaults = Defaults(
            queue=_check_name(queue, "queue"),
            priority=priority,
            max_attempts=max_attempts,
            result_ttl=result_ttl,
            timeout=timeout,
            max_payload=max_payload,
        )
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: ``_plain_call``'s cache of the app's defaults, for tasks enqueued by name only.
        self._by_name = SimpleNamespace(_plain=None)
        #: Periodic jobs by name (``@app.periodic``), enqueued by the workers.
        self.schedules: dict[str, Schedule] = {}
        #: Per-tenant rate limits (``tenant_rate_limit``); ``"*"``: each other tenant.
        self.tenant_rates: dict[str | None, RateLimit] = {}
        self._clock = clock
        self._portal = Portal()
        self._tx: Backend | None = None
        self._blocking: Backend | None = None
        self._no_blocking = False  # the engine has no blocking enqueue
        self._blocking_lock = threading.Lock()
        self._backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Backend] = (
            weakref.WeakKeyDictionary()
        )
        self._opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        #: Listeners (``app.on``) and webhooks; registers the ``conveyor.webhook`` task.
        self.notifier = notify.install(self)
        # Close the sync API's connections at exit rather than abandon them mid-flight
        # with the daemon thread (a weak reference: this must not keep the app alive).
        atexit.register(_close_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        return f"<conveyor.App {self.url} tasks={len(self.tasks)}>"

    # -- tasks -------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        result_ttl: float | None = None,
        sandbox: Sandbox | None = None,
        rate_limit: Any = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        result_ttl: float | None = None,
        sandbox: Sandbox | None = None,
        rate_limit: Any = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a task, bare (``@app.task``) or with options (``@app.task(...)``)."""
        if priority is not None:
            _check_priority(priority)
        if max_attempts is not None:
            _check_attempts(max_attempts)

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            _check_name(task_name, "task name")
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ValueError(f"a task named {task_name!r} is already registered")
            task: Task[P, R] = Task(
                self,
                func,
                name=task_name,
                queue=None if queue is None else _check_name(queue, "queue"),
                priority=priority,
                max_attempts=max_attempts,
                backoff=backoff,
                timeout=timeout,
                concurrency=concurrency,
                result_ttl=result_ttl,
                sandbox=sandbox,
                rate_limit=rate_limit,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def on(self, event: str) -> Callable[[notify.Listener], notify.Listener]:
        """``@app.on("job.succeeded")``: call a function in the worker process when a job
        of this app succeeds (also ``job.retrying``, ``job.dead``, ``job.cancelled``)."""
        return self.notifier.on(event)

    def tenant_rate_limit(self, tenant: str | None, rate: Any) -> None:
        """At most N job starts per period for ``tenant`` (``None``: the default tenant;
        ``"*"``: every tenant without its own limit, each separately), across every
        worker of the store. ``rate`` is ``"100/m"``, ``(100, 60.0)`` or None to remove
        it. Enforced by workers that run this app: configure it where the tasks are."""
        if tenant is not None:
            _check_name(tenant, "tenant")
        if rate is None:
            self.tenant_rates.pop(tenant, None)
        else:
            self.tenant_rates[tenant] = RateLimit.parse(rate)

    def task_caps(self) -> dict[str, int]:
        """Per-task concurrency caps, for the claim."""
        return {n: t.concurrency for n, t in self.tasks.items() if t.concurrency is not None}

    # -- the backend of the running loop -----------------------------------------------
    async def backend(self) -> Backend:
        """The opened backend for the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        backend = self._backends.get(loop)
        if backend is not None:
            return backend
        lock = self._opening.setdefault(loop, asyncio.Lock())
        async with lock:
            backend = self._backends.get(loop)
            if backend is None:
                backend = create_backend(self.url, clock=self._clock)
                await backend.open()
                self._backends[loop] = backend
        return backend

    async def close_async(self) -> None:
        """Close the backend of the running loop."""
        backend = self._backends.pop(asyncio.get_running_loop(), None)
        if backend is not None:
            await backend.close()

    def close(self) -> None:
        """Close the sync API's connections and stop its background loop (idempotent)."""
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            blocking.close_blocking()
        if self._portal.running:
            self._portal.call(self.close_async())
        self._portal.stop()

    # -- producers ---------------------------------------------------------------------
    def enqueue(
        self,
        task: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JobHandle:
        """Enqueue by task name (for producers that do not import the task code).

        Options: ``tenant priority delay at key queue max_attempts timeout result_ttl
        connection``.
        """
        if not options or _no_options(options):
            # The common call: no Signature, straight to the plain row (as task.enqueue).
            return self._enqueue_plain(task, _args(args), kwargs)
        return self._enqueue_signature(_signature(task, args, kwargs, options))

    async def enqueue_async(
        self,
        task: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JobHandle:
        if not options or _no_options(options):
            return await self._enqueue_plain_async(task, _args(args), kwargs)
        return await self._enqueue_signature_async(_signature(task, args, kwargs, options))

    def enqueue_many(
        self, calls: Iterable[Signature | Mapping[str, Any]], *, connection: Any = None
    ) -> list[JobHandle]:
        """Enqueue many jobs in one atomic round trip.

        Each item is ``task.s(...)`` / ``task.options(...).s(...)`` or a mapping with the
        keys of ``App.enqueue``: ``{"task": "name", "args": [...], "kwargs": {...}, ...}``.
        With ``connection=``, all of them join that connection's open transaction.
        """
        new_jobs = self._batch_jobs(calls)
        if connection is not None:
            return self._handles(self._tx_backend().enqueue_in_transaction(connection, new_jobs))
        return self._insert_blocking(new_jobs)

    async def enqueue_many_async(
        self, calls: Iterable[Signature | Mapping[str, Any]], *, connection: Any = None
    ) -> list[JobHandle]:
        new_jobs = self._batch_jobs(calls)
        if connection is not None:
            backend = self._tx_backend()
            return self._handles(await backend.enqueue_in_transaction_async(connection, new_jobs))
        return await self._insert(new_jobs)

    def _enqueue_plain(
        self, task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None
    ) -> JobHandle:
        """``task.enqueue(...)`` without options: no ``Signature`` is built for it."""
        return self._insert_blocking([self._plain_call(task, args, kwargs)])[0]

    async def _enqueue_plain_async(
        self, task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None
    ) -> JobHandle:
        return (await self._insert([self._plain_call(task, args, kwargs)]))[0]

    def _batch_jobs(self, calls: Iterable[Signature | Mapping[str, Any]]) -> list[NewJob]:
        """``enqueue_many``'s items as rows, their ids drawn in one go (in item order, so
        the batch runs FIFO); a plain ``{"task", "args", "kwargs"}`` mapping goes straight
        to ``_plain_call`` (no copy, no ``Signature``).

        The commonest item, ``{"task": name, "args": [...]}`` (a list or tuple, or none)
        of a task met before in the batch, is encoded here without a call per check
        (``quick_args_json``): 0.55 µs less per job, a tenth of an ``enqueue_many`` on
        Redis. Whatever that path does not take as it is (keyword arguments, a first
        argument that is not a plain value, arguments that are not JSON, too deep or
        perhaps too large) goes through ``_plain_call``, which stores it or raises the
        error.
        """
        items = calls if type(calls) is list else list(calls)
        rows = []
        plain = self._plain_call
        encode = batch_encoder()
        seen: dict[str, tuple[Any, ...]] = {}  # task name -> its _plain_defaults
        # Characters that fit at 4 UTF-8 bytes each, with "{}" for the keyword arguments: the
        # size encode_arguments accepts without measuring the UTF-8.
        fits = self.defaults.max_payload // 4 - len("{}")
        for call, job_id in zip(items, new_job_ids(len(items)), strict=True):
            if type(call) is dict and call.keys() <= _PLAIN_ITEM and "task" in call:
                name = call["task"]
                args = call.get("args", ())
                kwargs = call.get("kwargs")
                defaults = seen.get(name) if type(name) is str else None
                if (
                    defaults is not None
                    and (type(args) is list or type(args) is tuple)
                    and (kwargs is None or (type(kwargs) is dict and not kwargs))
                    and (not args or type(args[0]) in PLAIN_VALUES)  # see check_user_args
                ):
                    args_json = quick_args_json(args, encode, fits)
                    if args_json is not None:
                        rows.append(_plain_row(job_id, name, defaults, args_json, "{}"))
                        continue
                if type(args) is not list:  # a list is encoded as it is: no tuple copy
                    args = _args(args)
                rows.append(plain(name, args, kwargs, job_id, encode))
                if defaults is None:
                    seen[name] = self._plain_defaults(name)
            else:
                rows.append(self._new_job(_as_signature(call), job_id, encode))
        return rows

    def _enqueue_signature(self, sig: Signature) -> JobHandle:
        new_job = self._new_job(sig)  # validate in the caller's thread, before any I/O
        if sig.options.connection is not None:
            backend = self._tx_backend()
            return self._handles(backend.enqueue_in_transaction(sig.options.connection, [new_job]))[
                0
            ]
        return self._insert_blocking([new_job])[0]

    async def _enqueue_signature_async(self, sig: Signature) -> JobHandle:
        new_job = self._new_job(sig)
        if sig.options.connection is not None:
            backend = self._tx_backend()
            ids = await backend.enqueue_in_transaction_async(sig.options.connection, [new_job])
            return self._handles(ids)[0]
        return (await self._insert([new_job]))[0]

    async def _insert(self, new_jobs: list[NewJob]) -> list[JobHandle]:
        if not new_jobs:
            return []
        backend = await self.backend()
        return self._handles(await backend.enqueue(new_jobs))

    def _insert_blocking(self, new_jobs: list[NewJob]) -> list[JobHandle]:
        """The sync API's insert: in this thread where the engine can, else via the portal."""
        if not new_jobs:
            return []
        backend = self._blocking or (None if self._no_blocking else self._blocking_backend())
        if backend is None:
            return self._portal.call(self._insert(new_jobs))
        return self._handles(backend.enqueue_blocking(new_jobs))

    def _blocking_backend(self) -> Backend | None:
        with self._blocking_lock:
            if self._blocking is None:
                backend = create_backend(self.url, clock=self._clock)
                if not backend.capabilities.blocking_enqueue:
                    self._no_blocking = True
                    return None
                self._blocking = backend
            return self._blocking

    def _handles(self, ids: Iterable[str]) -> list[JobHandle]:
        return [JobHandle(self, job_id) for job_id in ids]

    def _tx_backend(self) -> Backend:
        """An unopened backend that writes through callers' own connections."""
        if self._tx is None:
            backend = create_backend(self.url, clock=self._clock)
            if not backend.capabilities.transactional_enqueue:
                raise ValueError(
                    f"connection= needs a store that can enqueue inside your transaction "
                    f"(PostgreSQL); this app uses {self.url.split(':', 1)[0]}"
                )
            self._tx = backend
        return self._tx

    def _new_job(
        self,
        sig: Signature,
        job_id: str | None = None,
        encode: Callable[[Any], str] | None = None,
    ) -> NewJob:
        """Validate a call and turn it into a row; every bad input fails here, early.
        The job's id is the signature's own, else ``job_id``, else a new one; ``encode``
        is a batch's JSON encoder (``batch_encoder``)."""
        job_id = sig.job_id or job_id
        if sig.options is NO_OPTIONS and sig.inputs is None:
            return self._plain_call(sig.task, sig.args, sig.kwargs, job_id, encode)
        _check_name(sig.task, "task name")
        task = self.tasks.get(sig.task)
        opt = sig.options
        d = self.defaults
        priority = _first(opt.priority, task and task.priority, d.priority)
        _check_priority(priority)
        max_attempts = _first(opt.max_attempts, task and task.max_attempts, d.max_attempts)
        _check_attempts(max_attempts)
        if opt.delay is not None and opt.at is not None:
            raise ValueError("give either delay= or at=, not both")
        delay = None if opt.delay is None else _check_delay(opt.delay)
        run_at = None if opt.at is None else _check_at(opt.at)
        tenant = opt.tenant
        if tenant is not None:
            tenant = _check_name(tenant, "tenant") if tenant != "" else None
        if opt.key is not None:
            _check_name(opt.key, "key", max_len=1000)
        unique_for = check_unique_for(opt.unique_for, opt.key)
        after, after_policy = check_after(opt.after, opt.after_policy)
        timeout = _first(opt.timeout, task and task.timeout, d.timeout)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        check_user_args(sig.args)
        args = sig.args if sig.inputs is None else (dict(sig.inputs), *sig.args)
        args_json, kwargs_json = encode_arguments(
            args, dict(sig.kwargs), max_payload=d.max_payload, encode=encode
        )
        return NewJob(
            id=job_id or new_job_id(),
            task=sig.task,
            queue=_check_name(_first(opt.queue, task and task.queue, d.queue), "queue"),
            tenant=tenant,
            priority=priority,
            args_json=args_json,
            kwargs_json=kwargs_json,
            max_attempts=max_attempts,
            delay=delay,
            run_at=run_at,
            timeout=timeout,
            result_ttl=_first(opt.result_ttl, task and task.result_ttl, d.result_ttl),
            key=opt.key,
            unique_for=unique_for,
            after=after,
            after_policy=after_policy,
        )

    def _plain_call(
        self,
        name: str,
        args: Sequence[Any],  # a tuple, or a batch item's own list
        kwargs: Mapping[str, Any] | None,
        job_id: str | None = None,
        encode: Callable[[Any], str] | None = None,
    ) -> NewJob:
        """``_new_job`` for the most common call: no options (``task.enqueue(...)``,
        ``app.enqueue("name", ...)``, a plain ``task.s(...)`` or mapping in a batch).

        The same checks and results as the general path, with the defaults validated
        once (``_plain_defaults``) instead of once per call, and no ``Signature`` built
        for the call: half the client time of a single enqueue.
        """
        plain = self._plain_defaults(name)
        if args:
            check_user_args(args)
        args_json, kwargs_json = encode_arguments(
            args,
            {} if kwargs is None else kwargs if type(kwargs) is dict else dict(kwargs),
            max_payload=self.defaults.max_payload,
            encode=encode,
        )
        return _plain_row(job_id or new_job_id(), name, plain, args_json, kwargs_json)

    def _plain_defaults(self, name: str) -> tuple[Any, ...]:
        """The checked defaults of a call of ``name`` without options: (the app's
        defaults they were taken from, queue, priority, max_attempts, timeout,
        result_ttl). Kept in ``holder._plain`` (the task, or ``self._by_name`` for a task
        this process does not import) until the app's defaults change."""
        task = self.tasks.get(name)
        holder: Any = task
        if task is None:
            # A task this process does not import (enqueue by name): the app's defaults.
            _check_name(name, "task name")
            holder = self._by_name
        plain: tuple[Any, ...] | None = holder._plain
        if plain is None or plain[0] is not self.defaults:
            d = self.defaults
            priority = _first(task and task.priority, d.priority)
            _check_priority(priority)
            max_attempts = _first(task and task.max_attempts, d.max_attempts)
            _check_attempts(max_attempts)
            timeout = _first(task and task.timeout, d.timeout)
            if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
                raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
            queue = _check_name(_first(task and task.queue, d.queue), "queue")
            plain = (
                d,
                queue,
                priority,
                max_attempts,
                timeout,
                _first(task and task.result_ttl, d.result_ttl),
            )
            holder._plain = plain
        return plain

    # -- operators ---------------------------------------------------------------------
    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, job_id)

    def cancel(self, job_id: str) -> JobState | None:
        """Cancel a job. Returns its state afterwards: ``cancelled``; ``running`` when a
        cancel was requested of a running job (its worker stops it at the next check); the
        final state of a job that already finished; None for an unknown id."""
        return self._portal.call(self.cancel_async(job_id))

    async def cancel_async(self, job_id: str) -> JobState | None:
        return await (await self.backend()).cancel(job_id)

    def replay(self, job_id: str) -> bool:
        """Put a ``dead`` (or ``cancelled``) job back in its queue with fresh attempts."""
        return self._portal.call(self.replay_async(job_id))

    async def replay_async(self, job_id: str) -> bool:
        return await (await self.backend()).replay(job_id)

    def jobs(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        return self._portal.call(self.jobs_async(state, queue, tenant, task, limit))

    async def jobs_async(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        job_state = None if state is None else _parse_state(state)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        backend = await self.backend()
        return await backend.query(
            state=job_state, queue=queue, tenant=tenant, task=task, limit=limit
        )

    def set_tenant(
        self,
        tenant: str | None,
        queue: str = "default",
        weight: float = 1.0,
        max_running: int | None = None,
    ) -> None:
        """Give a tenant a share ``weight`` (relative) and a cap on running jobs in a queue."""
        self._portal.call(self.set_tenant_async(tenant, queue, weight, max_running))

    async def set_tenant_async(
        self,
        tenant: str | None,
        queue: str = "default",
        weight: float = 1.0,
        max_running: int | None = None,
    ) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError("weight must be a number")
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        if max_running is not None and (
            isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 0
        ):
            raise ValueError(f"max_running must be an integer >= 0 or None, got {max_running!r}")
        tenant = None if tenant in (None, "") else _check_name(tenant, "tenant")
        backend = await self.backend()
        await backend.set_tenant(
            _check_name(queue, "queue"), tenant, weight=float(weight), max_running=max_running
        )

    def set_queue(self, queue: str, aging: float | None = None) -> None:
        """Queue settings. ``aging``: a ready job gains one priority level per ``aging`` s."""
        self._portal.call(self.set_queue_async(queue, aging))

    async def set_queue_async(self, queue: str, aging: float | None = None) -> None:
        if aging is not None and (not isinstance(aging, (int, float)) or aging <= 0):
            raise ValueError(f"aging must be > 0 seconds or None, got {aging!r}")
        backend = await self.backend()
        await backend.set_queue(_check_name(queue, "queue"), aging=aging)

    def stats(self) -> list[QueueStats]:
        return self._portal.call(self.stats_async())

    async def stats_async(self) -> list[QueueStats]:
        return await (await self.backend()).stats()


def _close_at_exit(ref: weakref.ref[App]) -> None:
    app = ref()
    if app is not None:
        app.close()


# -- validation helpers -----------------------------------------------------------------
def _first(*values: Any) -> Any:
    """The first value that is not None (a per-call option, the task's, the app's)."""
    for value in values:
        if value is not None:
            return value
    return None


def _check_name(value: Any, what: str, max_len: int = _MAX_NAME) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{what} is longer than {max_len} characters")
    return value


def _check_priority(priority: Any) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ValueError(f"priority must be an integer from 0 (most urgent) to 9, got {priority!r}")


def _check_attempts(max_attempts: Any) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")


def _check_delay(delay: Any) -> float:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay):
        raise ValueError(f"delay must be a number of seconds, got {delay!r}")
    if delay < 0:
        raise ValueError(f"delay must be >= 0 seconds, got {delay}")
    return float(delay)


def _check_at(at: Any) -> float:
    if not isinstance(at, datetime):
        raise TypeError(f"at= must be a datetime, got {type(at).__name__}")
    return to_timestamp(at)


def _parse_state(state: JobState | str) -> JobState:
    if isinstance(state, JobState):
        return state
    try:
        return JobState(state)
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise ValueError(f"unknown job state {state!r}; states: {names}") from None


def _args(args: Iterable[Any]) -> tuple[Any, ...]:
    if type(args) is tuple:
        return args
    if type(args) is list:  # spares the Mapping check below (an ABC: slow) per job
        return tuple(args)
    if isinstance(args, (str, bytes, Mapping)):
        raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
    return tuple(args)


def _signature(
    task: str, args: Iterable[Any], kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]
) -> Signature:
    return Signature(task, _args(args), {} if kwargs is None else kwargs, _options(options))


#: The keys of an ``enqueue_many`` mapping that sets no option.
_PLAIN_ITEM = frozenset({"task", "args", "kwargs"})


def _plain_row(
    job_id: str, name: str, plain: tuple[Any, ...], args_json: str, kwargs_json: str
) -> NewJob:
    """The row of a call without options, from its ``_plain_defaults``. Positional:
    keywords cost NewJob's __init__ 0.3 µs more per job (a sixth of a batch job's client
    time). The order is NewJob's, fields id to result_ttl
    (test_plain_call_builds_the_same_row_as_the_general_path)."""
    _, queue, priority, max_attempts, timeout, result_ttl = plain
    return NewJob(
        job_id,
        name,
        queue,
        None,  # tenant
        priority,
        args_json,
        kwargs_json,
        max_attempts,
        None,  # delay
        None,  # run_at
        timeout,
        result_ttl,
    )


#: The names ``App.enqueue`` takes as options (``EnqueueOptions`` fields).
_OPTION_NAMES = frozenset(EnqueueOptions.__dataclass_fields__)


def _no_options(options: Mapping[str, Any]) -> bool:
    """True when every option is None under a known name: "the defaults". A call that
    names options only to pass None (``tenant=None``, common in producers) takes the
    plain path; building an ``EnqueueOptions`` for it cost more than the rest of the
    call's client work."""
    for value in options.values():
        if value is not None:
            return False
    return options.keys() <= _OPTION_NAMES  # an unknown name: the general path refuses it


def _options(options: Mapping[str, Any]) -> EnqueueOptions:
    if not options or _no_options(options):
        return NO_OPTIONS
    return EnqueueOptions().merged(**options)  # unknown names fail here


def _as_signature(call: Signature | Mapping[str, Any]) -> Signature:
    if isinstance(call, Signature):
        return call
    if isinstance(call, Mapping):
        fields = dict(call)
        if "task" not in fields:
            raise ValueError(f"enqueue_many item {call!r} has no 'task'")
        task = fields.pop("task")
        args = fields.pop("args", ())
        kwargs = fields.pop("kwargs", None)
        return _signature(task, args, kwargs, fields)
    raise TypeError(
        f"enqueue_many takes task.s(...) signatures or mappings, not {type(call).__name__}"
    )
