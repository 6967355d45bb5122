"""RFC 9457 problem+json responses for every error the service returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine.errors import FeaturelmError

PROBLEM_TYPE = "https://featurelm.dev/problems/"


def problem(status: int, title: str, kind: str, detail: str = "",
            extra: dict[str, Any] | None = None,
            headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"type": PROBLEM_TYPE + kind, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type="application/problem+json",
                        headers=dict(headers) if headers else None)


async def featurelm_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FeaturelmError)
    return problem(exc.status, type(exc).__name__, exc.kind, str(exc), exc.public_detail())


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"path": "$." + ".".join(str(p) for p in e.get("loc", ())[1:]),
               "message": str(e.get("msg", ""))} for e in exc.errors()[:20]]
    return problem(422, "Invalid request", "request", "the request body is not valid",
                   {"errors": errors})


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, str(exc.detail), "http", headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log (by the server), never to the caller.
    return problem(500, "Internal error", "internal", "an unexpected error occurred")
