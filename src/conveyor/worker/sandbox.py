"""Running one attempt of a sandboxed task in a child process, and saying how it ended.

Why ``os.fork()`` rather than starting a fresh interpreter: the child must run the
task function the worker registered, and the only safe way to find it is the
registry the worker already holds. A fresh interpreter would have to import code by
a name, which works only for apps importable by a dotted path known to the worker
(not for ``Worker(app)`` in tests and notebooks, nor for tasks defined in a function).
A fork has the registry in memory, needs no name at all, and costs a few milliseconds.
Its costs are handled in ``sandbox_child`` (only the forking thread survives, so the
child does the minimum before the task runs) and stated in docs/sandbox.md (the task
can read its copy of the worker's memory, e.g. the store URL).

The worker side (here) watches the child: the wall clock and the task's timeout, the
number of processes, the child's exit; it forwards progress, and it kills every
process of the attempt whenever the attempt ends, however it ends (including when
this coroutine is cancelled: cancel request, lost lease, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from conveyor.context import JobContext
from conveyor.sandbox import CPU_LIMIT, MEMORY_LIMIT, PROCESS_LIMIT, WALL_LIMIT, Sandbox
from conveyor.serialize import dumps, loads
from conveyor.worker import procfs, sandbox_fs

if TYPE_CHECKING:
    from conveyor.task import Task

log = logging.getLogger("conveyor.sandbox")

#: Attempts of a root worker run as user id ``_UID_BASE + their pid``: unique among
#: the attempts alive on the machine, used by no account, and unprivileged, which is
#: what makes ``RLIMIT_NPROC`` apply and lets us find every process of an attempt.
_UID_BASE = 1_900_000_000
_POLL = 0.1  # seconds between looks at the process count
_MAX_LINE = 64 * 1024 * 1024  # a longer line from the child is not ours to buffer
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "fork")

_warned_network = False
#: One look at /proc for every attempt this process watches.
_census = procfs.Census(every=_POLL)
_warned_root = False
_libc: ctypes.CDLL | None = None

EndKind = Literal["result", "error", "retry", "fail", "limit", "timeout"]


@dataclass(frozen=True, slots=True)
class SandboxEnd:
    """How a sandboxed attempt ended; the runner turns it into an ``Outcome``."""

    kind: EndKind
    result_json: str | None = None
    type: str = ""
    message: str = ""
    traceback: str | None = None
    delay: float | None = None


async def run_in_sandbox(
    task: Task[Any, Any],
    ctx: JobContext,
    args: list[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> SandboxEnd:
    sandbox = task.sandbox
    assert sandbox is not None
    if not AVAILABLE:
        return SandboxEnd(
            "fail", type="SandboxUnavailable", message="sandboxed tasks need Linux (fork, /proc)"
        )
    own_uid = False
    expose: tuple[sandbox_fs.Exposure, ...] = ()
    if os.geteuid() == 0:
        plan_fs = sandbox_fs.exposures(tuple(sys.path))
        if plan_fs is None:
            _warn_root("a Python path entry is not readable by other users")
        else:
            own_uid, expose = True, plan_fs
    nproc: int | None = None
    if sandbox.max_processes is not None:
        # One over the limit: the kernel stops the bomb there, and our look at the
        # count (which may exceed the limit only then) names the breach. (The kernel
        # never applies RLIMIT_NPROC to root: then only our look limits the count.)
        nproc = sandbox.max_processes + 1
        if not own_uid:
            nproc += procfs.tasks_of_uid(os.getuid())
    # Imported here, after the platform check: it needs POSIX-only modules.
    from conveyor.worker import sandbox_child

    global _libc
    if _libc is None:  # loaded here, not in the child: dlopen takes a lock
        _libc = ctypes.CDLL(None, use_errno=True)
    plan_args = (task.fn, task.is_async, args, kwargs, ctx, sandbox, sandbox.environment())
    worker_pid = os.getpid()
    try:
        read_fd, write_fd = os.pipe()
    except OSError as exc:  # out of descriptors: this attempt fails, the worker goes on
        return SandboxEnd("error", type="SandboxError", message=f"cannot start: {exc}")
    os.set_blocking(read_fd, False)
    try:
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork in a threaded process; the child is
            # written for exactly that (see sandbox_child).
            warnings.filterwarnings("ignore", ".*fork", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return SandboxEnd("error", type="SandboxError", message=f"cannot start: {exc}")
    if pid == 0:  # the child; sandbox_child.run never returns
        uid = _UID_BASE + os.getpid() if own_uid else None
        plan = sandbox_child.ChildPlan(
            *plan_args, worker_pid=worker_pid, uid=uid, expose=expose, nproc=nproc, libc=_libc
        )
        sandbox_child.run(plan, write_fd)
    os.close(write_fd)
    child = _Child(pid, read_fd, _UID_BASE + pid if own_uid else None, ctx, sandbox)
    try:
        return await child.watch(timeout)
    finally:
        child.end()


class _Child:
    def __init__(
        self, pid: int, read_fd: int, uid: int | None, ctx: JobContext, sandbox: Sandbox
    ) -> None:
        self.pid = pid
        self.uid = uid
        self.ctx = ctx
        self.sandbox = sandbox
        self.started = time.monotonic()
        self.status: int | None = None  # from wait4, once reaped
        self.cpu_used = 0.0
        self.final: dict[str, Any] | None = None
        self.setup_error: str | None = None
        self.fork_refused = False
        self._fd = read_fd
        self._partial: list[bytes] = []  # the start of a line not yet complete
        self._partial_size = 0
        self._overflow = False
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._loop.add_reader(read_fd, self._on_readable)
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # pidfd: Linux >= 5.3
            self._pidfd = os.pidfd_open(pid)
            self._loop.add_reader(self._pidfd, self._event.set)

    # -- watching ------------------------------------------------------------------------
    async def watch(self, timeout: float | None) -> SandboxEnd:
        wall = self.sandbox.wall_seconds
        limits: list[tuple[float, str]] = []
        if timeout is not None:
            limits.append((timeout, "timeout"))
        if wall is not None:
            limits.append((wall, WALL_LIMIT))
        # The sooner one decides; at a tie the task's own timeout (a retryable failure).
        deadline, why = min(limits, default=(float("inf"), ""))
        while not self._reap(block=False):
            if self._overflow:
                self.end()
                return SandboxEnd("error", type="SandboxError", message="output too large")
            elapsed = time.monotonic() - self.started
            if elapsed >= deadline:
                self.end()
                if why == "timeout":
                    return SandboxEnd("timeout", message=f"timed out after {deadline:g} s")
                return _limit(WALL_LIMIT, f"ran longer than {deadline:g} s (wall clock)")
            if self.fork_refused or self._too_many_processes():
                self.end()
                return _limit(
                    PROCESS_LIMIT, f"tried to run more than {self.sandbox.max_processes} processes"
                )
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_POLL, deadline - elapsed)):
                    await self._event.wait()
        self.end()  # the task's own leftover processes go too
        return self._how_it_ended()

    def _too_many_processes(self) -> bool:
        limit = self.sandbox.max_processes
        return limit is not None and _census.count(pgid=self.pid, uid=self.uid) > limit

    def _how_it_ended(self) -> SandboxEnd:
        final, status = self.final, self.status
        assert status is not None
        cpu = self.sandbox.cpu_seconds
        if self.fork_refused and (final is None or final.get("t") != "result"):
            return _limit(
                PROCESS_LIMIT, f"tried to run more than {self.sandbox.max_processes} processes"
            )
        if final is None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if cpu is not None and (
                sig == signal.SIGXCPU or (sig == signal.SIGKILL and self.cpu_used >= cpu)
            ):
                return _limit(CPU_LIMIT, f"used more than {cpu} s of CPU time")
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            return SandboxEnd(
                "error", type="SandboxCrashed", message=f"the attempt's process died of {name}"
            )
        if final is None:
            why = self.setup_error or f"exited with status {os.WEXITSTATUS(status)}"
            return SandboxEnd("error", type="SandboxCrashed", message=f"no result: {why}")
        return _from_message(final, self.sandbox)

    # -- the pipe ------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            while True:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:  # every writer is gone
                    self._loop.remove_reader(self._fd)
                    break
                if b"\n" in chunk:
                    # Join only at a line's end: a large result arrives in many chunks.
                    first, *lines, rest = chunk.split(b"\n")
                    self._on_line(b"".join([*self._partial, first]))
                    for line in lines:
                        self._on_line(line)
                    self._partial, self._partial_size = [rest], len(rest)
                else:
                    self._partial.append(chunk)
                    self._partial_size += len(chunk)
                if self._partial_size > _MAX_LINE:
                    self._overflow = True
                    self._partial, self._partial_size = [], 0
                    self._loop.remove_reader(self._fd)
                    break
        except BlockingIOError:
            pass
        self._event.set()

    def _on_line(self, line: bytes) -> None:
        """Lines come from code we do not trust: anything odd is dropped."""
        try:
            message = loads(line.decode())
        except (UnicodeDecodeError, ValueError):
            return
        if not isinstance(message, dict):
            return
        kind = message.get("t")
        if kind == "progress":
            with contextlib.suppress(TypeError, ValueError):
                self.ctx.progress(message.get("f"), message.get("m"))
        elif kind == "hello":
            _check_network(self.sandbox, message.get("network"))
            identity = message.get("identity")
            if isinstance(identity, str) and identity.startswith("root"):
                _warn_root(identity)
        elif kind == "nproc":
            self.fork_refused = True
        elif kind == "setup_error":
            self.setup_error = f"sandbox set-up failed: {message.get('message')}"
        elif kind in ("result", "error", "retry", "fail", "memory"):
            self.final = message

    # -- ending --------------------------------------------------------------------------
    def _reap(self, *, block: bool) -> bool:
        if self.status is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere; nothing more to learn
            self.status = 0
            return True
        if pid == 0:
            return False
        self.status = status
        self.cpu_used = usage.ru_utime + usage.ru_stime
        return True

    def end(self) -> None:
        """Kill every process of the attempt, reap the child, read what it left."""
        if self._fd < 0:  # ended already
            return
        all_gone = procfs.kill_all(pgid=self.pid, uid=self.uid)
        if all_gone:
            self._reap(block=True)
        elif not self._reap(block=False):
            log.error("sandboxed attempt %s: processes outlived SIGKILL", self.ctx.id)
            threading.Thread(target=_reap_later, args=(self.pid,), daemon=True).start()
        self._on_readable()  # the rest of the pipe, now that every writer is dead
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _warn_root(why: str) -> None:
    global _warned_root
    if not _warned_root:
        _warned_root = True
        log.warning(
            "sandbox: attempts run as root, not as an unprivileged user (%s). The process "
            "limit is then enforced by the worker's watch instead of the kernel, and a task "
            "can read what root can (see docs/sandbox.md)",
            why,
        )


def _reap_later(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _limit(reason: str, detail: str) -> SandboxEnd:
    return SandboxEnd("limit", type=reason, message=f"{reason}: {detail}")


def _from_message(message: dict[str, Any], sandbox: Sandbox) -> SandboxEnd:
    kind = message["t"]
    text = str(message.get("message", ""))
    if kind == "memory":
        return _limit(MEMORY_LIMIT, f"tried to use more than {sandbox.memory_mb} MB")
    if kind == "retry":
        delay = message.get("delay")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            delay = None
        return SandboxEnd("retry", message=text, delay=delay)
    if kind == "fail":
        return SandboxEnd("fail", type="Fail", message=text)
    if kind == "result":
        try:  # re-encoded here: the child's text is not trusted to be our JSON
            return SandboxEnd("result", result_json=dumps(loads(message.get("json"))))
        except (TypeError, ValueError) as exc:
            return SandboxEnd("error", type="SandboxError", message=f"invalid result: {exc}")
    tb = message.get("traceback")
    return SandboxEnd(
        "error",
        type=str(message.get("type", "Error")),
        message=text,
        traceback=tb if isinstance(tb, str) else None,
    )


def _check_network(sandbox: Sandbox, state: Any) -> None:
    """Never claim an isolation we did not get: warn (once per process) when the
    machine refused a network namespace."""
    global _warned_network
    if sandbox.network or _warned_network or state in ("namespace", "user-namespace"):
        return
    _warned_network = True
    log.warning(
        "sandbox: network isolation is unavailable on this machine (%s); sandboxed tasks "
        "can use the network. Run the worker as root, or allow unprivileged user "
        "namespaces, to isolate them (see docs/sandbox.md)",
        state,
    )
