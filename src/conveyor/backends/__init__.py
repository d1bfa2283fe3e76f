"""Storage engines, chosen by URL scheme."""

from __future__ import annotations

from conveyor.backends.base import Backend, Clock
from conveyor.config import parse_url
from conveyor.errors import BackendUnavailable


def create_backend(url: str, *, clock: Clock | None = None) -> Backend:
    """A new, unopened backend for ``url`` (the scheme was validated by ``parse_url``)."""
    scheme = parse_url(url)
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url, clock=clock)
    raise BackendUnavailable(
        f"the {scheme} backend is not available in this version of conveyor yet; "
        "use a sqlite:/// URL"
    )


__all__ = ["Backend", "create_backend"]
