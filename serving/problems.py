"""RFC 9457 problem+json responses for every error the service returns, and their schema.

Statuses come from the engine's one table (`featurelm.engine.errors.HTTP_STATUS`); this module
only turns an error into a body and headers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from featurelm.engine.errors import FeaturelmError, UnauthorizedError

PROBLEM_TYPE = "https://featurelm.dev/problems/"
MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("featurelm.serving")

#: The OpenAPI schema of every error body (components/schemas/Problem).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem: what went wrong, never a stack trace or a secret.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {"type": "array", "description": "Each problem found, with a JSON path where "
                                                    "it applies.",
                   "items": {"type": "object"}},
    },
    "additionalProperties": True,
}

#: Status -> description, for the `responses` of each operation in the OpenAPI spec.
DESCRIPTIONS = {
    401: "Missing or unknown API key",
    403: "The key may not use this endpoint",
    404: "No such feature, tenant or version for this caller",
    409: "A request with this Idempotency-Key is still in progress",
    413: "Request body or input over the size or token budget",
    415: "Unsupported media type",
    422: "The request does not match the schema (errors carry JSON paths)",
    429: "Rate limit or token quota exceeded (see Retry-After)",
    502: "The backend failed or produced no schema-valid output",
    503: "A dependency (store, cache) is unavailable",
    504: "The backend did not answer within the deadline",
}


#: What a client must send after a 401 (RFC 6750).
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="featurelm"'}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all problem+json."""
    return {status: {"description": DESCRIPTIONS[status], "content": {
        MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for status in statuses}


def body(status: int, title: str, kind: str, detail: str = "",
         extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"type": PROBLEM_TYPE + kind, "title": title, "status": status}
    if detail:
        data["detail"] = detail
    data.update(extra or {})
    return data


def problem(status: int, title: str, kind: str, detail: str = "",
            extra: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(status, title, kind, detail, extra), status_code=status,
                        media_type=MEDIA_TYPE, headers=dict(headers) if headers else None)


def from_exception(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception, safe to show a caller."""
    if isinstance(exc, FeaturelmError):
        status = exc.status
        headers: dict[str, str] = {}
        if exc.retry_after:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if isinstance(exc, UnauthorizedError):
            headers.update(CHALLENGE)
        return status, body(status, exc.title or type(exc).__name__, exc.kind, str(exc),
                            exc.public_detail()), headers
    log.error("unexpected error", exc_info=exc)
    return 500, body(500, "Internal error", "internal", "an unexpected error occurred"), {}


def exception_response(exc: BaseException) -> JSONResponse:
    status, data, headers = from_exception(exc)
    return JSONResponse(data, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def featurelm_error(request: Request, exc: Exception) -> JSONResponse:
    return exception_response(exc)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"path": "$." + ".".join(str(p) for p in e.get("loc", ())[1:]),
               "message": str(e.get("msg", ""))} for e in exc.errors()[:20]]
    return problem(422, "Invalid request", "request", "the request is not valid",
                   {"errors": errors})


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's "error parsing the body": the same 422 as any other malformed request.
        return problem(422, "Invalid request", "request", "the request body is not valid JSON")
    kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
    return problem(exc.status_code, str(exc.detail), kind, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Route every error to a problem+json response."""
    app.add_exception_handler(FeaturelmError, featurelm_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    # The traceback goes to the log, never to the caller.
    app.add_exception_handler(Exception, featurelm_error)
