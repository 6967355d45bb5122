"""JSON, batch and streamed calls take one pipeline: the same usage and cost in /metrics, the
same cache and Idempotency-Key, and a `meta.backend` that names who really answered."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from featurelm.engine import Engine
from featurelm.engine.backends import Backend
from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.errors import BackendError
from featurelm.engine.types import Completion, CompletionRequest, Usage
from featurelm.serving.app import create_app
from tests.conftest import SENTIMENT, ProjectFactory, scripted

REPLY = '{"sentiment": "positive"}'
SSE = {"Accept": "text/event-stream"}
PRICED = {"input_price_per_mtok": 3.0, "output_price_per_mtok": 15.0}


class CannotStream:
    """A backend without streaming (a hosted API configured without it, say)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.capabilities = inner.capabilities.__class__(
            structured=inner.capabilities.structured, streaming=False,
            tokenizer=inner.capabilities.tokenizer,
            context_window=inner.capabilities.context_window)

    async def complete(self, request: CompletionRequest) -> Completion:
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class StreamsWithoutUsage(ScriptedBackend):
    """Streams text only, as a server that does not report usage in streams: the engine counts."""

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        async for item in super().stream(request):
            if isinstance(item, str):
                yield item


def client_for(config: Path, wrap: Callable[[Backend], Backend] | None = None
               ) -> tuple[httpx.AsyncClient, Engine]:
    engine = Engine.from_config(config, backend_wrapper=wrap)
    transport = httpx.ASGITransport(app=create_app(engine), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test"), engine


def project(make_project: ProjectFactory, **backends: dict[str, Any]) -> Path:
    backends = backends or {"primary": {**scripted(REPLY), **PRICED}}
    return make_project(backends=backends, routes={"default": {"backends": list(backends)}},
                        extra={"auth": "off"})


async def stream(http: httpx.AsyncClient, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    async with http.stream("POST", "/v1/features/sentiment", json=body,
                           headers={**SSE, **(headers or {})}) as response:
        assert response.status_code == 200
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def usage_in_metrics(text: str) -> tuple[float, float, float]:
    """(tokens in, tokens out, cost) summed over every series of the metrics page."""
    def total(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern + r"\{[^}]*\} ([0-9.e+-]+)", text))
    tokens_in = total(r'featurelm_tokens_total(?=\{[^}]*direction="in")')
    tokens_out = total(r'featurelm_tokens_total(?=\{[^}]*direction="out")')
    return tokens_in, tokens_out, total("featurelm_cost_usd_total")


async def metrics_after(config: Path, wrap: Callable[[Backend], Backend] | None,
                        call: Callable[[httpx.AsyncClient], Any]) -> tuple[float, float, float]:
    http, engine = client_for(config, wrap)
    async with http:
        await call(http)
        page = (await http.get("/metrics")).text
    await engine.aclose()
    return usage_in_metrics(page)


def cannot_stream(backend: Backend) -> Backend:
    return CannotStream(backend)


@pytest.mark.parametrize("wrap", [None, cannot_stream], ids=["streams", "cannot-stream"])
async def test_a_stream_and_a_json_call_add_the_same_usage_and_cost(
        make_project: ProjectFactory, wrap: Callable[[Backend], Backend] | None) -> None:
    config = project(make_project)

    async def as_json(http: httpx.AsyncClient) -> None:
        response = await http.post("/v1/features/sentiment", json={"input": {"text": "great"}})
        assert response.status_code == 200

    async def as_stream(http: httpx.AsyncClient) -> None:
        events = await stream(http, {"input": {"text": "great"}})
        assert events[-1][0] == "result"

    by_json = await metrics_after(config, wrap, as_json)
    by_stream = await metrics_after(config, wrap, as_stream)
    assert by_json[0] > 0 and by_json[2] > 0
    assert by_stream == by_json


async def test_a_streams_meta_counts_what_the_metrics_count(make_project: ProjectFactory) -> None:
    """A backend that does not report usage in its stream: the engine counts the tokens,
    once, and meta and /metrics agree."""
    http, engine = client_for(project(make_project),
                              lambda b: StreamsWithoutUsage([REPLY], name=b.name))
    async with http:
        events = await stream(http, {"input": {"text": "great"}})
        tokens_in, tokens_out, _ = usage_in_metrics((await http.get("/metrics")).text)
    await engine.aclose()
    meta = events[-1][1]["meta"]
    assert (meta["tokens_in"], meta["tokens_out"]) == (tokens_in, tokens_out)
    assert tokens_in > 0


async def test_a_streams_meta_names_the_backend_that_answered_after_a_fallback(
        make_project: ProjectFactory) -> None:
    down = BackendError("upstream 503", backend="first", provider_status=503)
    config = project(make_project, first=scripted("unused"), second=scripted(REPLY))

    def wrap(backend: Backend) -> Backend:
        if backend.name == "first":
            return ScriptedBackend([down], name="first")
        return backend

    http, engine = client_for(config, wrap)
    async with http:
        events = await stream(http, {"input": {"text": "great"}})
    await engine.aclose()
    kind, result = events[-1]
    assert kind == "result", events
    assert result["meta"]["backend"] == "second"
    assert "".join(d["text"] for k, d in events if k == "delta") == REPLY


async def test_a_stream_after_a_json_call_is_a_cache_hit_streamed_as_one_delta(
        make_project: ProjectFactory) -> None:
    http, engine = client_for(project(make_project))
    async with http:
        first = await http.post("/v1/features/sentiment", json={"input": {"text": "great"}})
        events = await stream(http, {"input": {"text": "great"}})
    calls = engine.dispatcher.backends["primary"]
    await engine.aclose()
    assert first.json()["meta"]["cached"] is False
    deltas = [d for k, d in events if k == "delta"]
    assert [json.loads(d["text"]) for d in deltas] == [{"sentiment": "positive"}]
    assert events[-1][1]["meta"]["cached"] is True
    assert isinstance(calls, ScriptedBackend) and calls.calls == 1


async def test_a_retried_stream_with_an_idempotency_key_replays_without_a_model_call(
        make_project: ProjectFactory) -> None:
    http, engine = client_for(project(make_project))
    body = {"input": {"text": "great"}, "options": {"cache": "no-store"}}
    key = {"Idempotency-Key": "order-42"}
    async with http:
        first = await stream(http, body, key)
        again = await stream(http, body, key)
        as_json = await http.post("/v1/features/sentiment", json=body, headers=key)
        reused = await http.post("/v1/features/sentiment", headers={**SSE, **key},
                                 json={**body, "input": {"text": "other"}})
        bad_key = await http.post("/v1/features/sentiment", json=body,
                                  headers={**SSE, "Idempotency-Key": "bad key"})
    backend = engine.dispatcher.backends["primary"]
    await engine.aclose()
    assert isinstance(backend, ScriptedBackend) and backend.calls == 1
    assert first[-1] == again[-1] and first[-1][0] == "result"
    assert ("progress", {"stage": "replayed", "feature": "sentiment"}) in again
    assert as_json.headers["Idempotent-Replayed"] == "true"
    assert as_json.json() == first[-1][1]
    # Refusals known before the stream starts are plain problem+json answers.
    assert reused.status_code == 200  # the stream starts; the mismatch is its error event
    assert bad_key.status_code == 422
    assert bad_key.headers["content-type"] == "application/problem+json"


async def test_batch_items_take_the_same_pipeline(make_project: ProjectFactory) -> None:
    http, engine = client_for(project(make_project))
    async with http:
        batch = await http.post("/v1/features/sentiment/batch",
                                json={"inputs": [{"text": "great"}, {"text": "great"}]})
        single = await http.post("/v1/features/sentiment", json={"input": {"text": "great"}})
    await engine.aclose()
    results = batch.json()["results"]
    assert [r["output"] for r in results] == [{"sentiment": "positive"}] * 2
    assert single.json()["meta"]["cached"] is True


class StreamsThenHangs(ScriptedBackend):
    """Streams a first chunk, then never another; notes being cancelled."""

    cancelled = False

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        yield REPLY[:5]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        yield REPLY[5:]  # pragma: no cover


@pytest.mark.parametrize("coalesced", [True, False], ids=["coalesced", "not-coalesced"])
async def test_a_client_that_goes_away_mid_stream_ends_its_answer(
        make_project: ProjectFactory, coalesced: bool) -> None:
    """The answer ends as soon as the client goes away, not when the model is done (here,
    never). A call open to coalescing runs on for the cache and any caller sharing it; any
    other call is cancelled."""
    backend = StreamsThenHangs([REPLY], name="primary")
    feature = {**SENTIMENT, "model": {**SENTIMENT["model"],
                                      "temperature": 0.0 if coalesced else 0.7}}
    config = make_project([feature], backends={"primary": scripted(REPLY)},
                          routes={"default": {"backends": ["primary"]}},
                          extra={"auth": "off"})
    engine = Engine.from_config(config, backend_wrapper=lambda _: backend)
    app = create_app(engine)
    body = json.dumps({"input": {"text": "great"}, "options": {"cache": "no-cache"}}).encode()
    sent: list[dict[str, Any]] = []
    first_delta = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await first_delta.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if b"event: delta" in message.get("body", b""):
            first_delta.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/features/sentiment", "raw_path": b"/v1/features/sentiment",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"),
                         (b"accept", b"text/event-stream"),
                         (b"content-length", str(len(body)).encode())]}
    async with asyncio.timeout(10):
        await app(scope, receive, send)
    for _ in range(20):  # time for a cancellation to reach the backend
        if backend.cancelled:
            break
        await asyncio.sleep(0.01)
    cancelled_before_shutdown = backend.cancelled
    await engine.aclose()
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    streamed = b"".join(m.get("body", b"") for m in sent[1:])
    assert b"event: delta" in streamed and b"event: result" not in streamed
    assert cancelled_before_shutdown is not coalesced
