"""``conveyor serve`` and ``conveyor token``: the web server and its API tokens."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from conveyor import __version__
from conveyor.cli._base import (
    CliError,
    CliState,
    InputError,
    cli,
    console,
    duration,
    load_app_or_exit,
    print_json,
    store_errors,
)


@cli.command()
@click.argument("app_path", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--public-metrics", is_flag=True, help="Serve /metrics without a token (trusted networks)."
)
@click.pass_obj
def serve(cfg: CliState, app_path: str, host: str, port: int, public_metrics: bool) -> None:
    """Serve the HTTP API, /metrics and the dashboard for APP."""
    try:
        from conveyor.web.server import serve as run_server
    except ImportError as exc:
        raise InputError(
            f"the web server needs the web extra: pip install 'conveyor[web]' ({exc})"
        ) from None
    app = load_app_or_exit(app_path)
    if cfg.url_given and cfg.url:
        app.url = cfg.url
    click.echo(f"conveyor {__version__}: serving {app_path} ({app.url}) on http://{host}:{port}/")
    run_server(
        app,
        host=host,
        port=port,
        public_metrics=public_metrics,
        log_level=os.environ.get("CONVEYOR_LOG_LEVEL", "info").lower(),
    )


@cli.group()
def token() -> None:
    """Create, list and revoke API tokens (stored hashed in the store)."""


def _with_backend(cfg: CliState, use: Callable[[Any], Any]) -> Any:
    """Run ``await use(backend)`` on a backend of the store, opened for this command."""
    from conveyor.backends import create_backend

    app = cfg.app()

    async def run() -> Any:
        backend = create_backend(app.url)
        await backend.open()
        try:
            return await use(backend)
        finally:
            await backend.close()

    with store_errors():
        return asyncio.run(run())


@token.command("create")
@click.option("--tenant", help="The tenant whose jobs the token sees and submits.")
@click.option("--admin", is_flag=True, help="See and act on every tenant's jobs.")
@click.option("--name", help="A note to recognise the token by in `token list`.")
@click.pass_obj
def token_create(cfg: CliState, tenant: str | None, admin: bool, name: str | None) -> None:
    """Create a token and print it (once: only its hash is stored)."""
    from conveyor.web import tokens

    if not admin and not tenant:
        raise InputError("give --tenant NAME (or --admin for a token that sees every tenant)")

    async def create(backend: Any) -> tuple[str, Any]:
        return await tokens.create_token(backend, tenant=tenant, admin=admin, name=name)

    try:
        secret, info = _with_backend(cfg, create)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    scope = "admin" if admin else f"tenant {tenant}"
    click.echo(f"created token {info.id} ({scope}); store it now, it is not shown again:", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def token_list(cfg: CliState, as_json: bool) -> None:
    """List tokens (ids and grants; the tokens themselves are not stored)."""
    from conveyor.web import tokens

    found = _with_backend(cfg, tokens.list_tokens)
    if as_json:
        print_json([asdict(t) for t in found])
        return
    if not found:
        console().print("no tokens")
        return
    table = Table(title=f"{len(found)} token(s)", title_justify="left")
    for name in ("id", "scope", "name", "created"):
        table.add_column(name)
    for t in found:
        scope = "admin" + (f" (tenant {t.tenant})" if t.tenant else "") if t.admin else t.tenant
        table.add_row(Text(t.id), Text(scope or ""), Text(t.name or ""), _ago_ts(t.created_at))
    console().print(table)


def _ago_ts(ts: float) -> str:
    return duration(max(0.0, time.time() - ts)) + " ago"


@token.command("revoke")
@click.argument("token_id")
@click.pass_obj
def token_revoke(cfg: CliState, token_id: str) -> None:
    """Revoke the token with id TOKEN_ID (from `token list`); it stops working at once."""
    from conveyor.web import tokens

    async def revoke(backend: Any) -> Any:
        return await tokens.revoke_token(backend, token_id)

    try:
        info = _with_backend(cfg, revoke)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"revoked token {info.id}")
