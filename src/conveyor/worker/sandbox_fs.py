"""Letting an unprivileged attempt import the code a root worker runs.

A root worker's attempts run as an unprivileged user id. A task imports lazily (even
the standard library does: ``encodings.idna`` on the first DNS lookup), so that user
must be able to read the Python path. When part of it sits in a directory others
cannot enter (Python installed under ``/root``), the child, still root, gives itself a
private mount namespace and lays a read-only, empty tmpfs over that directory with the
Python path entries bound back in. The task then sees those entries and nothing else of
the directory, which also hides the rest of it (say, ``/root/.ssh``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

#: A blocked directory, and the Python path entries inside it to show the attempt.
Exposure = tuple[str, tuple[str, ...]]

_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


@functools.cache
def exposures(paths: tuple[str, ...]) -> tuple[Exposure, ...] | None:
    """What to expose so that others can read ``paths`` (the Python path); None when
    that is impossible (an entry is itself private, not just inside a private dir)."""
    plan: dict[str, list[str]] = {}
    for entry in paths:
        try:
            path = Path(entry or ".").resolve()
            path.stat()
            blocked = _first_blocked(path)
        except OSError:  # absent entries do not matter
            continue
        if blocked is None:
            continue
        if blocked == path:
            return None
        plan.setdefault(str(blocked), []).append(str(path))
    # Shorter paths first, so that an entry inside another is bound after it.
    return tuple((d, tuple(sorted(set(es), key=len))) for d, es in plan.items())


def _first_blocked(path: Path) -> Path | None:
    """The first directory from ``/`` down that others cannot pass (or read, for the
    entry itself)."""
    for step in [*reversed(path.parents), path]:
        mode = step.stat().st_mode
        wanted = 0o001  # pass through
        if step == path:
            wanted = 0o005 if step.is_dir() else 0o004  # list and pass, or read
        if mode & wanted != wanted:
            return step
    return None


def expose(libc: ctypes.CDLL, plan: tuple[Exposure, ...]) -> None:
    """In the child, as root: make ``plan``'s entries readable to the attempt."""
    if not plan:
        return
    if libc.unshare(_CLONE_NEWNS) != 0:
        _fail("unshare(CLONE_NEWNS)")
    # Our mounts must not propagate back to the worker's namespace.
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    old_umask = os.umask(0o022)
    try:
        for blocked, entries in plan:
            # Handles on the entries first: the tmpfs is about to hide them.
            handles = [os.open(e, os.O_PATH) for e in entries]
            _mount(libc, "tmpfs", blocked, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k")
            for entry, handle in zip(entries, handles, strict=True):
                os.makedirs(entry, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{handle}", entry, None, _MS_BIND | _MS_REC)
                os.close(handle)
            _mount(libc, None, blocked, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    finally:
        os.umask(old_umask)


def _mount(
    libc: ctypes.CDLL,
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    def c(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)) != 0:
        _fail(f"mount {target}")


def _fail(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")
