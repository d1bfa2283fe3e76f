"""Webhook registration and delivery log (``/webhooks``); delivery itself is notify.py."""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor import notify
from conveyor.job import JobState
from conveyor.web.context import ApiError, Principal, WebContext, context, principal
from conveyor.web.schemas import ErrorOut, Name, Problem

Ctx = Annotated[WebContext, Depends(context)]
Who = Annotated[Principal, Depends(principal)]
HookId = Annotated[str, Path(min_length=1, max_length=64)]
EventName = Literal["job.succeeded", "job.retrying", "job.dead", "job.cancelled"]
_SCAN = 5000

router = APIRouter(tags=["webhooks"])


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=8, max_length=2000)]
    events: Annotated[list[EventName], Field(min_length=1, max_length=len(notify.EVENTS))]
    tenant: Name | None = Field(
        default=None, description="Defaults to the token's tenant; admins: None is every tenant"
    )
    queue: Name | None = Field(default=None, description="Only this queue's events")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise ValueError("url must be an http:// or https:// URL")
        return url


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    tenant: str | None
    queue: str | None
    created_at: float

    @classmethod
    def of(cls, hook: notify.Webhook) -> WebhookOut:
        return cls(
            id=hook.id,
            url=hook.url,
            events=list(hook.events),
            tenant=hook.tenant,
            queue=hook.queue,
            created_at=hook.created_at,
        )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Signs every delivery (HMAC-SHA256); shown only now")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class DeliveryOut(BaseModel):
    job_id: str
    event: str | None
    event_job_id: str | None
    state: JobState
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    finished_at: datetime | None
    result: Any
    errors: list[ErrorOut]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Problem} for c in codes}


@router.post(
    "/webhooks", status_code=201, response_model=WebhookCreated, responses=_problems(401, 403)
)
async def create_webhook(body: WebhookCreate, ctx: Ctx, who: Who) -> WebhookCreated:
    """Register a URL for events of a tenant (and optionally one queue)."""
    tenant = body.tenant
    if not who.admin:
        if tenant is not None and tenant != who.tenant:
            raise ApiError(403, f"this token may only register webhooks for {who.tenant!r}")
        tenant = who.tenant
    hook = notify.Webhook(
        id=secrets.token_hex(8),
        url=body.url,
        events=tuple(dict.fromkeys(body.events)),
        tenant=tenant,
        queue=body.queue,
        secret="whsec_" + secrets.token_urlsafe(32),
        created_at=time.time(),
    )
    await (await ctx.backend()).put_record(notify.KIND, hook.id, hook.to_json())
    return WebhookCreated(**WebhookOut.of(hook).model_dump(), secret=hook.secret)


@router.get("/webhooks", response_model=WebhookList, responses=_problems(401))
async def list_webhooks(ctx: Ctx, who: Who) -> WebhookList:
    hooks = await _all(ctx)
    return WebhookList(webhooks=[WebhookOut.of(h) for h in hooks if _sees(who, h)])


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses=_problems(401, 404),
)
async def delete_webhook(webhook_id: HookId, ctx: Ctx, who: Who) -> Response:
    await _visible(ctx, who, webhook_id)
    await (await ctx.backend()).delete_record(notify.KIND, webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryList,
    responses=_problems(401, 404),
)
async def deliveries(
    webhook_id: HookId,
    ctx: Ctx,
    who: Who,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    """The delivery log: one delivery job per event, newest first, with every attempt."""
    hook = await _visible(ctx, who, webhook_id)
    backend = await ctx.backend()
    jobs = await backend.query(task=notify.DELIVER_TASK, tenant=hook.tenant, limit=_SCAN)
    found = []
    for job in jobs:
        if not job.args or job.args[0] != hook.id:
            continue
        event = job.args[1] if len(job.args) > 1 and isinstance(job.args[1], dict) else {}
        found.append(
            DeliveryOut(
                job_id=job.id,
                event=event.get("event"),
                event_job_id=event.get("job_id"),
                state=job.state,
                attempt=job.attempt,
                max_attempts=job.max_attempts,
                enqueued_at=job.enqueued_at,
                finished_at=job.finished_at,
                result=job.result,
                errors=[ErrorOut.of(e) for e in job.errors],
            )
        )
        if len(found) >= limit:
            break
    return DeliveryList(deliveries=found)


async def _all(ctx: WebContext) -> list[notify.Webhook]:
    records = await (await ctx.backend()).list_records(notify.KIND)
    return sorted((notify.Webhook.from_json(k, v) for k, v in records), key=lambda h: h.created_at)


def _sees(who: Principal, hook: notify.Webhook) -> bool:
    return who.admin or (hook.tenant is not None and hook.tenant == who.tenant)


async def _visible(ctx: WebContext, who: Principal, webhook_id: str) -> notify.Webhook:
    text = await (await ctx.backend()).get_record(notify.KIND, webhook_id)
    hook = None if text is None else notify.Webhook.from_json(webhook_id, text)
    if hook is None or not _sees(who, hook):
        raise ApiError(404, f"no webhook with id {webhook_id!r}")
    return hook
