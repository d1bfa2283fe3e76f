"""``conveyor``: run workers, enqueue jobs and look at the store from a shell.

The group and its shared helpers live in ``_base``; each module registers its commands
on import.
"""

from __future__ import annotations

from conveyor.cli import jobs, run, web
from conveyor.cli._base import cli, job_to_dict, main

__all__ = ["cli", "job_to_dict", "jobs", "main", "run", "web"]
