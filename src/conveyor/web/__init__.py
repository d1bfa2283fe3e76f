"""The HTTP side of Conveyor (``pip install conveyor[web]``; ``conveyor serve APP``).

``create_app(app)`` builds the ASGI application (JSON API, /metrics, dashboard);
``serve(app)`` runs it on uvicorn. Imported lazily so that ``conveyor.web.tokens`` (used
by the CLI) works without the web extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.web.server import create_app, serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from conveyor.web import server

        return getattr(server, name)
    raise AttributeError(name)
