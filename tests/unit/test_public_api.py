"""The public surface is a promise: adding a name is a decision, removing one breaks users."""

from __future__ import annotations

import conveyor

EXPECTED = {
    "App",
    "Backoff",
    "Batch",
    "BatchFailed",
    "BatchProgress",
    "BoundTask",
    "ConveyorError",
    "Fail",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "Retry",
    "Sandbox",
    "Signature",
    "Task",
    "Worker",
    "chain",
    "chain_async",
    "current_job",
}


def test_exported_names_are_pinned() -> None:
    assert set(conveyor.__all__) == EXPECTED


def test_every_exported_name_exists() -> None:
    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None


def test_job_states_are_the_documented_ones() -> None:
    assert [s.value for s in conveyor.JobState] == [
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "retrying",
        "dead",
        "cancelled",
        "blocked",
    ]


def test_job_record_is_frozen() -> None:
    import dataclasses

    assert dataclasses.is_dataclass(conveyor.Job)
    assert conveyor.Job.__dataclass_params__.frozen  # type: ignore[attr-defined]
