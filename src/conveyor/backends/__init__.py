"""Storage engines, chosen by URL scheme."""

from __future__ import annotations

import importlib
import importlib.util

from conveyor.backends.base import Backend, Clock
from conveyor.config import parse_url
from conveyor.errors import BackendUnavailable

# engine -> (module, class, pip extra). A fixed table in code: no class is ever imported
# by a name that came from configuration or stored data.
_ENGINES: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("conveyor.backends.sqlite", "SQLiteBackend", None),
    "postgresql": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
    "redis": ("conveyor.backends.redis", "RedisBackend", "redis"),
}


def available_engines() -> list[str]:
    """Engines whose backend ships in this installation."""
    return [name for name, (module, _, _) in _ENGINES.items() if importlib.util.find_spec(module)]


def create_backend(url: str, *, clock: Clock | None = None) -> Backend:
    """A new, unopened backend for ``url`` (the scheme was validated by ``parse_url``)."""
    engine = parse_url(url)
    module_name, class_name, extra = _ENGINES[engine]
    if importlib.util.find_spec(module_name) is None:
        raise BackendUnavailable(
            f"the {engine} backend is not available in this version of conveyor yet; "
            "use a sqlite:/// URL"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {engine} backend needs extra packages: pip install 'conveyor[{extra}]' ({exc})"
        ) from exc
    backend_class: type[Backend] = getattr(module, class_name)
    return backend_class(url, clock=clock)


__all__ = ["Backend", "available_engines", "create_backend"]
