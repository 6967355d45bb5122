"""Request limits: body size (before and while reading), per-tenant rate limit and token quota.

Rate limit and quota are fixed windows counted in the shared KV (Redis across replicas),
keyed by the tenant the API key resolved to; anonymous calls (auth: off) share one bucket.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featurelm.engine.config import HttpConfig
from featurelm.engine.errors import BodyTooLargeError, QuotaExceededError, RateLimitedError
from featurelm.serving import problems
from featurelm.serving.kv import KV

ANONYMOUS = "-"


def _too_large(limit: int) -> BodyTooLargeError:
    return BodyTooLargeError(f"the request body is over the {limit}-byte limit")


class _BodyTimedOut(BaseException):
    """Raised from `receive` when a body stops arriving (a BaseException: no handler on the
    way may turn it into an error response of its own)."""


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes: at once on Content-Length, else as they stream in;
    and bodies that stop arriving for `timeout_s` (a half-open or stalled client would
    otherwise hold its request, and a worker's memory, forever)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(scope, send)
                    return
        received = 0
        started = False

        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()  # waiting for a disconnect (a stream): no bound
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimedOut from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised from `receive`: the app unwinds and this middleware answers.
                    raise _too_large(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(scope, send)
        except _BodyTimedOut:
            if not started:
                await _send_problem(send, 408, "Request timeout", "timeout",
                                    f"the request body stopped arriving for {self.timeout_s:g}s")

    async def _refuse(self, scope: Scope, send: Send) -> None:
        status, body, _ = problems.from_exception(_too_large(self.limit))
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", problems.MEDIA_TYPE.encode()),
            (b"content-length", str(len(data)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


async def _send_problem(send: Send, status: int, title: str, kind: str, detail: str) -> None:
    data = json.dumps(problems.body(status, title, kind, detail)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", problems.MEDIA_TYPE.encode()),
        (b"content-length", str(len(data)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _retry_after(window_s: int, now: float) -> int:
    return max(1, math.ceil(window_s - now % window_s))


class Limiter:
    """Per-tenant request rate and token quota, in fixed windows of wall-clock time."""

    def __init__(self, kv: KV, config: HttpConfig) -> None:
        self.kv = kv
        self.config = config

    async def take(self, tenant: str | None, calls: int = 1) -> None:
        """Count `calls` against the tenant's minute; 429 once over the limit."""
        limit = self.config.rate_limit_per_minute
        if limit == 0:
            return
        now = time.time()
        key = f"rate:{tenant or ANONYMOUS}:{int(now // 60)}"
        count = await self.kv.incr(key, calls, 60)
        if count > limit:
            raise RateLimitedError(f"over {limit} calls per minute for this tenant",
                                   retry_after=_retry_after(60, now))

    def _quota_key(self, tenant: str | None, now: float) -> str:
        window = self.config.token_quota_window_s
        return f"tokens:{tenant or ANONYMOUS}:{int(now // window)}"

    async def check_quota(self, tenant: str | None) -> None:
        """429 if the tenant has used its token quota for this window."""
        quota = self.config.token_quota
        if quota == 0:
            return
        now = time.time()
        used = int(await self.kv.get(self._quota_key(tenant, now)) or 0)
        if used >= quota:
            raise QuotaExceededError(
                f"this tenant used its {quota} tokens for the current window",
                retry_after=_retry_after(self.config.token_quota_window_s, now))

    async def spend(self, tenant: str | None, tokens: int) -> None:
        if self.config.token_quota == 0 or tokens <= 0:
            return
        await self.kv.incr(self._quota_key(tenant, time.time()), tokens,
                           self.config.token_quota_window_s)
