"""Redis replies to records: job hashes, claim rows, stats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.backends.base import ClaimedJob, QueueStats, decode_tenant
from conveyor.job import Job, JobError, JobState, from_timestamp
from conveyor.serialize import loads, loads_for_display

#: Fields per claimed job in claim.lua's reply.
CLAIM_FIELDS = 13
STATES = (
    "scheduled",
    "queued",
    "running",
    "retrying",
    "dead",
    "succeeded",
    "cancelled",
    "blocked",
    "waiting",
)


def _float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def job_from_hash(h: Mapping[str, str]) -> Job:
    enqueued = from_timestamp(float(h["enqueued_at"]))
    assert enqueued is not None
    result = h.get("result")
    return Job(
        id=h["id"],
        task=h["task"],
        state=JobState(h["state"]),
        queue=h["queue"],
        tenant=decode_tenant(h.get("tenant")),
        priority=int(h["priority"]),
        args=loads_for_display(h["args"]),
        kwargs=loads_for_display(h["kwargs"]),
        attempt=int(h.get("attempt", 0)),  # absent until the first claim
        max_attempts=int(h["max_attempts"]),
        enqueued_at=enqueued,
        run_at=from_timestamp(_float(h.get("run_at"))),
        started_at=from_timestamp(_float(h.get("started_at"))),
        finished_at=from_timestamp(_float(h.get("finished_at"))),
        expires_at=from_timestamp(_float(h.get("expires_at"))),
        lease_expires_at=from_timestamp(_float(h.get("lease_expires_at"))),
        worker=h.get("worker"),
        progress=_float(h.get("progress")),
        progress_message=h.get("progress_message"),
        result=loads_for_display(result),
        errors=tuple(JobError.from_json(e) for e in loads(h.get("errors") or "[]") or ()),
        key=h.get("key") or None,
        timeout=_float(h.get("timeout")),
        cancel_requested=h.get("cancel_requested") == "1",
    )


def pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """A Redis field/value list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def claimed_from_reply(reply: Sequence[Any]) -> list[ClaimedJob]:
    """claim.lua's rows (after its two header fields) as ``ClaimedJob`` records."""
    out = []
    for i in range(2, len(reply), CLAIM_FIELDS):
        (
            id_,
            task,
            queue,
            tenant,
            priority,
            args_json,
            kwargs_json,
            attempt,
            max_attempts,
            timeout,
            token,
            lease_expires_at,
            enqueued_at,
        ) = reply[i : i + CLAIM_FIELDS]
        out.append(
            ClaimedJob(
                id=id_,
                task=task,
                queue=queue,
                tenant=decode_tenant(tenant),
                priority=int(priority),
                args_json=args_json,
                kwargs_json=kwargs_json,
                attempt=int(attempt),
                max_attempts=int(max_attempts),
                timeout=_float(timeout),
                lease_token=token,
                lease_expires_at=float(lease_expires_at),
                enqueued_at=float(enqueued_at),
            )
        )
    return out


def stats_from_reply(reply: Sequence[Any]) -> list[QueueStats]:
    """stats.lua's reply as one ``QueueStats`` per (queue, tenant) worth listing: one
    with a job in any state, or with a non-default weight or max_running."""
    now = float(reply[0])
    out: dict[tuple[str, str], QueueStats] = {}
    for queue, counts_flat, weights_flat, caps_flat, oldest_flat in reply[1:]:
        counts: dict[str, dict[str, int]] = {}
        for field, value in pairs(counts_flat).items():
            state, _, tenant = field.partition(":")
            counts.setdefault(tenant, {})[state] = int(value)
        weights = {t: float(w) for t, w in pairs(weights_flat).items()}
        caps = {t: int(m) for t, m in pairs(caps_flat).items()}
        oldest = {t: float(at) for t, at in pairs(oldest_flat).items()}
        for tenant in {*counts, *weights, *caps}:
            c = counts.get(tenant, {})
            ready_at = oldest.get(tenant)
            out[(queue, tenant)] = QueueStats(
                queue=queue,
                tenant=decode_tenant(tenant),
                scheduled=c.get("scheduled", 0),
                queued=c.get("queued", 0),
                running=c.get("running", 0),
                retrying=c.get("retrying", 0),
                dead=c.get("dead", 0),
                succeeded=c.get("succeeded", 0),
                cancelled=c.get("cancelled", 0),
                oldest_wait=None if ready_at is None else max(0.0, now - ready_at),
                weight=weights.get(tenant, 1.0),
                max_running=caps.get(tenant),
                blocked=c.get("blocked", 0),
                waiting=c.get("waiting", 0),
            )
    return [out[k] for k in sorted(out)]
