"""One ASGI application: the JSON API, /metrics and the dashboard (``conveyor serve``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from conveyor import __version__
from conveyor.app import App
from conveyor.web import api, dashboard
from conveyor.web.context import WebContext, context, metrics_reader
from conveyor.web.metrics import CONTENT_TYPE, Metrics
from conveyor.web.sampler import Sampler

SECRET_ENV = "CONVEYOR_WEB_SECRET"
#: Largest request body read (a batch of jobs); a job's own limit is the app's max_payload.
DEFAULT_MAX_BODY = 16 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(
    app: App,
    *,
    secret: bytes | str | None = None,
    public_metrics: bool = False,
    sample_interval: float = 2.0,
    max_body: int = DEFAULT_MAX_BODY,
) -> FastAPI:
    """The web server for ``app``. ``secret`` signs dashboard sessions (default:
    ``$CONVEYOR_WEB_SECRET``, else random, so sessions end when the server restarts)."""
    key = secret if secret is not None else os.environ.get(SECRET_ENV) or secrets.token_bytes(32)
    ctx = WebContext(
        app=app,
        secret=key.encode() if isinstance(key, str) else key,
        sampler=Sampler(app, interval=sample_interval),
        public_metrics=public_metrics,
    )
    metrics = Metrics(ctx.counts)

    @asynccontextmanager
    async def lifespan(_server: FastAPI) -> AsyncIterator[None]:
        await app.backend()  # a store that cannot be opened fails the start-up
        ctx.sampler.start()
        metrics.start(ctx)
        try:
            yield
        finally:
            await ctx.sampler.stop()
            await metrics.stop(ctx)
            await app.close_async()

    server = FastAPI(
        title="Conveyor",
        version=__version__,
        description=(
            "Submit and inspect background jobs. Every endpoint but /health needs "
            "`Authorization: Bearer <token>` (`conveyor token create`)."
        ),
        lifespan=lifespan,
        # FastAPI's /docs page loads its script from a CDN: not served (see /openapi.json).
        docs_url=None,
        redoc_url=None,
    )
    server.state.conveyor = ctx
    api.install(server)

    @server.get(
        "/metrics",
        tags=["server"],
        summary="Prometheus metrics (admin token, unless served with --public-metrics)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
        dependencies=[Depends(metrics_reader)],
    )
    async def metrics_endpoint(request: Request) -> Response:
        return Response(await metrics.render(context(request)), media_type=CONTENT_TYPE)

    @server.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    dashboard.install(server)
    server.add_middleware(_SecurityHeaders)
    server.add_middleware(_BodyLimit, limit=max_body)
    return server


class _BodyLimit:
    """413 for a request body over ``limit`` bytes, announced or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, self.limit)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body over the limit of {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _SecurityHeaders:
    """Pages load nothing from elsewhere and run no inline script (CSP)."""

    HEADERS = [
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def serve(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    public_metrics: bool = False,
    log_level: str = "info",
) -> None:
    """Run the server in this process until interrupted."""
    import uvicorn

    server = create_app(app, public_metrics=public_metrics)
    config = uvicorn.Config(
        server, host=host, port=port, log_level=log_level, proxy_headers=False, lifespan="on"
    )
    uvicorn.Server(config).run()
