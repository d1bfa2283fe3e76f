"""The App's workflow methods: batches (``map``/``group``) and periodic jobs.

A mixin, so that ``app.py`` stays about enqueueing and operating single jobs; the
logic itself lives in ``conveyor.batch``, ``conveyor.workflow`` and
``conveyor.scheduler``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from conveyor import batch as _batch
from conveyor.batch import Batch
from conveyor.scheduler import Schedule, periodic_decorator
from conveyor.task import EnqueueOptions, Signature

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.handle import JobHandle
    from conveyor.portal import Portal


class WorkflowMixin:
    if TYPE_CHECKING:
        schedules: dict[str, Schedule]
        _portal: Portal

        def enqueue_many(
            self, calls: Iterable[Signature | Mapping[str, Any]], *, connection: Any = None
        ) -> list[JobHandle]: ...

        async def enqueue_many_async(
            self, calls: Iterable[Signature | Mapping[str, Any]], *, connection: Any = None
        ) -> list[JobHandle]: ...

    # -- workflows (see conveyor.batch and conveyor.workflow) ---------------------------
    def map(
        self,
        task: Any,
        items: Iterable[Any],
        *,
        chunk_size: int = 1,
        then: Any = None,
        allow_failures: bool = False,
        **options: Any,
    ) -> Batch:
        """One job of ``task(chunk)`` per ``chunk_size`` items, and optionally a merge job
        ``then(results)`` that runs once, after all of them, with their results in input
        order. Options (``tenant``, ``priority``, ``queue``, ...) apply to the chunk jobs;
        ``tenant`` and ``priority`` to the merge job too. Enqueued atomically."""
        chunks = _batch.chunk_signatures(task, items, chunk_size, options)
        return self.group(chunks, then=then, allow_failures=allow_failures, **options)

    async def map_async(
        self,
        task: Any,
        items: Iterable[Any],
        *,
        chunk_size: int = 1,
        then: Any = None,
        allow_failures: bool = False,
        **options: Any,
    ) -> Batch:
        chunks = _batch.chunk_signatures(task, items, chunk_size, options)
        return await self.group_async(chunks, then=then, allow_failures=allow_failures, **options)

    def group(
        self,
        calls: Iterable[Signature],
        *,
        then: Any = None,
        allow_failures: bool = False,
        **options: Any,
    ) -> Batch:
        """Different jobs (``task.s(...)``) in parallel, with an optional merge job."""
        planned, has_merge = _batch.plan(list(calls), then, allow_failures, options)
        handles = self.enqueue_many(planned)
        return _batch.batch_from(_app(self), handles, has_merge, allow_failures)

    async def group_async(
        self,
        calls: Iterable[Signature],
        *,
        then: Any = None,
        allow_failures: bool = False,
        **options: Any,
    ) -> Batch:
        planned, has_merge = _batch.plan(list(calls), then, allow_failures, options)
        handles = await self.enqueue_many_async(planned)
        return _batch.batch_from(_app(self), handles, has_merge, allow_failures)

    def batch(self, batch_id: str) -> Batch:
        """The batch whose merge job has this id (a batch's ``id``)."""
        return self._portal.call(_batch.find_batch(_app(self), batch_id))

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: timedelta | None = None,
        tz: str = "UTC",
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        missed: str = "once",
        **options: Any,
    ) -> Callable[[Callable[..., Any]], Any]:
        """Register a task that workers enqueue on a schedule: a cron expression (five
        fields, or six with seconds first) in time zone ``tz``, or ``every=timedelta``.
        Each tick is enqueued exactly once however many workers run; ``missed`` says what
        happens to ticks missed while no worker ran: ``"once"`` (the latest runs once)
        or ``"skip"``. Other options (``queue priority tenant ...``) apply to each job."""
        reserved = {"key", "unique_for", "after", "after_policy", "connection"} & set(options)
        if reserved:
            raise ValueError(f"periodic jobs set {sorted(reserved)} themselves")
        EnqueueOptions().merged(**options)  # unknown option names fail here
        return periodic_decorator(
            _app(self),
            cron,
            every=every,
            tz=tz,
            name=name,
            args=tuple(args),
            kwargs=kwargs,
            missed=missed,
            options=options,
        )

    def add_schedule(self, schedule: Schedule) -> None:
        if schedule.name in self.schedules and self.schedules[schedule.name] != schedule:
            raise ValueError(f"a periodic job named {schedule.name!r} is already registered")
        self.schedules[schedule.name] = schedule


def _app(mixin: WorkflowMixin) -> App:
    return cast("App", mixin)
