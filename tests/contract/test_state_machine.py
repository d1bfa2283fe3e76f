"""Property-based test of the job state machine, driven through the backend protocol.

Hypothesis runs random sequences of enqueue (some with dependencies on earlier jobs) /
claim / heartbeat / finish (with current and stale lease tokens) / rate-limited starts /
clock jumps / reap / promote / cancel / replay, and after every step checks that:

* every state change a job went through is a legal transition (``conveyor.job.TRANSITIONS``,
  plus the two a claim makes in one go when it promotes a due job and takes it);
* ``attempt <= max_attempts`` always;
* at most one lease per job is valid: a write with any token but the latest is rejected,
  and a running job always has a lease while a job in any other state has none;
* a blocked job waits for at least one dependency that has not finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conveyor.backends import create_backend
from conveyor.backends.base import Lease, NewJob, Outcome, OutcomeKind, RateBucket
from conveyor.job import TRANSITIONS, JobState, new_job_id
from tests.contract.conftest import ENGINES, fresh_store

S = JobState
# A claim promotes due jobs and claims them in one transaction.
CLAIM_SHORTCUTS = {(S.SCHEDULED, S.RUNNING), (S.RETRYING, S.RUNNING)}
LEASE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class JobStateMachine(RuleBasedStateMachine):
    engine = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        tmp = self.stack.enter_context(tempfile.TemporaryDirectory())
        url = self.stack.enter_context(fresh_store(self.engine, Path(tmp)))
        self.clock = Clock()
        self.loop = asyncio.new_event_loop()
        self.backend = create_backend(url, clock=self.clock)
        self.run(self.backend.open())
        self.states: dict[str, JobState] = {}
        self.tokens: dict[str, list[str]] = {}  # every token ever issued, latest last
        self.deps: dict[str, tuple[str, ...]] = {}  # job -> the jobs it was enqueued after
        self.last_op = "init"

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.backend.close())
        self.loop.close()
        self.stack.close()

    # -- operations ----------------------------------------------------------------------
    @rule(
        count=st.integers(1, 3),
        delay=st.sampled_from([None, 0.0, 5.0, 50.0]),
        max_attempts=st.integers(1, 3),
        tenant=st.sampled_from([None, "a", "b"]),
        priority=st.integers(0, 9),
        data=st.data(),
        policy=st.sampled_from(["success", "always"]),
    )
    def enqueue(
        self,
        count: int,
        delay: float | None,
        max_attempts: int,
        tenant: str | None,
        priority: int,
        data: st.DataObject,
        policy: str,
    ) -> None:
        known = sorted(self.states)
        after: tuple[str, ...] = ()
        if known:
            after = tuple(data.draw(st.lists(st.sampled_from(known), max_size=2, unique=True)))
        jobs = [
            NewJob(
                id=new_job_id(),
                task="t",
                queue="q",
                tenant=tenant,
                priority=priority,
                args_json="[]",
                kwargs_json="{}",
                max_attempts=max_attempts,
                delay=delay,
                after=after,
                after_policy=policy,
            )
            for _ in range(count)
        ]
        self.last_op = "enqueue"
        ids = self.run(self.backend.enqueue(jobs))
        assert ids == [j.id for j in jobs]
        for job in jobs:
            self.deps[job.id] = after

    @precondition(lambda self: bool(self.tokens))
    @rule(data=st.data(), stale=st.booleans())
    def take_rate(self, data: st.DataObject, stale: bool) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.tokens)))
        tokens = self.tokens[job_id]
        token = tokens[0] if stale and len(tokens) > 1 else tokens[-1]
        self.last_op = "take_rate"
        bucket = RateBucket("task:t", 1, 5.0)
        self.run(self.backend.take_rate(Lease(job_id, token), [bucket]))

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        self.last_op = "claim"
        claimed = self.run(self.backend.claim(["q"], limit, worker="w", lease=LEASE))
        assert len(claimed) <= limit
        for job in claimed:
            assert job.attempt <= job.max_attempts
            assert job.lease_token not in self.tokens.get(job.id, []), "token reused"
            self.tokens.setdefault(job.id, []).append(job.lease_token)

    @precondition(lambda self: bool(self.tokens))
    @rule(
        data=st.data(),
        kind=st.sampled_from(list(OutcomeKind)),
        stale=st.booleans(),
        retry_delay=st.sampled_from([0.0, 5.0]),
    )
    def finish(
        self, data: st.DataObject, kind: OutcomeKind, stale: bool, retry_delay: float
    ) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.tokens)))
        tokens = self.tokens[job_id]
        token = tokens[0] if stale and len(tokens) > 1 else tokens[-1]
        before = self._snapshot()[job_id]
        error = '{"attempt":1,"type":"E","message":"m","traceback":null,"at":0}'
        outcome = Outcome(
            job_id,
            token,
            kind,
            result_json="1" if kind is OutcomeKind.SUCCEEDED else None,
            error_json=error if kind in (OutcomeKind.RETRY, OutcomeKind.DEAD) else None,
            retry_delay=retry_delay,
        )
        self.last_op = "finish"
        (accepted,) = self.run(self.backend.finish([outcome]))
        holds = before.state is S.RUNNING and token == tokens[-1]
        assert accepted == holds, f"finish with {'a stale' if stale else 'the'} token: {accepted}"

    @precondition(lambda self: bool(self.tokens))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.tokens)))
        tokens = self.tokens[job_id]
        before = self._snapshot()[job_id]
        self.last_op = "heartbeat"
        # At most one valid lease: the latest token holds exactly while the job runs,
        # and every earlier token is lost.
        reply = self.run(self.backend.heartbeat([Lease(job_id, tokens[-1])], lease=LEASE))
        assert (job_id in reply.lost) == (before.state is not S.RUNNING)
        for stale in tokens[:-1]:
            single = self.run(self.backend.heartbeat([Lease(job_id, stale)], lease=LEASE))
            assert job_id in single.lost

    @rule(seconds=st.sampled_from([1.0, 6.0, 11.0, 60.0]))
    def advance(self, seconds: float) -> None:
        self.last_op = "advance"
        self.clock.now += seconds

    @rule()
    def reap(self) -> None:
        self.last_op = "reap"
        self.run(self.backend.reap())

    @rule()
    def promote(self) -> None:
        self.last_op = "promote"
        self.run(self.backend.promote())

    @precondition(lambda self: bool(self.states))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.states)))
        self.last_op = "cancel"
        self.run(self.backend.cancel(job_id))

    @precondition(lambda self: bool(self.states))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.states)))
        before = self.states[job_id]
        self.last_op = "replay"
        ok = self.run(self.backend.replay(job_id))
        assert ok == (before in (S.DEAD, S.CANCELLED))

    # -- invariants ----------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        jobs = self.run(self.backend.query(limit=10_000))
        return {j.id: j for j in jobs}

    @invariant()
    def transitions_are_legal(self) -> None:
        now = self._snapshot()
        for job_id, job in now.items():
            assert job.attempt <= job.max_attempts, job
            assert (job.state is S.RUNNING) == (job.lease_expires_at is not None), job
            old = self.states.get(job_id)
            if old is None or old is job.state:
                continue
            allowed = (old, job.state) in TRANSITIONS or (
                self.last_op == "claim" and (old, job.state) in CLAIM_SHORTCUTS
            )
            assert allowed, f"{self.last_op}: illegal {old.value} -> {job.state.value}"
        assert set(self.states) <= set(now), "a job disappeared"
        self.states = {job_id: job.state for job_id, job in now.items()}
        for job_id, job in now.items():
            if job.state is S.BLOCKED:
                waiting = [d for d in self.deps[job_id] if not now[d].state.is_final]
                assert waiting, f"{self.last_op}: {job_id} blocked with every dependency done"


_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# One test case per engine in the conformance suite.
for _engine in ENGINES:
    _machine = type(f"JobStateMachine_{_engine}", (JobStateMachine,), {"engine": _engine})
    _machine.TestCase.settings = _SETTINGS
    globals()[f"TestJobStateMachine_{_engine}"] = _machine.TestCase
