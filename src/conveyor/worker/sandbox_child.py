"""The child side of a sandboxed attempt: runs in a process just forked from the worker.

The child is a copy of the worker taken by ``os.fork()`` in the worker's event-loop
thread. Only that thread exists in the copy, so every lock another thread held stays
held for ever: the child therefore does the least it can before the task runs (no
logging of its own, no event loop of the worker's, no backend), confines itself, runs
the task function it already has in memory, writes one JSON line per message to its
pipe, and leaves with ``os._exit`` (never returning into the worker's frames).

Order matters: the network and mount namespaces need root's capabilities, so they come
before the switch to an unprivileged user id, which drops those capabilities; the
parent-death signal comes after it, because changing credentials clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from conveyor.context import JobContext, _current
from conveyor.retry import Await, Fail, Retry
from conveyor.sandbox import Sandbox
from conveyor.serialize import dumps
from conveyor.worker import sandbox_fs

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_EXIT_SETUP_FAILED = 70


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """Everything the child needs, prepared by the worker before the fork."""

    fn: Callable[..., Any]
    is_async: bool
    args: list[Any]
    kwargs: dict[str, Any]
    ctx: JobContext
    sandbox: Sandbox
    env: dict[str, str]
    worker_pid: int
    #: The unprivileged user id to switch to (the worker is root), else None.
    uid: int | None
    #: What to make readable to that user id (see ``sandbox_fs``).
    expose: tuple[sandbox_fs.Exposure, ...]
    #: ``RLIMIT_NPROC`` to set; it counts every thread of the user id, so when the
    #: attempt keeps the worker's id, this is what that id runs already plus the limit.
    nproc: int | None
    libc: ctypes.CDLL


def run(plan: ChildPlan, pipe: int) -> NoReturn:
    """The child's whole life. Never returns: whatever happens ends in ``os._exit``."""
    code = _EXIT_SETUP_FAILED
    try:
        code = _main(plan, pipe)
    except BaseException as exc:  # setup failed: say why, if the pipe still works
        with contextlib.suppress(BaseException):
            _send(pipe, {"t": "setup_error", "message": f"{type(exc).__name__}: {exc}"})
    finally:
        os._exit(code)


def _main(plan: ChildPlan, pipe: int) -> int:
    leader = os.getpid()
    os.setsid()  # our own session and process group, killed as one
    _reset_signals()
    network = "allowed" if plan.sandbox.network else _cut_network(plan.libc)
    _set_limits(plan)
    identity = "worker"
    if plan.uid is not None:
        try:
            sandbox_fs.expose(plan.libc, plan.expose)
        except OSError as exc:  # stay root, rather than break the task's imports
            identity = f"root ({exc})"
        else:
            os.setgroups([])
            os.setresgid(plan.uid, plan.uid, plan.uid)
            os.setresuid(plan.uid, plan.uid, plan.uid)  # drops every capability
            identity = "own"
    _prctl(plan.libc, _PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != plan.worker_pid:  # the worker died before the line above
        return _EXIT_SETUP_FAILED
    _prctl(plan.libc, _PR_SET_NO_NEW_PRIVS, 1)
    _unmap_shared_memory(plan.libc)  # e.g. the store's SQLite WAL index
    _close_inherited_fds(keep=pipe)
    _scrub_environment(plan.env)
    _fresh_stdio()
    gc.freeze()  # the worker's objects are not ours to collect (or to finalize)
    asyncio.events._set_running_loop(None)  # we are a copy of a coroutine's thread
    _send(pipe, {"t": "hello", "network": network, "identity": identity})

    def progress(fraction: float | None, message: str | None) -> None:
        _send(pipe, {"t": "progress", "f": fraction, "m": message})

    _current.set(dataclasses.replace(plan.ctx, _sink=progress))
    _report_refused_forks(pipe)
    message = _call(plan)
    if os.getpid() != leader:  # a process the task forked returned into our frame
        os._exit(0)
    _send(pipe, message)
    return 0


def _report_refused_forks(pipe: int) -> None:
    """Tell the worker when the kernel refuses a fork: a bomb that gives up at once
    would otherwise die of the error before the worker sees the processes pile up.

    A task that forks by other means is still limited by the kernel; only the name of
    its failure (``process_limit``) depends on this.
    """
    import _posixsubprocess  # what subprocess forks with

    def refused() -> None:
        with contextlib.suppress(BaseException):
            _send(pipe, {"t": "nproc"})

    def fork() -> int:
        try:
            return real_fork()
        except BlockingIOError:
            refused()
            raise

    def fork_exec(*args: Any) -> int:
        try:
            return real_fork_exec(*args)
        except BlockingIOError:
            refused()
            raise

    real_fork, real_fork_exec = os.fork, _posixsubprocess.fork_exec
    os.fork = fork
    _posixsubprocess.fork_exec = fork_exec


def _call(plan: ChildPlan) -> dict[str, Any]:
    out_of_memory = False
    try:
        if plan.is_async:
            result = asyncio.run(plan.fn(*plan.args, **plan.kwargs))
        else:
            result = plan.fn(*plan.args, **plan.kwargs)
    except MemoryError:
        # Leave the except block before anything else, so the traceback (and the
        # task's frames, and what they allocated) are freed.
        out_of_memory = True
    except Retry as exc:
        return {"t": "retry", "message": exc.reason, "delay": exc.delay}
    except Fail as exc:
        return {"t": "fail", "message": exc.reason}
    except Await:
        # The child cannot park the job, and running it again would only await again.
        return {"t": "fail", "message": "conveyor.Await is not supported in a sandboxed task"}
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        return {
            "t": "error",
            "type": _exc_type(exc),
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
    if out_of_memory:
        return {"t": "memory"}
    try:
        return {"t": "result", "json": dumps(result, what="result")}
    except TypeError as exc:
        return {"t": "error", "type": "TypeError", "message": str(exc), "traceback": None}


def _exc_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _send(pipe: int, message: dict[str, Any]) -> None:
    data = (dumps(message) + "\n").encode()
    while data:
        data = data[os.write(pipe, data) :]


def _prctl(libc: ctypes.CDLL, option: int, arg: int) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _reset_signals() -> None:
    """Undo the worker's handlers: SIGTERM must kill us, SIGXCPU must end us."""
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGXCPU,
        signal.SIGALRM,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _cut_network(libc: ctypes.CDLL) -> str:
    """A new network namespace has only a loopback interface, and it is down: every
    connect fails, even to 127.0.0.1. Root can make one; other users may, through a
    new user namespace, where the kernel allows unprivileged ones."""
    if libc.unshare(_CLONE_NEWNET) == 0:
        return "namespace"
    uid, gid = os.getuid(), os.getgid()
    if uid != 0 and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        # Map our own ids, so that the task still sees who it is (not 65534).
        for name, line in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1")):
            _write_proc(name, line)
        _write_proc("gid_map", f"{gid} {gid} 1")
        return "user-namespace"
    return f"unavailable ({os.strerror(ctypes.get_errno())})"


def _write_proc(name: str, line: str) -> None:
    with contextlib.suppress(OSError):  # unmapped, the ids read as 65534: cosmetic
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, line.encode())  # these files take one write, whole
        finally:
            os.close(fd)


def _set_limits(plan: ChildPlan) -> None:
    sandbox = plan.sandbox
    _lower(resource.RLIMIT_CORE, 0, 0)
    if sandbox.cpu_seconds is not None:
        # SIGXCPU at the soft limit; the kernel's SIGKILL one second later if ignored.
        _lower(resource.RLIMIT_CPU, sandbox.cpu_seconds, sandbox.cpu_seconds + 1)
    if sandbox.memory_mb is not None:
        # RLIMIT_DATA (private writable memory), counted from what this copy of the
        # worker already holds, rather than RLIMIT_AS: address space the worker merely
        # reserved (thread stacks, malloc arenas) would count against RLIMIT_AS.
        limit = _data_in_use() + sandbox.memory_mb * 1024 * 1024
        _lower(resource.RLIMIT_DATA, limit, limit)
    if plan.nproc is not None:
        _lower(resource.RLIMIT_NPROC, plan.nproc, plan.nproc)


def _lower(which: int, soft: int, hard: int) -> None:
    """Set a limit, never above what the worker itself was given."""
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _data_in_use() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def _unmap_shared_memory(libc: ctypes.CDLL) -> None:
    """Shared mappings inherited from the worker would let the task write into memory
    other processes use; nothing in the child needs them."""
    with open("/proc/self/maps", "rb") as f:
        lines = f.read().splitlines()
    munmap = libc.munmap
    munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[1].endswith(b"s"):
            start, end = (int(x, 16) for x in parts[0].split(b"-"))
            munmap(start, end - start)


def _close_inherited_fds(keep: int) -> None:
    """Point every inherited descriptor (the store's connections, the worker's sockets)
    at /dev/null. Replacing rather than closing keeps the numbers taken, so a worker
    object freed in the child cannot close a file the task opened later."""
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (1, 2, keep, null):
            continue
        with contextlib.suppress(OSError):  # e.g. the descriptor listdir used
            os.dup2(null, fd, inheritable=fd == 0)


def _scrub_environment(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    # /proc/self/environ shows the block the worker was started with, which the fork
    # copied: blank it (nothing points into it once os.environ is cleared).
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    start, end = int(fields[47]), int(fields[48])
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)


def _fresh_stdio() -> None:
    """New objects on fds 0-2: the worker's may have been locked by another thread."""
    sys.stdin = open(0, closefd=False, encoding="utf-8")  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
