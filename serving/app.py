"""The app factory: builds the FastAPI app around one Engine, wiring routes, limits, metrics,
logs and errors. Each concern lives in its own module; this one only assembles them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from featurelm.engine import Engine
from featurelm.serving import admin, calls, console, features, ops, problems
from featurelm.serving.idempotency import Idempotency
from featurelm.serving.kv import KVCollector, ResilientKV, kv_for
from featurelm.serving.limits import BodyLimitMiddleware, Limiter
from featurelm.serving.logs import RequestContextMiddleware
from featurelm.serving.metrics import EngineCollector, Metrics
from featurelm.serving.openapi import install as install_openapi
from featurelm.serving.state import Lifecycle, Services

log = logging.getLogger("featurelm.serving")


def operation_id(route: APIRoute) -> str:
    """The handler's name (`apply_override`), not FastAPI's name+path+method default, so a
    generated client's functions and body models read `apply_override`, not
    `apply_override_v1_tenants_tenant_overrides_feature_put`."""
    return route.name


def create_app(engine: Engine, *, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The HTTP service for `engine`; `lifecycle` is shared with the server for draining."""
    config = engine.config
    kv = kv_for(config.cache, config.cache_settings)
    metrics = Metrics(config.routes)
    if isinstance(kv, ResilientKV):
        metrics.registry.register(KVCollector(kv))
    engine.on_call(metrics.on_call)
    metrics.registry.register(EngineCollector(engine.stats))
    svc = Services(engine=engine, kv=kv, limiter=Limiter(kv, config.http),
                   idempotency=Idempotency(kv, config.http.idempotency_ttl_s), metrics=metrics,
                   lifecycle=lifecycle or Lifecycle())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.auth == "off":
            log.warning("auth is off: calls without an API key run as no tenant. Set "
                        "`auth: required` in featurelm.yaml for any shared deployment.",
                        extra={"auth": "off"})
        else:
            log.info("auth is required: every call needs an API key", extra={"auth": "required"})
        await engine.start()
        try:
            yield
        finally:
            await console.aclose(app)
            await kv.aclose()
            await engine.aclose()

    app = FastAPI(title="featurelm", version="1", lifespan=lifespan,
                  generate_unique_id_function=operation_id,
                  description="Product features served as typed LLM-backed endpoints.")
    app.state.services = svc
    problems.install(app)
    app.include_router(features.router)
    app.include_router(admin.router)
    app.include_router(calls.router)
    app.include_router(ops.router)
    console.install(app)
    install_openapi(app, engine.features(), config.http.batch_max_items)
    # Innermost first. Feature calls are answered ahead of FastAPI's router; the request id
    # (outermost) covers them and the body-limit refusals too.
    app.add_middleware(features.FeatureCalls, svc=svc)
    app.add_middleware(BodyLimitMiddleware, limit=config.http.max_body_bytes,
                       timeout_s=config.http.body_timeout_s)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
