"""The OpenAI-compatible adapter's in-flight limit: calls beyond `max_connections` wait in a
visible line, for a bounded time, and fail with a clear 504 when no connection frees up."""

import asyncio
import time

import httpx
import pytest

from featurelm.engine import Engine
from featurelm.engine.backends.openai_compat import (
    DEFAULT_MAX_CONNECTIONS,
    OpenAICompatBackend,
    OpenAIOptions,
)
from featurelm.engine.errors import BackendError, BackendTimeout
from featurelm.engine.testing import Fault, FaultServer
from featurelm.engine.types import CompletionRequest, Message
from featurelm.serving.app import create_app
from tests.conftest import SENTIMENT, ProjectFactory


def request(timeout: float | None = None) -> CompletionRequest:
    return CompletionRequest(messages=(Message("user", "my card was charged twice"),),
                             timeout=timeout)


def backend(url: str, **options: object) -> OpenAICompatBackend:
    return OpenAICompatBackend("vllm", model="m", base_urls=[url], **options)  # type: ignore[arg-type]


def test_the_default_limit_fits_a_vllm_server_running_a_thousand_sequences() -> None:
    options = OpenAIOptions(base_urls=["http://vllm:8000/v1"])
    assert options.max_connections == DEFAULT_MAX_CONNECTIONS >= 1024
    assert 0 < options.queue_timeout_s <= 30


async def test_calls_over_the_limit_wait_in_line_and_the_line_is_counted() -> None:
    with FaultServer(latency=0.4) as server:
        pooled = backend(server.url, max_connections=2)
        try:
            calls = [asyncio.create_task(pooled.complete(request())) for _ in range(5)]
            await asyncio.sleep(0.2)
            during = pooled.pool_stats()
            await asyncio.gather(*calls)
            after = pooled.pool_stats()
        finally:
            await pooled.aclose()
    assert (during.limit, during.in_flight, during.waiting) == (2, 2, 3)
    assert (after.in_flight, after.waiting, after.queue_timeouts) == (0, 0, 0)
    assert server.connections <= 2


async def test_a_call_that_gets_no_connection_in_time_fails_with_a_clear_504() -> None:
    with FaultServer(latency=2.0) as server:
        pooled = backend(server.url, max_connections=1, queue_timeout_s=0.3)
        try:
            first = asyncio.create_task(pooled.complete(request()))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(BackendTimeout) as caught:
                await pooled.complete(request())
            waited = time.monotonic() - started
            first.cancel()
            stats = pooled.pool_stats()
        finally:
            await pooled.aclose()
    error = caught.value
    assert error.status == 504 and error.timeout and not error.retryable
    assert "no free connection" in str(error) and "max_connections" in str(error)
    assert 0.25 < waited < 1.5
    assert stats.queue_timeouts == 1 and stats.waiting == 0


async def test_the_wait_never_outlasts_the_calls_own_deadline() -> None:
    with FaultServer(latency=2.0) as server:
        pooled = backend(server.url, max_connections=1, queue_timeout_s=30)
        try:
            first = asyncio.create_task(pooled.complete(request()))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(BackendTimeout):
                await pooled.complete(request(timeout=0.2))
            assert time.monotonic() - started < 1.5
            first.cancel()
        finally:
            await pooled.aclose()


async def test_failed_cancelled_and_streamed_calls_give_their_connection_back() -> None:
    with FaultServer(latency=0.3) as server:
        pooled = backend(server.url, max_connections=1, queue_timeout_s=5)
        try:
            server.script(Fault.error(500))
            with pytest.raises(BackendError):
                await pooled.complete(request())
            holder = asyncio.create_task(pooled.complete(request()))
            waiter = asyncio.create_task(pooled.complete(request()))
            await asyncio.sleep(0.1)
            assert pooled.pool_stats().waiting == 1
            waiter.cancel()
            holder.cancel()
            await asyncio.gather(holder, waiter, return_exceptions=True)
            chunks = [c async for c in pooled.stream(request())]
            assert chunks
            # Every slot is free again: the one connection serves the next call at once.
            await asyncio.wait_for(pooled.complete(request()), timeout=2)
            stats = pooled.pool_stats()
        finally:
            await pooled.aclose()
    assert (stats.in_flight, stats.waiting, stats.queue_timeouts) == (0, 0, 0)


async def test_metrics_show_each_backends_limit_in_flight_and_waiting(
        make_project: ProjectFactory) -> None:
    with FaultServer() as server:
        config = make_project(
            [SENTIMENT], backends={"vllm": {"kind": "openai", "model": "m", "options": {
                "base_urls": [server.url], "max_connections": 64}}},
            routes={"default": {"backends": ["vllm"]}}, extra={"auth": "off"})
        engine = Engine.from_config(config)
        transport = httpx.ASGITransport(app=create_app(engine), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            text = (await http.get("/metrics")).text
        await engine.aclose()
    assert 'featurelm_backend_connections_limit{backend="vllm"} 64.0' in text
    assert 'featurelm_backend_calls_in_flight{backend="vllm"} 0.0' in text
    assert 'featurelm_backend_calls_waiting{backend="vllm"} 0.0' in text
    assert 'featurelm_backend_queue_timeouts_total{backend="vllm"} 0.0' in text
