"""Tasks: named functions registered on an App, and how a call to one is enqueued."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor.ratelimit import RateLimit
from conveyor.retry import Backoff
from conveyor.sandbox import Sandbox

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.handle import JobHandle

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-call options; ``None`` means "use the task's (or the app's) default"."""

    tenant: str | None = None
    priority: int | None = None
    delay: float | None = None
    at: datetime | None = None
    key: str | None = None
    queue: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    result_ttl: float | None = None
    #: Seconds the dedup ``key`` stays reserved from enqueue on, even after the job ended.
    unique_for: float | None = None
    #: Jobs (handles or ids) that must finish first; the job is ``blocked`` until then.
    after: Any = None
    #: ``"success"`` (default): cancelled if a dependency ends dead/cancelled;
    #: ``"always"``: runs once every dependency finished, however it ended.
    after_policy: str | None = None
    #: The caller's own database connection: enqueue inside its open transaction, so
    #: the job exists if and only if that transaction commits (PostgreSQL).
    connection: Any = None

    def merged(self, **changes: Any) -> EnqueueOptions:
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            allowed = ", ".join(sorted(self.__dataclass_fields__))
            raise TypeError(f"unknown option(s) {sorted(unknown)}; allowed: {allowed}")
        return replace(self, **changes)


#: The options of a call that sets none: ``App._new_job`` takes a fast path for it.
NO_OPTIONS = EnqueueOptions()


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call not yet enqueued: ``add.s(1, 2)``; pass many to ``app.enqueue_many``."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: EnqueueOptions = NO_OPTIONS
    #: Set by workflows: a placeholder for dependencies' results, prepended to ``args``
    #: (see ``conveyor.workflow``), and the job's id chosen in advance so that later
    #: jobs of the same atomic enqueue can name it in ``after=``.
    inputs: Mapping[str, Any] | None = field(default=None, repr=False)
    job_id: str | None = field(default=None, repr=False)
    #: The app whose task made this signature (lets ``conveyor.chain`` find it).
    app: Any = field(default=None, compare=False, repr=False)


#: Task attributes that decide a job's queue and defaults (see ``App._plain_call``).
_JOB_DEFAULTS = frozenset({"queue", "priority", "max_attempts", "timeout", "result_ttl"})


class Task(Generic[P, R]):
    """A function registered with ``@app.task``. Calling it runs it here and now."""

    #: The validated defaults of a call without options, with the app defaults they were
    #: derived from; computed by ``App._new_job`` on first use, reset when one of the
    #: attributes it depends on is assigned.
    _plain: tuple[Any, ...] | None = None

    def __init__(
        self,
        app: App,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str | None,
        priority: int | None,
        max_attempts: int | None,
        backoff: Backoff | None,
        timeout: float | None,
        concurrency: int | None,
        result_ttl: float | None,
        sandbox: Sandbox | None = None,
        rate_limit: Any = None,
    ) -> None:
        if sandbox is not None and not isinstance(sandbox, Sandbox):
            raise TypeError(f"task {name!r}: sandbox must be a conveyor.Sandbox")
        if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
            raise ValueError(f"task {name!r}: concurrency must be an integer >= 1")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"task {name!r}: timeout must be > 0 seconds")
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self.concurrency = concurrency
        self.result_ttl = result_ttl
        #: Run each attempt in a limited child process (``conveyor.Sandbox``).
        self.sandbox = sandbox
        #: At most N starts per period, across every worker (``"10/s"``, ``(10, 1.0)``).
        self.rate_limit = None if rate_limit is None else RateLimit.parse(rate_limit)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _JOB_DEFAULTS:
            object.__setattr__(self, "_plain", None)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def options(self, **options: Any) -> BoundTask[P, R]:
        """Per-call options: ``tenant priority delay at key unique_for queue max_attempts
        timeout result_ttl after after_policy connection``."""
        return BoundTask(self, EnqueueOptions().merged(**options))

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        return Signature(self.name, tuple(args), dict(kwargs), app=self.app)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return self.app._enqueue_plain(self.name, args, kwargs)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return await self.app._enqueue_plain_async(self.name, args, kwargs)


class BoundTask(Generic[P, R]):
    """A task with per-call options, from ``task.options(...)``."""

    def __init__(self, task: Task[P, R], options: EnqueueOptions) -> None:
        self.task = task
        self._options = options

    def options(self, **options: Any) -> BoundTask[P, R]:
        return BoundTask(self.task, self._options.merged(**options))

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        return Signature(
            self.task.name, tuple(args), dict(kwargs), self._options, app=self.task.app
        )

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return self.task.app._enqueue_signature(self.s(*args, **kwargs))

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return await self.task.app._enqueue_signature_async(self.s(*args, **kwargs))
