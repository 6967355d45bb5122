"""Redis-only behaviour: coalescing across engine replicas, and serving on when Redis is
down or slow (through a proxy the test cuts or stalls; the shared Redis is never touched)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest

from featurelm.engine import BackendError
from featurelm.engine.cache.base import Done, Lease
from featurelm.engine.cache.redis import RedisCache
from featurelm.engine.config import CacheSettings
from tests.engine.cache.conftest import (
    REDIS_URL,
    CacheUnderTest,
    EngineFactory,
    Script,
    burst,
    delete_prefix,
    gather_all,
    wait_until,
)

pytestmark = pytest.mark.redis
LOVE = {"text": "Love it"}


@pytest.fixture
async def cache(unique_prefix: str) -> AsyncIterator[CacheUnderTest]:
    """Only Redis here (overrides the suite's memory/Redis parametrization)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield CacheUnderTest("redis", REDIS_URL, unique_prefix, client)
    await delete_prefix(client, unique_prefix)
    await client.aclose()


class Proxy:
    """A TCP proxy in front of the local Redis that a test can stall or shut."""

    def __init__(self) -> None:
        self.stalled = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()
            up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.stalled:
                continue  # swallowed: the client waits for a reply that never comes
            writer.write(data)
            await writer.drain()
        writer.close()

    async def shut(self) -> None:
        """Redis "goes away": no new connections, and open ones are closed."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    proxy = Proxy()
    yield proxy
    if proxy._server is not None and proxy._server.is_serving():
        await proxy.shut()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- coalescing across replicas -------------------------------------------------------------

async def test_a_burst_split_across_two_replicas_reaches_the_backend_once(
        make_engine: EngineFactory, script: Script) -> None:
    replicas = [make_engine(), make_engine()]
    script.hold()
    pending = burst([replica.run("sentiment", LOVE) for _ in range(20) for replica in replicas])
    # Released once one replica leads the call and the other waits on it through Redis.
    await wait_until(lambda: script.calls == 1
                     and sum(r.cache.store.waiting for r in replicas) == 1)
    script.release()
    outcomes = await pending
    assert script.calls == 1
    assert all(o.output == {"sentiment": "positive"} for o in outcomes)
    assert sum(not o.meta.cached for o in outcomes) == 1
    assert sum(r.cache.stats.coalesced for r in replicas) == 39
    # And the entry is there for both afterwards.
    assert all([(await r.run("sentiment", LOVE)).meta.cached for r in replicas])


async def test_an_error_reaches_the_waiters_on_the_other_replica(
        make_engine: EngineFactory) -> None:
    failing = Script(reply=BackendError("upstream down", backend="primary", provider_status=503))
    replicas = [make_engine(script=failing), make_engine(script=failing)]
    failing.hold()
    pending = burst([replica.run("sentiment", LOVE) for _ in range(5) for replica in replicas])
    await wait_until(lambda: failing.calls == 1
                     and sum(r.cache.store.waiting for r in replicas) == 1)
    failing.release()
    outcomes = await pending
    assert failing.calls == 1
    assert all(isinstance(o, BackendError) for o in outcomes)
    assert {(str(o), o.backend, o.provider_status) for o in outcomes} == \
        {("upstream down", "primary", 503)}


async def test_waiters_take_over_when_the_leading_replica_dies(
        cache: CacheUnderTest) -> None:
    settings = CacheSettings(key_prefix=cache.prefix, lock_s=0.2)
    leader, survivor = RedisCache(REDIS_URL, settings), RedisCache(REDIS_URL, settings)
    try:
        deadline = time.monotonic() + 5
        assert isinstance(await leader.claim("flight:x", deadline), Lease)
        await leader.aclose()  # dies holding the lock: no outcome, no release, no renewal
        assert isinstance(await survivor.claim("flight:x", deadline), Lease)
    finally:
        await survivor.aclose()


async def test_a_waiter_never_waits_past_its_deadline(cache: CacheUnderTest) -> None:
    settings = CacheSettings(key_prefix=cache.prefix)
    leader, waiter = RedisCache(REDIS_URL, settings), RedisCache(REDIS_URL, settings)
    try:
        lease = await leader.claim("flight:y", time.monotonic() + 5)
        assert isinstance(lease, Lease)
        assert await waiter.claim("flight:y", time.monotonic() + 0.1) is None
        later = asyncio.ensure_future(waiter.claim("flight:y", time.monotonic() + 5))
        await wait_until(lambda: waiter.waiting == 1)
        await leader.finish("flight:y", lease, '{"ok": 1}')
        assert await later == Done('{"ok": 1}')
    finally:
        await leader.aclose()
        await waiter.aclose()


# -- degradation ----------------------------------------------------------------------------

async def test_unreachable_redis_serves_every_call_without_the_cache(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine(cache_url=f"redis://127.0.0.1:{closed_port()}/0",
                         settings={"redis_backoff_s": 0})
    for _ in range(3):
        result = await engine.run("sentiment", LOVE)
        assert result.output == {"sentiment": "positive"} and not result.meta.cached
    assert script.calls == 3 and engine.cache.failures >= 3
    # Identical concurrent calls still coalesce inside the replica.
    outcomes = await gather_all([engine.run("sentiment", LOVE) for _ in range(10)])
    assert all(o.output == {"sentiment": "positive"} for o in outcomes) and script.calls == 4


async def test_redis_going_away_mid_run_is_logged_once_and_calls_succeed(
        make_engine: EngineFactory, script: Script, proxy: Proxy,
        caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(cache_url=await proxy.start(), settings={"redis_backoff_s": 0})
    await engine.run("sentiment", LOVE)
    assert (await engine.run("sentiment", LOVE)).meta.cached  # Redis serves through the proxy
    await proxy.shut()
    with caplog.at_level(logging.WARNING, logger="featurelm.cache"):
        for text in ("Love it", "Hate it", "Meh"):
            result = await engine.run("sentiment", {"text": text})
            assert result.output == {"sentiment": "positive"} and not result.meta.cached
    assert script.calls == 4 and engine.cache.failures >= 3
    warnings = [r for r in caplog.records if r.name == "featurelm.cache"]
    assert len(warnings) == 1 and "serving without it" in warnings[0].getMessage()


async def test_a_stalled_redis_costs_one_bounded_wait_then_is_left_alone(
        make_engine: EngineFactory, script: Script, proxy: Proxy) -> None:
    engine = make_engine(cache_url=await proxy.start(),
                         settings={"redis_timeout_s": 0.1, "redis_backoff_s": 60})
    await engine.run("sentiment", LOVE)
    proxy.stalled = True
    for text in ("Love it", "Hate it", "Meh"):
        assert (await engine.run("sentiment", {"text": text})).meta.cached is False
    assert script.calls == 4
    assert engine.cache.failures == 1, "Redis is skipped after the first timeout"
