"""Job ids: UUIDv7, increasing within a process, distinct across processes."""

from __future__ import annotations

import os
import random
import uuid

from conveyor.job import new_job_id, new_job_ids


def test_ids_are_uuid7_and_increase() -> None:
    ids = [new_job_id() for _ in range(5000)]  # several share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}


def test_seeding_the_global_random_does_not_repeat_ids() -> None:
    random.seed(42)
    first = new_job_id(now=1_750_000_000.0)
    random.seed(42)
    assert new_job_id(now=1_750_000_000.0)[19:] != first[19:]


def test_a_forked_child_draws_other_random_bits() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report 50 ids and leave at once
        os.write(write, ",".join(new_job_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    parent = [new_job_id() for _ in range(50)]
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    # The random tail (after the time and counter) never repeats across the fork.
    assert not {i[19:] for i in parent} & {i[19:] for i in child}


def test_ids_drawn_in_bulk_are_uuid7_increasing_and_follow_on_from_single_ones() -> None:
    ids = [new_job_id()]
    for count in (1, 3, 5000, 4096, 10_000, 0, 2):  # two runs over the 4,096 per ms
        ids += new_job_ids(count)
        ids.append(new_job_id())
    assert len(ids) == 19_110
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert all(str(u) == i for u, i in zip(parsed, ids, strict=True))
    # The variant digit carries two random bits, and the random tails never repeat.
    assert {i[19] for i in ids} == set("89ab")
    assert len({i[19:] for i in ids}) == len(ids)


def test_a_millisecond_used_up_borrows_the_next_one() -> None:
    now = 1_800_000_000.0  # far ahead of the clock: this test's ids start a millisecond
    ids = new_job_ids(4096 + 10, now=now)
    ms = {int(i.replace("-", "")[:12], 16) for i in ids}
    assert ms == {1_800_000_000_000, 1_800_000_000_001}
    assert ids == sorted(ids)
    assert new_job_id(now=now) > ids[-1]  # the counter carries on from the borrowed one
