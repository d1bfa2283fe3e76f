"""What every request handler needs: the Conveyor app, who is asking, the server's state."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conveyor.metrics import Recorder, record_key
from conveyor.web import tokens

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.backends.base import Backend
    from conveyor.web.sampler import Sampler


def _server_id() -> str:
    return f"serve/{socket.gethostname()}/{os.getpid()}"


@dataclass
class WebContext:
    app: App
    #: Signs dashboard session cookies and CSRF tokens.
    secret: bytes
    sampler: Sampler
    #: Serve /metrics without a token (for a scraper on a trusted network).
    public_metrics: bool = False
    #: What this server counts itself for /metrics (external completions).
    counts: Recorder = field(default_factory=lambda: Recorder(record_key(_server_id())))
    extra: dict[str, Any] = field(default_factory=dict)

    async def backend(self) -> Backend:
        return await self.app.backend()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: one tenant, or every tenant (admin)."""

    token_id: str
    tenant: str | None
    admin: bool

    def sees(self, tenant: str | None) -> bool:
        return self.admin or (self.tenant is not None and tenant == self.tenant)

    @classmethod
    def of(cls, info: tokens.TokenInfo) -> Principal:
        return cls(token_id=info.id, tenant=info.tenant, admin=info.admin)


class ApiError(Exception):
    """Answered as ``{"detail": ...}`` with ``status`` (see ``api.install_errors``)."""

    def __init__(self, status: int, detail: Any, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.conveyor
    return ctx


_bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `conveyor token create` (tenant or admin)",
)


async def principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> Principal:
    """The bearer token's grant; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required (Authorization: Bearer cvy_...)")
    info = await tokens.find_token(await context(request).backend(), credentials.credentials)
    if info is None:
        raise _unauthorized("unknown or revoked token")
    return Principal.of(info)


async def admin(who: Principal = Depends(principal)) -> Principal:  # noqa: B008
    if not who.admin:
        raise ApiError(403, "this needs an admin token")
    return who


async def metrics_reader(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> None:
    if context(request).public_metrics:
        return
    if not (await principal(request, credentials)).admin:
        raise ApiError(403, "metrics need an admin token (or serve --public-metrics)")


def _unauthorized(detail: str) -> ApiError:
    error = ApiError(401, detail)
    error.headers["WWW-Authenticate"] = "Bearer"
    return error
