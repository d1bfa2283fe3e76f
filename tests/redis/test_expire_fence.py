"""Redis expires overdue waiting jobs in two scripts (list, then expire with the delays
the caller chose): a completion that lands between the two wins."""

from __future__ import annotations

from conveyor.backends import create_backend
from conveyor.backends.base import ExternalReply, NewJob, Outcome, OutcomeKind
from conveyor.job import JobState, new_job_id
from tests.contract.conftest import FakeClock


async def test_a_completion_between_list_and_expire_wins(store_url: str) -> None:
    clock = FakeClock()
    backend = create_backend(store_url, clock=clock)
    await backend.open()
    try:
        job = NewJob(
            id=new_job_id(),
            task="t",
            queue="default",
            tenant=None,
            priority=5,
            args_json="[]",
            kwargs_json="{}",
            max_attempts=3,
        )
        await backend.enqueue([job])
        (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30.0)
        park = Outcome(job.id, claimed.lease_token, OutcomeKind.PARKED, retry_delay=30.0)
        assert await backend.finish([park]) == [True]
        clock.advance(30.0)

        asked: list[tuple[str, int]] = []

        def delay(task: str, attempt: int) -> float:
            asked.append((task, attempt))
            return 5.0

        keys = backend.keys  # type: ignore[attr-defined]
        scripts = backend._s  # type: ignore[attr-defined]
        now = repr(clock.now)
        listed = await scripts.expire(
            keys=[keys.route], args=[now, keys.store, "list", keys.queue("default")]
        )
        assert [str(v) for v in listed[1:]] == [job.id, "t", "1"]
        # The service answers between the two scripts (at a time still in time).
        clock.now -= 1.0
        done = Outcome(job.id, claimed.lease_token, OutcomeKind.SUCCEEDED, result_json="1")
        assert await backend.complete_external(done) is ExternalReply.APPLIED
        clock.now += 1.0
        args = [now, keys.store, "expire", str(listed[0]), job.id, "1", "5.0"]
        assert await scripts.expire(keys=[keys.route], args=args) == []
        assert await backend.expire_waiting(delay) == []
        assert asked == []  # nothing overdue is left to ask about
        info = await backend.get(job.id)
        assert info is not None and info.state is JobState.SUCCEEDED
    finally:
        await backend.close()
