"""The SQL that lives next to this module, loaded as package resources.

``queries.sql`` holds named statements, each starting with a ``-- name: <name>`` line
(text before the first name is the file's header comment). ``migrations/NNNN_*.sql`` are
the versioned schema changes, applied in order by ``migrate()``; ``schema.sql`` is the
current schema in one file, kept equal to the migrations by a test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from importlib.resources import files

from psycopg import sql

_PACKAGE = "conveyor.backends.postgres"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def schema() -> str:
    return files(_PACKAGE).joinpath("schema.sql").read_text(encoding="utf-8")


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration file, by version."""
    found: list[tuple[int, str, str]] = []
    for entry in files(_PACKAGE).joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match is None:
            continue
        found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    # Gaps are allowed (branches developed side by side number their migrations ahead
    # and fill the gaps when they are merged); a version used twice is a mistake.
    if len(set(versions)) != len(versions) or (versions and versions[0] != 1):
        raise RuntimeError(f"migration versions must be unique and start at 1: {versions}")
    return found


def parse_named(text: str) -> dict[str, str]:
    """Split ``text`` into ``{name: statement}`` at its ``-- name:`` lines."""
    found: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip().removesuffix(";").rstrip()
        if mark.group(1) in found or not body:
            raise ValueError(f"SQL statement {mark.group(1)!r} is duplicated or empty")
        found[mark.group(1)] = body
    return found


@dataclass(frozen=True, slots=True)
class Queries:
    """Every named statement of ``queries.sql``, checked to exist when loaded.

    Statements that name ``{schema}`` are composed with the store's schema quoted as an
    identifier (they also run on callers' connections, whatever their search_path).
    """

    insert_jobs: sql.Composed
    active_jobs_by_key: sql.Composed
    claim: str
    heartbeat: str
    progress: str
    finish: str
    finish_claim: str
    reap: str
    promote: str
    next_due: str
    purge_expired: str
    prune_tenants: str
    fold_totals: str
    prune_totals: str
    try_lock: str
    unlock: str
    get_job: str
    query_jobs: str
    query_jobs_in_state: str
    lock_job: str
    cancel_waiting: str
    request_cancel: str
    other_active_with_key: str
    replay: str
    notify: str
    set_tenant: str
    set_queue: str
    reschedule_aging: str
    job_counts: str
    tenant_settings: str
    waiting_counts: str
    clock: str
    # workflow.sql
    link: str
    reserve_key: str
    unreserve_key: str
    purge_key_windows: str
    take_rate: str
    get_jobs: str
    # external.sql
    park: str
    complete_external: str
    wait_status: str
    overdue_waits: str
    expire_waiting: str

    @classmethod
    def load(cls, schema_name: str) -> Queries:
        named: dict[str, str] = {}
        for source in ("queries.sql", "workflow.sql", "external.sql"):
            text = files(_PACKAGE).joinpath(source).read_text(encoding="utf-8")
            found = parse_named(text)
            if found.keys() & named.keys():
                raise ValueError(
                    f"{source} repeats statements: {sorted(found.keys() & named.keys())}"
                )
            named.update(found)
        wanted = [f.name for f in fields(cls)]
        missing = sorted(set(wanted) - named.keys())
        if missing:
            raise RuntimeError(f"SQL statements missing from queries.sql: {missing}")
        values: dict[str, object] = {}
        for name in wanted:
            body = named[name]
            if "{schema}" in body:
                values[name] = sql.SQL(body).format(schema=sql.Identifier(schema_name))
            else:
                values[name] = body
        return cls(**values)  # type: ignore[arg-type]
