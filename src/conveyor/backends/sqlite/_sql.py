"""Loads the SQL that lives next to this module as package resources.

``schema.sql`` is run as one script. Every other ``*.sql`` file is a set of named
statements, each starting with a ``-- name: <name>`` line; text before the first name
is the file's header comment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_PACKAGE = "conveyor.backends.sqlite"


def schema() -> str:
    return files(_PACKAGE).joinpath("schema.sql").read_text(encoding="utf-8")


def parse_named(text: str, *, source: str = "<sql>") -> dict[str, str]:
    """Split ``text`` into ``{name: statement}`` at its ``-- name:`` lines."""
    found: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        # sqlite3 refuses to execute() more than one statement; a stray trailing ';' is fine.
        body = body.rstrip().removesuffix(";").rstrip()
        name = mark.group(1)
        if name in found:
            raise ValueError(f"duplicate SQL statement name {name!r} in {source}")
        if not body:
            raise ValueError(f"empty SQL statement {name!r} in {source}")
        found[name] = body
    return found


def load_queries() -> dict[str, str]:
    """All named statements of the package's ``*.sql`` files except the schema."""
    queries: dict[str, str] = {}
    for entry in sorted(files(_PACKAGE).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql") or entry.name == "schema.sql":
            continue
        for name, body in parse_named(entry.read_text(encoding="utf-8"), source=entry.name).items():
            if name in queries:
                raise ValueError(f"SQL statement {name!r} is defined twice ({entry.name})")
            queries[name] = body
    return queries


@dataclass(frozen=True, slots=True)
class Queries:
    """Every named statement the backend runs, checked to exist when loaded."""

    # worker.sql
    insert_job: str
    active_job_by_key: str
    promote_due: str
    age_ready: str
    next_due: str
    task_running: str
    claim_one: str
    heartbeat: str
    progress: str
    finish_succeeded: str
    finish_retry: str
    finish_dead: str
    finish_cancelled: str
    finish_released: str
    finish_parked: str
    wait_status: str
    # admin.sql
    expired_leases: str
    reap_one: str
    expired_waits: str
    expire_wait: str
    purge_expired: str
    prune_tenants: str
    try_lock: str
    unlock: str
    get_job: str
    query_jobs: str
    query_jobs_in_state: str
    job_state: str
    cancel_waiting: str
    request_cancel: str
    other_active_with_key: str
    replay: str
    set_tenant: str
    set_queue: str
    reschedule_aging: str
    job_counts: str
    tenant_settings: str
    waiting_counts: str
    take_events: str
    record_cancelled: str
    ack_event: str
    purge_outbox: str
    # workflow.sql
    dependency_state: str
    insert_dependency: str
    add_dependent: str
    set_pending: str
    release_blocked: str
    cancel_blocked: str
    key_window_holder: str
    reserve_key_window: str
    purge_key_windows: str
    holds_lease: str
    rate_tat: str
    set_rate_tat: str
    take_reservation: str
    reserve_rate: str
    forget_old_reservations: str
    defer_running: str

    @classmethod
    def load(cls) -> Queries:
        named = load_queries()
        wanted = [f.name for f in fields(cls)]
        missing = sorted(set(wanted) - named.keys())
        if missing:
            raise RuntimeError(f"SQL statements missing from the package: {missing}")
        return cls(**{name: named[name] for name in wanted})
