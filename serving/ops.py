"""Operations endpoints: liveness, readiness (store, cache, backends, not draining), metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from featurelm.engine.errors import ForbiddenError
from featurelm.serving import metrics, problems
from featurelm.serving.auth import CallerDep
from featurelm.serving.kv import ResilientKV
from featurelm.serving.models import Health, Readiness
from featurelm.serving.state import Services, services

router = APIRouter(tags=["operations"])
log = logging.getLogger("featurelm.serving")
CHECK_TIMEOUT_S = 2.0
NOT_USED = "not used yet"
DEGRADED = "degraded"


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (restart it if this fails)."""
    return Health(status="ok")


async def _check(name: str, probe: asyncio.Future[None] | asyncio.Task[None]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
    except Exception as exc:
        log.warning("readiness check %s failed: %s", name, type(exc).__name__)
        return f"unreachable ({type(exc).__name__})"
    return "ok"


async def _shared_state(svc: Services) -> str:
    """Redis for limits and idempotency: "ok", or "degraded: ..." while calls run without it."""
    kv = svc.kv
    if not isinstance(kv, ResilientKV):
        return "ok"
    await kv.ping()  # bounded, never raises; a success ends a degradation early
    return kv.health()


def _backends(svc: Services) -> str:
    # A route whose every backend has an open breaker cannot answer anything.
    dead = svc.engine.unavailable_routes()
    return f"circuit open on route(s): {', '.join(dead)}" if dead else "ok"


@router.get("/readyz", response_model=Readiness,
            responses={503: {"description": "Not ready (draining, or a dependency is down)",
                             "content": {"application/json": {"schema": {
                                 "$ref": "#/components/schemas/Readiness"}}}}})
async def readyz(request: Request) -> Response:
    """Send traffic here? No while shutting down or while a dependency is unreachable."""
    svc = services(request)

    async def store() -> None:
        await (await svc.engine.store()).ping()

    checks = {
        "shutdown": "draining" if svc.lifecycle.draining else "ok",
        # With auth off and no key seen yet, no call depends on the store (it connects on
        # first use), so an unused store does not hold traffic back.
        "store": await _check("store", asyncio.ensure_future(store()))
        if svc.engine.store_needed else NOT_USED,
        "cache": await _shared_state(svc),
        "backends": _backends(svc),
    }
    # A degraded dependency is reported but keeps the replica in rotation: taking every
    # replica out because their shared Redis is down would turn a slowdown into an outage.
    ready = all(v in ("ok", NOT_USED) or v.startswith(DEGRADED) for v in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format",
          "content": {metrics.CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
    **problems.responses(401, 403)})
async def prometheus(request: Request, caller: CallerDep) -> Response:
    """Needs an admin key when auth is required: the labels name tenants and their costs."""
    if services(request).engine.config.auth == "required" and not caller.admin:
        raise ForbiddenError("/metrics needs an admin key")
    return Response(services(request).metrics.render(), media_type=metrics.CONTENT_TYPE)
