"""The job record and its states. Records are plain frozen data: no I/O here."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """Where a job is in its life. Transitions are listed in ``docs/state-machine.md``."""

    SCHEDULED = "scheduled"  # waiting for run_at (delay= / at=)
    QUEUED = "queued"  # ready to be claimed
    RUNNING = "running"  # claimed, under a lease
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # failed, waiting for its backoff to pass
    DEAD = "dead"  # the dead-letter queue: out of attempts, non-retryable, or unknown task
    CANCELLED = "cancelled"
    BLOCKED = "blocked"  # waiting for the jobs named in after= to finish
    WAITING = "waiting"  # handed to an outside service (Await): completed via its token

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
ACTIVE_STATES = frozenset(
    {
        JobState.SCHEDULED,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.RETRYING,
        JobState.BLOCKED,
        JobState.WAITING,
    }
)

#: Every legal (from, to) pair. The property test checks the backends against this.
TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.SCHEDULED, JobState.QUEUED),
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.RETRYING),
        (JobState.RUNNING, JobState.QUEUED),  # lease expired or released on shutdown
        (JobState.RUNNING, JobState.DEAD),
        (JobState.RUNNING, JobState.CANCELLED),
        (JobState.RETRYING, JobState.QUEUED),
        (JobState.SCHEDULED, JobState.CANCELLED),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RETRYING, JobState.CANCELLED),
        (JobState.DEAD, JobState.QUEUED),  # replay
        (JobState.CANCELLED, JobState.QUEUED),  # replay
        (JobState.BLOCKED, JobState.QUEUED),  # its last dependency finished
        (JobState.BLOCKED, JobState.SCHEDULED),  # ... and its own delay is still ahead
        (JobState.BLOCKED, JobState.CANCELLED),  # a dependency failed, or cancel
        (JobState.RUNNING, JobState.SCHEDULED),  # over its rate limit: waits for its slot
        (JobState.RUNNING, JobState.WAITING),  # Await: parked until completed from outside
        (JobState.WAITING, JobState.SUCCEEDED),  # complete_external
        (JobState.WAITING, JobState.RETRYING),  # fail_external or deadline, with backoff
        (JobState.WAITING, JobState.QUEUED),  # ... retried at once
        (JobState.WAITING, JobState.DEAD),  # ... no attempts left
        (JobState.WAITING, JobState.CANCELLED),  # cancel
    }
)


@dataclass(frozen=True, slots=True)
class JobError:
    """One failed attempt: what was raised, where, and when."""

    attempt: int
    type: str
    message: str
    traceback: str | None = None
    at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "at": self.at.timestamp() if self.at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobError:
        at = data.get("at")
        return cls(
            attempt=int(data.get("attempt", 0)),
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
            at=from_timestamp(at),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job, as the store had it when it was read."""

    id: str
    task: str
    state: JobState
    queue: str
    tenant: str | None
    priority: int
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    lease_expires_at: datetime | None = None
    worker: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    result: Any = None
    errors: tuple[JobError, ...] = field(default_factory=tuple)
    key: str | None = None
    timeout: float | None = None
    cancel_requested: bool = False

    @property
    def error(self) -> JobError | None:
        """The most recent error, if any attempt failed."""
        return self.errors[-1] if self.errors else None


def from_timestamp(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_timestamp(value: datetime) -> float:
    if value.tzinfo is None:
        raise ValueError("at= must be a timezone-aware datetime (e.g. datetime.now(UTC))")
    return value.timestamp()


# Our own generator: user code seeding the global one must not make ids repeat. A
# forked child reseeds, or it would draw the same bits as its parent.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))
_uuid_lock = threading.Lock()
_uuid_last_ms = 0
_uuid_seq = 0


def new_job_id(now: float | None = None) -> str:
    """A UUIDv7 (RFC 9562): ids sort by creation time, so FIFO can order by id.

    Within one millisecond a 12-bit counter in ``rand_a`` keeps ids from one process
    increasing; the remaining 62 bits are random, so processes do not collide.
    """
    ms, seq = _reserve(1, now)
    # Uniqueness, not secrecy, is what the random bits are for: a PRNG seeded from the
    # OS spares a syscall per id.
    rand_b = _random.getrandbits(62)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_job_ids(count: int, now: float | None = None) -> list[str]:
    """``count`` ids as ``new_job_id`` makes them, in increasing order, for a fraction of
    the cost per id: one clock read and one lock for the lot, the millisecond's part of
    the text formatted once, and the random bits of all drawn as one hex string
    (``enqueue_many``: 0.45 instead of 0.68 µs per id)."""
    if count <= 0:
        return []
    ms, seq = _reserve(count, now)
    head = _id_head(ms)
    # 16 hex digits per id: the first gives the variant's 2 random bits (10xx), the other
    # 15 give 60 bits: the 62 random bits of new_job_id.
    digits = _random.randbytes(8 * count).hex()
    variant = _VARIANT
    ids = []
    for i in range(0, 16 * count, 16):
        if seq > 0xFFF:  # the counter ran over: _reserve borrowed the next millisecond
            ms, seq = ms + 1, 0
            head = _id_head(ms)
        ids.append(
            f"{head}{seq:03x}-{variant[digits[i]]}{digits[i + 1 : i + 4]}-{digits[i + 4 : i + 16]}"
        )
        seq += 1
    return ids


#: A hex digit's low 2 bits as the first digit of a UUID's variant field (10xx).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _reserve(count: int, now: float | None) -> tuple[int, int]:
    """The (millisecond, counter) of the first of ``count`` new ids; the others follow
    it, the counter running over into the next millisecond when a millisecond's 4,096
    are used up (borrowed: ids stay increasing)."""
    global _uuid_last_ms, _uuid_seq
    ms = int((time.time() if now is None else now) * 1000)
    with _uuid_lock:
        if ms <= _uuid_last_ms:
            ms, seq = _uuid_last_ms, _uuid_seq + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
        else:
            seq = 0
        last = seq + count - 1
        _uuid_last_ms, _uuid_seq = ms + (last >> 12), last & 0xFFF
    return ms, seq


def _id_head(ms: int) -> str:
    """The first 15 characters of a UUIDv7: 48 bits of milliseconds and the version."""
    h = f"{ms & 0xFFFFFFFFFFFF:012x}"
    return f"{h[:8]}-{h[8:]}-7"
