"""Call traces: what one call sent, got back and spent, kept for debugging (opt-in).

A sampled call carries a `Trace` through `Engine.prepare`/`execute`; when it ends the trace is
handed to the `TraceWriter`, which redacts, bounds and stores it from a background task, so
the call never waits on the store. Unsampled calls carry None and pay one dict lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from featurelm.engine.config import TracesConfig, TraceSettings

if TYPE_CHECKING:
    from featurelm.engine.dispatch import CallRecord
    from featurelm.engine.store import Store
    from featurelm.engine.types import Completion, Message

log = logging.getLogger("featurelm.traces")

#: The id of the request being served; the HTTP layer sets it (X-Request-ID), so traces and
#: log lines name the same id. Outside a request a trace gets an id of its own.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                      default=None)
#: The trace of the call running in this context, for the dispatcher's usage records.
current_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("current_trace",
                                                                            default=None)
REDACTED = "[redacted]"
#: Traces waiting for the store; past this, new ones are dropped (and counted), never queued
#: without bound behind a slow store.
QUEUE_LIMIT = 1000
BATCH = 100
PURGE_EVERY_S = 3600.0
#: How long closing the engine waits for queued traces: the first batch also connects and
#: migrates the store, seconds on a busy machine; every store call has its own timeout.
CLOSE_WAIT_S = 10.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Trace:
    """One call as it happens; `as_dict` is what is stored and shown."""

    request_id: str
    feature: str
    feature_version: int
    override_version: int | None
    tenant: str | None
    settings: TraceSettings
    input: Any
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    route: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    dispatches: list[dict[str, Any]] = field(default_factory=list)
    stages_ms: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    error: dict[str, str] | None = None
    output: Any = None
    cached: bool = False
    coalesced: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    backend: str | None = None
    _mark: float = field(default_factory=time.perf_counter)
    _began: float = field(default_factory=time.perf_counter)

    def stage(self, name: str) -> None:
        """Close the stage `name` (time since the previous mark), adding to what it has."""
        now = time.perf_counter()
        self.stages_ms[name] = round(self.stages_ms.get(name, 0.0) + _ms(now - self._mark), 3)
        self._mark = now

    def add_stage(self, name: str, seconds: float) -> None:
        self.stages_ms[name] = round(self.stages_ms.get(name, 0.0) + _ms(seconds), 3)

    def set_messages(self, messages: Iterable[Message]) -> None:
        self.messages = [{"role": m.role, "content": m.content} for m in messages]

    def on_attempt(self, completion: Completion, errors: list[str], repaired: bool,
                   validate_s: float) -> None:
        self.attempts.append({
            "backend": completion.backend, "model": completion.model, "raw": completion.text,
            "finish_reason": completion.finish_reason, "errors": errors, "repaired": repaired,
            "reask": bool(self.attempts), "validate_ms": _ms(validate_s),
            "tokens_in": completion.usage.prompt_tokens,
            "tokens_out": completion.usage.completion_tokens})
        self.add_stage("validate", validate_s)

    def on_dispatch(self, record: CallRecord) -> None:
        self.dispatches.append({
            "route": record.route, "backend": record.backend, "model": record.model,
            "upstream_calls": record.attempts, "latency_ms": round(record.latency_ms, 3),
            "cost_usd": record.cost_usd, "error": record.error})

    def finish(self, *, output: Any = None, error: BaseException | None = None) -> None:
        self.latency_ms = _ms(time.perf_counter() - self._began)
        if error is not None:
            self.status = "error"
            self.error = {"type": type(error).__name__, "detail": str(error)[:2000]}
            attempts = getattr(error, "attempts", None)
            if attempts and not self.attempts:
                self.attempts = [{"backend": a.backend, "raw": a.raw, "errors": list(a.errors),
                                  "repaired": a.repaired} for a in attempts]
        else:
            self.output = output

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "feature": self.feature,
            "feature_version": self.feature_version, "override_version": self.override_version,
            "tenant": self.tenant, "route": self.route, "status": self.status,
            "error": self.error, "started_at": self.started_at.isoformat(),
            "latency_ms": self.latency_ms, "input": self.input, "messages": self.messages,
            "attempts": self.attempts, "dispatches": self.dispatches,
            "stages_ms": self.stages_ms, "backend": self.backend,
            "usage": {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out},
            "cost_usd": self.cost_usd, "cached": self.cached, "coalesced": self.coalesced,
            "output": self.output, "truncated": False}


# -- Redaction and bounds --------------------------------------------------------------------

def _walk(value: Any, parts: list[str], found: list[Any], replace: bool) -> Any:
    """`value` with the values at path `parts` replaced; those values appended to `found`."""
    if not parts:
        found.append(value)
        return REDACTED if replace else value
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        keys = list(value) if head == "*" else [head] if head in value else []
        return {k: (_walk(v, rest, found, replace) if k in keys else v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, rest, found, replace) if head == "*" or head == str(i) else v
                for i, v in enumerate(value)]
    return value


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif value is not None and not isinstance(value, bool):
        yield json.dumps(value)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def redact(data: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """The trace with each input value at `paths` replaced by [redacted], and the same text
    removed wherever else it appears (rendered prompt, replies, output, errors)."""
    secrets_: list[Any] = []
    input_ = data.get("input")
    for path in paths:
        input_ = _walk(input_, path.split("."), secrets_, replace=True)
    texts = sorted({s for v in secrets_ for s in _strings(v) if len(s) >= 3},
                   key=len, reverse=True)
    if not texts:
        return {**data, "input": input_}

    def scrub(text: str) -> str:
        for secret in texts:
            text = text.replace(secret, REDACTED)
        return text

    rest = {k: v for k, v in data.items() if k != "input"}
    return {**_map_strings(rest, scrub), "input": input_}


def _cut(value: Any, limit: int) -> Any:
    return _map_strings(value, lambda s: s if len(s) <= limit else s[:limit] + "…[cut]")


def bounded(data: dict[str, Any], max_bytes: int) -> str:
    """The trace as JSON of at most `max_bytes` bytes: long strings are cut shorter and
    shorter until it fits (then, if it still does not, only the summary is kept)."""
    text = json.dumps(data, ensure_ascii=False)
    if len(text.encode()) <= max_bytes:
        return text
    limit = max_bytes // 4
    while limit >= 16:
        cut = {**_cut(data, limit), "truncated": True}
        text = json.dumps(cut, ensure_ascii=False)
        if len(text.encode()) <= max_bytes:
            return text
        limit //= 2
    keep = ("request_id", "feature", "feature_version", "override_version", "tenant", "route",
            "status", "started_at", "latency_ms", "usage", "cost_usd", "cached", "coalesced")
    return json.dumps({**{k: data.get(k) for k in keep}, "truncated": True},
                      ensure_ascii=False)


# -- Sampling and storage --------------------------------------------------------------------

@dataclass(frozen=True)
class StoredTrace:
    """A trace as the store keeps it: the columns to search by, the JSON to show."""

    request_id: str
    tenant: str | None
    feature: str
    status: str
    created_at: datetime
    expires_at: datetime
    latency_ms: float
    data: str


class TraceWriter:
    """Decides which calls are traced and stores their traces off the request path."""

    def __init__(self, config: TracesConfig, features: Iterable[str],
                 store: Callable[[], Awaitable[Store]], *,
                 rng: Callable[[], float] = random.random) -> None:
        #: Only features with a sample rate above 0: the lookup an untraced call pays.
        self._settings: dict[str, TraceSettings] = {}
        for name in features:
            settings = config.for_feature(name)
            if settings.sample_rate > 0:
                self._settings[name] = settings
        self._config = config
        self._store = store
        self._rng = rng
        self._queue: deque[Trace] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_purge = 0.0
        #: Traces taken off the queue and not yet stored.
        self._saving = 0
        #: Traces dropped because the queue was full, and traces the store refused.
        self.dropped = 0
        self.failed = 0
        self.written = 0

    @property
    def enabled(self) -> bool:
        return bool(self._settings)

    def sample(self, feature: str) -> TraceSettings | None:
        """The feature's settings when this call is to be traced, else None."""
        settings = self._settings.get(feature)
        if settings is None or (settings.sample_rate < 1 and self._rng() >= settings.sample_rate):
            return None
        return settings

    def settings(self, feature: str) -> TraceSettings:
        return self._settings.get(feature) or self._config.for_feature(feature)

    def submit(self, trace: Trace) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self._queue.append(trace)
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every submitted trace is stored (or failed)."""
        if self._queue or not self._idle.is_set():
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()

    async def aclose(self) -> None:
        try:
            await self.flush(CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("%d trace(s) not stored at shutdown", len(self._queue) + self._saving)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._saving = len(batch)
            try:
                store = await self._store()
                await store.save_traces([self.stored(t) for t in batch])
                self.written += len(batch)
                now = time.monotonic()
                if now - self._last_purge >= PURGE_EVERY_S:
                    self._last_purge = now
                    await store.purge_traces(datetime.now(UTC))
            except Exception as exc:  # the store is down or slow: the calls went on
                self.failed += len(batch)
                log.warning("%d trace(s) could not be stored: %s", len(batch),
                            type(exc).__name__)
            finally:
                self._saving = 0

    @staticmethod
    def stored(trace: Trace) -> StoredTrace:
        settings = trace.settings
        data = trace.as_dict()
        if settings.redact:
            data = redact(data, settings.redact)
        return StoredTrace(
            request_id=trace.request_id, tenant=trace.tenant, feature=trace.feature,
            status=trace.status, created_at=trace.started_at,
            expires_at=trace.started_at + timedelta(days=settings.retention_days),
            latency_ms=trace.latency_ms, data=bounded(data, settings.max_bytes_per_call))


def begin(feature_name: str, feature_version: int, override_version: int | None,
          tenant: str | None, settings: TraceSettings, input: Any) -> Trace:
    """A trace for a call that starts now, under the current request id."""
    rid = request_id.get() or secrets.token_hex(8)
    return Trace(rid, feature_name, feature_version, override_version, tenant, settings, input)



_SPAN = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """`7d`, `24h`, `30m`, `90s` (that long ago) or an ISO 8601 time (UTC if no zone)."""
    text = value.strip()
    if match := _SPAN.match(text):
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        from featurelm.engine.errors import InputError

        raise InputError(f"since {value[:40]!r} is neither a span (7d, 24h, 30m, 90s) nor an "
                         "ISO 8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
