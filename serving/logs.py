"""Structured JSON logs with a request id on every line, and the per-request access log.

The access log names method, route, status, tenant, feature and latency: never the prompt,
the input or the output, which may hold a tenant's private data.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featurelm.engine import json_bytes
from featurelm.engine.traces import request_id as engine_request_id
from featurelm.serving.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
#: A client's request id is echoed only if it is short and plain (it ends up in our logs).
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The engine's: call traces are stored under the id the logs and X-Request-ID show.
request_id = engine_request_id
access_log = logging.getLogger("featurelm.access")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if rid := getattr(record, "request_id", None) or request_id.get():
            data["request_id"] = rid
        data.update({k: v for k, v in record.__dict__.items()
                     if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = record.exc_info[0].__name__
            data["traceback"] = self.formatException(record.exc_info)
        return json_bytes.dumps(data, default=str).decode()


def _stamp_request_id(record: logging.LogRecord) -> bool:
    # At emit time, still inside the request's context (formatting may happen later).
    if not hasattr(record, "request_id"):
        record.request_id = request_id.get()
    return True


def setup_logging(level: int = logging.INFO) -> None:
    """Send every log line (featurelm's and uvicorn's) to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_stamp_request_id)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The JSON lines carry no source location, thread or process: skip collecting them for
    # every record (logging's documented optimisations; the caller lookup walks the stack).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our access log replaces uvicorn's (which would log full query strings, untyped).
    logging.getLogger("uvicorn.access").disabled = True


class _RequestIds:
    """Random 16-hex-digit request ids from the OS CSPRNG, read in blocks: one getrandom call
    per 512 requests instead of one per request (a syscall on the hot path)."""

    ID_BYTES = 8
    BLOCK = 512 * ID_BYTES

    def __init__(self) -> None:
        self._reset()
        # A forked worker must not hand out the ids its parent has buffered.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._block = b""
        self._at = 0

    def __call__(self) -> str:
        if self._at >= len(self._block):
            self._block, self._at = os.urandom(self.BLOCK), 0
        start, self._at = self._at, self._at + self.ID_BYTES
        return self._block[start:self._at].hex()


new_request_id = _RequestIds()


#: Scope key under which a handler outside FastAPI's router names its route template.
ROUTE = "featurelm.route"


def _route_template(scope: Scope) -> str:
    # Label by template, never by raw path: the router records the matched route in the scope.
    if ROUTE in scope:
        return str(scope[ROUTE])
    return str(getattr(scope.get("route"), "path", "unmatched"))


class RequestContextMiddleware:
    """Assigns the request id (echoed in X-Request-ID), times the request, logs and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"]
                      if k == b"x-request-id"), "")
        rid = given if _SAFE_ID.match(given) else new_request_id()
        token = request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (REQUEST_ID_HEADER.lower().encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.on_request(scope["method"], route, status, seconds)
            state = scope.get("state", {})
            access_log.info("request", extra={
                "request_id": rid, "method": scope["method"], "route": route, "status": status,
                "duration_ms": round(seconds * 1000, 2), "tenant": state.get("tenant"),
                "feature": state.get("feature")})
            request_id.reset(token)
