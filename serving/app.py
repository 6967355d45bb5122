"""The FastAPI application: one typed endpoint per feature, plus listing and health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine import Engine, InputError, NotFoundError, RunOptions
from engine.errors import FeaturelmError
from engine.loader import LoadedFeature
from serving import problems

META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "How the result was produced: backend, model, attempts, tokens, cost, cache.",
    "additionalProperties": True,
}
OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "route": {"type": "string", "description": "Another route from the feature's allowed "
                                                   "list."},
        "cache": {"type": "string", "enum": ["default", "no-cache", "no-store"],
                  "description": "no-cache skips the cache read; no-store skips the write."},
    },
}


def _request_schema(feature: LoadedFeature) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["input"],
            "properties": {"input": feature.spec.input, "options": OPTIONS_SCHEMA}}


def _response_schema(feature: LoadedFeature) -> dict[str, Any]:
    return {"type": "object", "required": ["output", "meta"],
            "properties": {"output": feature.spec.output, "meta": META_SCHEMA}}


def parse_options(raw: Any) -> RunOptions:
    if raw is None:
        return RunOptions()
    if not isinstance(raw, dict) or set(raw) - {"route", "cache"}:
        raise InputError("options may contain only 'route' and 'cache'")
    cache = raw.get("cache", "default")
    route = raw.get("route")
    if cache not in ("default", "no-cache", "no-store") or not (
            route is None or isinstance(route, str)):
        raise InputError("options.cache must be default, no-cache or no-store; "
                         "options.route a string")
    return RunOptions(route=route, cache_read=cache != "no-cache", cache_write=cache != "no-store")


async def read_body(request: Request, limit: int) -> dict[str, Any]:
    body = await request.body()
    if len(body) > limit:
        raise InputError(f"request body is over the {limit}-byte limit", status=413)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InputError("request body is not valid JSON") from None
    if not isinstance(data, dict) or "input" not in data or set(data) - {"input", "options"}:
        raise InputError('request body must be {"input": {...}, "options": {...}}')
    return data


def create_app(engine: Engine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.aclose()

    app = FastAPI(title="featurelm", version="1", lifespan=lifespan,
                  description="Product features served as typed LLM-backed endpoints.")
    app.add_exception_handler(FeaturelmError, problems.featurelm_error)
    app.add_exception_handler(RequestValidationError, problems.validation_error)
    app.add_exception_handler(HTTPException, problems.http_error)
    app.add_exception_handler(Exception, problems.unexpected_error)
    body_limit = engine.config.limits.max_input_bytes + 4096

    async def call_feature(name: str, request: Request) -> JSONResponse:
        data = await read_body(request, body_limit)
        result = await engine.run(name, data["input"], options=parse_options(data.get("options")))
        return JSONResponse({"output": result.output, "meta": asdict(result.meta)})

    for feature in engine.registry.all():
        async def endpoint(request: Request, _name: str = feature.name) -> JSONResponse:
            return await call_feature(_name, request)

        app.add_api_route(
            f"/v1/features/{feature.name}", endpoint, methods=["POST"],
            name=f"run_{feature.name}", summary=feature.spec.description.split("\n")[0] or None,
            description=feature.spec.description, tags=["features"],
            openapi_extra={
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _request_schema(feature)}}},
                "responses": {"200": {"description": "Schema-valid output", "content": {
                    "application/json": {"schema": _response_schema(feature)}}}},
            })

    @app.post("/v1/features/{name}", include_in_schema=False)
    async def unknown_feature(name: str) -> JSONResponse:
        raise NotFoundError(f"unknown feature {name!r}")

    @app.get("/v1/features", tags=["features"])
    async def list_features() -> dict[str, Any]:
        return {"features": [{"name": f.name, "version": f.spec.version,
                              "description": f.spec.description}
                             for f in engine.registry.all()]}

    @app.get("/v1/features/{name}", tags=["features"])
    async def get_feature(name: str) -> dict[str, Any]:
        feature = engine.registry.get(name)
        if feature is None:
            raise NotFoundError(f"unknown feature {name!r}")
        spec = feature.spec
        return {"name": spec.name, "version": spec.version, "description": spec.description,
                "input": spec.input, "output": spec.output}

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
