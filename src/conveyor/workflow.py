"""Dependencies between jobs (``after=``), chains, and results handed from job to job.

A job enqueued with ``after=[h1, h2]`` is ``blocked`` until every one of them finished;
the store releases it (``queued``) or cancels it in the same transaction that finishes
the last dependency, so no worker loop has to watch for it.

Results travel by reference, never by copy at enqueue time: a chain step or a batch's
merge job gets, as its first argument, a placeholder naming the jobs whose results it
wants (``{"$conveyor": "results", "of": [ids], ...}``). The worker replaces the
placeholder with those results, read from the store, just before the attempt runs. The
placeholder is plain JSON; nothing is imported or unpickled from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import AFTER_POLICIES, Backend
from conveyor.handle import JobHandle
from conveyor.job import JobState

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.task import Signature

#: The key that marks a placeholder argument; refused in arguments users pass.
MARKER = "$conveyor"
#: Dependencies one job may name (a batch's merge job names every chunk).
MAX_AFTER = 10_000


class MissingResult(RuntimeError):
    """A dependency's result is no longer stored (purged after its ``result_ttl``)."""


def check_unique_for(unique_for: Any, key: str | None) -> float | None:
    if unique_for is None:
        return None
    if key is None:
        raise ValueError("unique_for= needs key= (the dedup key it reserves)")
    if (
        isinstance(unique_for, bool)
        or not isinstance(unique_for, (int, float))
        or not math.isfinite(unique_for)
        or unique_for <= 0
    ):
        raise ValueError(f"unique_for must be a number of seconds > 0, got {unique_for!r}")
    return float(unique_for)


def check_after(after: Any, policy: Any) -> tuple[tuple[str, ...], str]:
    """``after=`` as job ids (from handles or id strings) and the checked policy."""
    if policy is None:
        policy = "success"
    if policy not in AFTER_POLICIES:
        raise ValueError(f"after_policy must be one of {AFTER_POLICIES}, got {policy!r}")
    if after is None:
        return (), policy
    if isinstance(after, (JobHandle, str)):
        after = [after]
    if not isinstance(after, Iterable) or isinstance(after, (bytes, Mapping)):
        raise TypeError(f"after= takes job handles or ids, not {type(after).__name__}")
    ids: list[str] = []
    for item in after:
        if isinstance(item, JobHandle):
            ids.append(item.id)
        elif isinstance(item, str) and item:
            ids.append(item)
        else:
            raise TypeError(f"after= takes job handles or ids, got {item!r}")
    if len(ids) > MAX_AFTER:
        raise ValueError(f"after= names {len(ids)} jobs; at most {MAX_AFTER}")
    return tuple(dict.fromkeys(ids)), policy


#: Types of a first argument that cannot be a marker (a marker is a mapping).
PLAIN_VALUES = frozenset({str, int, float, bool, list, tuple, type(None)})


def check_user_args(args: Sequence[Any]) -> None:
    # type(...) in PLAIN_VALUES first: the Mapping check is an ABC's, slow on a hot path.
    first = args[0] if args else None
    if type(first) not in PLAIN_VALUES and isinstance(first, Mapping) and MARKER in first:
        raise ValueError(f"a first argument with the key {MARKER!r} is reserved for Conveyor")


def results_marker(ids: Sequence[str], *, single: bool, errors: bool = False) -> dict[str, Any]:
    return {MARKER: "results", "of": list(ids), "single": single, "errors": errors}


def is_marker(value: Any) -> bool:
    return isinstance(value, dict) and value.get(MARKER) == "results"


async def resolve_inputs(
    backend: Backend, args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Replace a leading placeholder with the results it names (see the module doc).

    ``single``: the one dependency's result. Otherwise the list of results in order;
    with ``errors`` (a batch with ``allow_failures=True``) a failed job's entry is None
    and the task also gets ``errors=``: a list, aligned with the results, of None or
    ``{"job", "state", "type", "message"}``.
    """
    if not args or not is_marker(args[0]):
        return args, kwargs
    marker = args[0]
    ids = [str(i) for i in marker.get("of", [])]
    jobs = await backend.get_many(ids)
    results: list[Any] = []
    errors: list[dict[str, Any] | None] = []
    for job_id, job in zip(ids, jobs, strict=True):
        if job is None:
            raise MissingResult(f"the record of job {job_id} is gone (expired after result_ttl)")
        if job.state is JobState.SUCCEEDED:
            results.append(job.result)
            errors.append(None)
        else:
            last = job.error
            results.append(None)
            errors.append(
                {
                    "job": job.id,
                    "state": job.state.value,
                    "type": last.type if last else None,
                    "message": last.message if last else None,
                }
            )
    rest = args[1:]
    if marker.get("single"):
        return [results[0], *rest], kwargs
    if marker.get("errors"):
        return [results, *rest], {**kwargs, "errors": errors}
    return [results, *rest], kwargs


def chain_signatures(steps: Sequence[Signature]) -> list[Signature]:
    """Each step after the first waits for the one before and gets its result."""
    from conveyor.job import new_job_id

    if not steps:
        raise ValueError("chain() needs at least one step")
    out: list[Signature] = []
    previous: str | None = None
    for step in steps:
        _require_signature(step, "chain()")
        job_id = new_job_id()
        if previous is None:
            out.append(replace(step, job_id=job_id))
        else:
            after = (*check_after(step.options.after, None)[0], previous)
            options = step.options.merged(after=after)
            inputs = results_marker([previous], single=True)
            out.append(replace(step, options=options, inputs=inputs, job_id=job_id))
        previous = job_id
    return out


def chain(*steps: Signature, app: App | None = None) -> JobHandle:
    """Enqueue ``a.s(1), b.s(), c.s()`` so that each step runs after the previous one
    succeeded and gets its result prepended to its own arguments: ``b(a_result)``,
    ``c(b_result)``. All steps are enqueued atomically; returns the last step's handle
    (its ``wait()`` gives the chain's result). A failed step cancels the rest."""
    owner = _app_of(steps, app)
    return owner.enqueue_many(chain_signatures(steps))[-1]


async def chain_async(*steps: Signature, app: App | None = None) -> JobHandle:
    owner = _app_of(steps, app)
    return (await owner.enqueue_many_async(chain_signatures(steps)))[-1]


def _require_signature(step: Any, where: str) -> None:
    from conveyor.task import Signature

    if not isinstance(step, Signature):
        raise TypeError(f"{where} takes task.s(...) signatures, not {type(step).__name__}")


def _app_of(steps: Sequence[Signature], app: App | None) -> App:
    if app is not None:
        return app
    for step in steps:
        owner = getattr(step, "app", None)
        if owner is not None:
            return owner  # type: ignore[no-any-return]
    raise ValueError("chain() could not tell the app: pass app=, or build steps with task.s()")
