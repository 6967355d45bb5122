"""Calls after the fact: read traces (`GET /v1/calls/{request_id}`, `GET /v1/calls`) and
give feedback on a call (`POST /v1/feedback`). A tenant sees only its own calls; another
tenant's answers 404, as if it did not exist. An admin key sees every tenant's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from featurelm.engine.contracts import TENANT_NAME
from featurelm.engine.errors import InputError, NotFoundError
from featurelm.engine.schemas import violations
from featurelm.engine.traces import parse_since
from featurelm.serving import problems
from featurelm.serving.auth import Caller, CallerDep
from featurelm.serving.state import services

router = APIRouter(tags=["calls"])
REQUEST_ID = r"^[A-Za-z0-9._:-]{1,64}$"


def scope(caller: Caller) -> object:
    """Whose calls `caller` may read: every tenant's (admin) or its own (None: no tenant)."""
    from featurelm.engine.store import ALL_TENANTS

    return ALL_TENANTS if caller.admin else caller.tenant


async def _calls(request: Request, caller: Caller, request_id: str) -> list[dict[str, Any]]:
    store = await services(request).engine.store()
    found = await store.calls(tenant=scope(caller), request_id=request_id, data=True)
    if not found:
        raise NotFoundError(f"no traced call with request id {request_id!r}")
    return [json.loads(c.data or "{}") for c in found]


@router.get("/v1/calls/{request_id}", responses=problems.responses(401, 404, 422))
async def get_call(request: Request, caller: CallerDep,
                   request_id: Annotated[str, Path(pattern=REQUEST_ID)]) -> dict[str, Any]:
    """The traces stored under one request id (a batch request has one per input), newest
    first: rendered prompt, attempts with raw replies and errors, timings, usage, output."""
    return {"request_id": request_id, "calls": await _calls(request, caller, request_id)}


@router.get("/v1/calls", responses=problems.responses(401, 404, 422))
async def list_calls(
        request: Request, caller: CallerDep,
        feature: Annotated[str | None, Query(max_length=64)] = None,
        tenant: Annotated[str | None, Query(pattern=f"^{TENANT_NAME.pattern}$")] = None,
        since: Annotated[str | None, Query(max_length=40, description="7d, 24h, 30m, 90s or "
                                                                      "an ISO 8601 time")] = None,
        status: Annotated[str | None, Query(pattern="^(ok|error)$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[int | None, Query(ge=1, description="`next` of the previous page")
                          ] = None) -> dict[str, Any]:
    """Traced calls, newest first, a page at a time (follow `next`)."""
    whose = scope(caller)
    if tenant is not None and not caller.admin and tenant != caller.tenant:
        raise NotFoundError(f"unknown tenant {tenant!r}")
    if tenant is not None:
        whose = tenant
    store = await services(request).engine.store()
    found = await store.calls(tenant=whose, feature=feature, status=status,
                              since=parse_since(since) if since else None,
                              before=cursor, limit=limit + 1)
    page = found[:limit]
    return {"calls": [{"id": c.id, "request_id": c.request_id, "tenant": c.tenant,
                       "feature": c.feature, "status": c.status,
                       "created_at": c.created_at.isoformat(), "latency_ms": c.latency_ms}
                      for c in page],
            "next": page[-1].id if len(found) > limit else None}


class FeedbackIn(BaseModel):
    """Feedback on one call: a score, a label, a corrected output, or any of them."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=REQUEST_ID)
    score: float | None = Field(None, ge=0, le=1, description="0 = wrong .. 1 = right.")
    label: str | None = Field(None, min_length=1, max_length=64,
                              description="Your own category, e.g. 'wrong-language'.")
    correction: dict[str, Any] | None = Field(
        None, description="The output the call should have given; must satisfy the "
                          "feature's output schema.")
    comment: str = Field("", max_length=2000)


@router.post("/v1/feedback", status_code=201, responses=problems.responses(401, 404, 422))
async def post_feedback(body: FeedbackIn, request: Request,
                        caller: CallerDep) -> dict[str, Any]:
    """Record feedback on a traced call of the caller's (an admin: of any tenant)."""
    from featurelm.engine.store import Feedback

    if body.score is None and body.label is None and body.correction is None:
        raise InputError("feedback needs a score, a label or a correction")
    svc = services(request)
    [call, *_] = await _calls(request, caller, body.request_id)
    feature = svc.engine.feature(str(call.get("feature")))
    if body.correction is not None:
        if feature is None:
            raise NotFoundError(f"feature {call.get('feature')!r} is no longer served")
        problems_ = violations(feature.spec.output, body.correction)
        if problems_:
            raise InputError(f"correction does not match the {feature.name} output schema",
                             problems_)
    version = call.get("override_version")
    tenant = call.get("tenant")
    store = await svc.engine.store()
    await store.add_feedback(Feedback(
        body.request_id, tenant, str(call.get("feature")),
        version if isinstance(version, int) else None, body.score, body.label,
        None if body.correction is None else json.dumps(body.correction, ensure_ascii=False),
        body.comment, caller.actor, datetime.now(UTC)))
    svc.metrics.on_feedback(str(call.get("feature")), tenant, version, body.score, body.label,
                            body.correction is not None)
    return {"request_id": body.request_id, "feature": call.get("feature"), "accepted": True}
