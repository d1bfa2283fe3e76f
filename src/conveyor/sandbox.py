"""``Sandbox``: the limits a sandboxed task's attempts run under (see docs/sandbox.md).

This module only describes and validates the limits; ``conveyor.worker.sandbox`` runs an
attempt under them in a child process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

#: The reasons an attempt ends when it breaks a limit; each is the start of the error
#: message (``"cpu_limit: ..."``) under the error type ``SANDBOX_LIMIT_ERROR``.
CPU_LIMIT: Final = "cpu_limit"
MEMORY_LIMIT: Final = "memory_limit"
WALL_LIMIT: Final = "wall_limit"
PROCESS_LIMIT: Final = "process_limit"
LIMIT_REASONS: Final = (CPU_LIMIT, MEMORY_LIMIT, WALL_LIMIT, PROCESS_LIMIT)
SANDBOX_LIMIT_ERROR: Final = "SandboxLimit"

#: What a sandboxed attempt's environment always has, unless ``env`` overrides it.
BASE_ENV: Final[Mapping[str, str]] = MappingProxyType(
    {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """Run each attempt of a task in a fresh, limited child process (Linux).

    ``None`` for a limit means "no limit of this kind". The defaults are deliberately
    tight enough to stop a runaway task and loose enough for ordinary work.

    * ``cpu_seconds``: CPU time of the attempt's process (``RLIMIT_CPU``).
    * ``memory_mb``: new memory the attempt may allocate (``RLIMIT_DATA``, counted from
      what the process holds when it starts).
    * ``wall_seconds``: elapsed time, enforced by the worker.
    * ``max_processes``: processes the attempt may run at once, itself included.
    * ``network``: ``False`` cuts the attempt off every network (a new, empty network
      namespace) where the machine allows it; a warning is logged once where it does not.
    * ``env``: the attempt's whole environment, besides a minimal ``PATH`` and ``LANG``.
    * ``retry_on_limit``: a broken limit ends the job ``dead`` by default (running it
      again would break it again); ``True`` retries it like any other failure.
    """

    cpu_seconds: int | None = 60
    memory_mb: int | None = 512
    wall_seconds: float | None = 300.0
    max_processes: int | None = 32
    network: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    retry_on_limit: bool = False

    def __post_init__(self) -> None:
        _check_int(self.cpu_seconds, "cpu_seconds")
        _check_int(self.memory_mb, "memory_mb")
        _check_int(self.max_processes, "max_processes")
        wall = self.wall_seconds
        if wall is not None and (
            isinstance(wall, bool)
            or not isinstance(wall, (int, float))
            or not math.isfinite(wall)
            or wall <= 0
        ):
            raise ValueError(f"Sandbox wall_seconds must be a number > 0 or None, got {wall!r}")
        if not isinstance(self.network, bool):
            raise TypeError("Sandbox network must be True or False")
        if not isinstance(self.retry_on_limit, bool):
            raise TypeError("Sandbox retry_on_limit must be True or False")
        if not isinstance(self.env, Mapping):
            raise TypeError(f"Sandbox env must be a mapping, not {type(self.env).__name__}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise ValueError(f"Sandbox env: invalid variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"Sandbox env: the value of {key} must be a string without NUL")
        # Frozen all the way down: a shared Sandbox must not change under running tasks.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def environment(self) -> dict[str, str]:
        """The complete environment of an attempt."""
        return {**BASE_ENV, **self.env}


def _check_int(value: Any, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Sandbox {name} must be an integer >= 1 or None, got {value!r}")
