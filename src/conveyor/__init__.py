"""Conveyor: background jobs for Python, fast and fair between tenants.

The names below are the public API (pinned by ``tests/unit/test_public_api.py``).
"""

from conveyor.app import App
from conveyor.batch import Batch, BatchFailed, BatchProgress
from conveyor.context import JobContext, current_job
from conveyor.errors import ConveyorError, InvalidTransition, JobFailed, JobNotFound
from conveyor.handle import JobHandle
from conveyor.job import Job, JobError, JobState
from conveyor.retry import Backoff, Fail, Retry
from conveyor.sandbox import Sandbox
from conveyor.task import BoundTask, Signature, Task
from conveyor.worker import Worker
from conveyor.workflow import chain, chain_async

__version__ = "0.1.0"

__all__ = [
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
]
