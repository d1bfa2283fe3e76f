"""Records: the small key -> JSON table beside the jobs (API tokens, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.backends.base import Backend

if TYPE_CHECKING:
    from tests.contract.conftest import MakeJob, OpenBackend


async def test_put_get_replace_delete(backend: Backend) -> None:
    assert await backend.get_record("token", "abc") is None
    await backend.put_record("token", "abc", '{"tenant":"org-7"}')
    assert await backend.get_record("token", "abc") == '{"tenant":"org-7"}'

    await backend.put_record("token", "abc", '{"tenant":"org-8"}')  # replaces
    assert await backend.get_record("token", "abc") == '{"tenant":"org-8"}'
    assert await backend.list_records("token") == [("abc", '{"tenant":"org-8"}')]

    assert await backend.delete_record("token", "abc") is True
    assert await backend.delete_record("token", "abc") is False
    assert await backend.get_record("token", "abc") is None
    assert await backend.list_records("token") == []


async def test_kinds_are_separate_and_listed_by_key(backend: Backend) -> None:
    for key in ("b", "a", "c:with:colons", "ü"):
        await backend.put_record("token", key, f'"{key}"')
    await backend.put_record("webhook", "a", '"other kind"')
    # A kind that is a prefix of another, or holds separators, stays its own collection.
    await backend.put_record("tok", "a", '"prefix kind"')
    await backend.put_record("token:x", "a", '"separator kind"')

    listed = await backend.list_records("token")
    assert [k for k, _ in listed] == sorted(["a", "b", "c:with:colons", "ü"])
    assert dict(listed)["a"] == '"a"'
    assert await backend.list_records("webhook") == [("a", '"other kind"')]
    assert await backend.get_record("tok", "a") == '"prefix kind"'
    assert await backend.get_record("token:x", "a") == '"separator kind"'
    assert await backend.list_records("nothing") == []


async def test_records_are_seen_by_another_instance_and_leave_jobs_alone(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob
) -> None:
    [job_id] = await backend.enqueue([make_job()])
    await backend.put_record("token", "k", '{"admin":true}')

    other = await open_backend()  # another server process, maybe another machine
    assert await other.get_record("token", "k") == '{"admin":true}'
    assert await other.delete_record("token", "k") is True
    assert await backend.get_record("token", "k") is None

    assert (await backend.get(job_id)) is not None
    assert sum(s.queued for s in await backend.stats()) == 1
