"""Fixtures for the cache suite: engines over the memory cache or the real local Redis, and
a scripted backend shared by every replica that counts calls and can hold them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
import redis.asyncio as aioredis

from featurelm.engine import Engine
from featurelm.engine.backends import Backend
from featurelm.engine.backends.scripted import Reply, ScriptedBackend
from featurelm.engine.cache import MemoryCache
from featurelm.engine.types import CompletionRequest
from tests.conftest import SENTIMENT, ProjectFactory

REDIS_URL = "redis://127.0.0.1:6379/0"
POSITIVE = '{"sentiment": "positive"}'


@dataclass
class Script:
    """The backend every replica calls: counts calls; `hold()` parks them until `release()`."""

    reply: Reply | Callable[[CompletionRequest], Reply] = POSITIVE
    calls: int = 0
    requests: list[CompletionRequest] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def __call__(self, request: CompletionRequest) -> Reply:
        self.calls += 1
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        return self.reply(request) if callable(self.reply) else self.reply

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the code under test makes true (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


@dataclass
class CacheUnderTest:
    """One cache configuration (`cache:` plus settings) and how to make its entries expire."""

    kind: str
    url: str
    prefix: str
    redis: aioredis.Redis | None = None

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"key_prefix": self.prefix, **overrides}

    async def expire(self, engine: Engine) -> None:
        store = engine.cache.store
        if isinstance(store, MemoryCache):
            now = store.clock()
            store.clock = lambda: now + 10_000
            return
        assert self.redis is not None
        deadline = time.monotonic() + 5
        while await self.redis.keys(f"{self.prefix}entry:*"):
            assert time.monotonic() < deadline, "entries did not expire"
            await asyncio.sleep(0.05)


class EngineFactory(Protocol):
    def __call__(self, features: list[dict[str, Any]] | None = None, *,
                 script: Script = ..., scripts: dict[str, Script] | None = None,
                 routes: dict[str, Any] | None = None, cache_url: str | None = None,
                 settings: dict[str, Any] | None = None) -> Engine: ...


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def unique_prefix() -> str:
    return f"featurelm-test-{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_client(unique_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the real local Redis; the keys under this test's prefix go afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await delete_prefix(client, unique_prefix)
    await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def cache(request: pytest.FixtureRequest,
                unique_prefix: str) -> AsyncIterator[CacheUnderTest]:
    """The behaviour suite runs once per implementation."""
    if request.param == "memory":
        yield CacheUnderTest("memory", "memory", unique_prefix)
        return
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield CacheUnderTest("redis", REDIS_URL, unique_prefix, client)
    await delete_prefix(client, unique_prefix)
    await client.aclose()


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def make_engine(make_project: ProjectFactory, cache: CacheUnderTest,
                      script: Script) -> AsyncIterator[EngineFactory]:
    """Engines ("replicas") over one project; every one is closed after the test."""
    engines: list[Engine] = []

    def make(features: list[dict[str, Any]] | None = None, *, script: Script = script,
             scripts: dict[str, Script] | None = None, routes: dict[str, Any] | None = None,
             cache_url: str | None = None, settings: dict[str, Any] | None = None) -> Engine:
        by_name = scripts or {"primary": script}
        path = make_project(features if features is not None else [SENTIMENT],
                            backends={name: {"kind": "scripted"} for name in by_name},
                            routes=routes,
                            extra={"cache": cache_url or cache.url,
                                   "cache_settings": cache.settings(**(settings or {}))})

        def wrap(backend: Backend) -> Backend:
            return ScriptedBackend(by_name[backend.name], name=backend.name, model=backend.model)

        engine = Engine.from_config(path, backend_wrapper=wrap)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


async def gather_all(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Results and raised exceptions of concurrent calls, in order."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


def burst(calls: Sequence[Awaitable[Any]]) -> asyncio.Future[list[Any]]:
    """Start concurrent calls now; await the returned future for their outcomes."""
    return asyncio.ensure_future(gather_all(calls))
