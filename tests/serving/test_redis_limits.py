"""Limits and idempotency on Redis hold across app instances (replicas) sharing it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from featurelm.engine.config import HttpConfig
from featurelm.engine.errors import IdempotencyKeyError, QuotaExceededError, RateLimitedError
from featurelm.serving.idempotency import Idempotency, Stored
from featurelm.serving.kv import RedisKV
from featurelm.serving.limits import Limiter
from tests.conftest import fresh_rate_window

pytestmark = pytest.mark.redis


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[RedisKV, RedisKV]]:
    prefix = f"test-featurelm-{secrets.token_hex(6)}:"
    kvs = (RedisKV("redis://127.0.0.1:6379/0", prefix=prefix),
           RedisKV("redis://127.0.0.1:6379/0", prefix=prefix))
    yield kvs
    for kv in kvs:
        await kv.aclose()


async def test_rate_limit_is_shared_between_replicas(replicas: tuple[RedisKV, RedisKV]) -> None:
    config = HttpConfig(rate_limit_per_minute=3)
    one, two = (Limiter(kv, config) for kv in replicas)
    fresh_rate_window()
    await one.take("acme", 2)
    await two.take("acme")
    with pytest.raises(RateLimitedError) as refused:
        await one.take("acme")
    assert refused.value.status == 429 and refused.value.retry_after
    await two.take("globex")  # another tenant's bucket


async def test_token_quota_is_shared_between_replicas(
        replicas: tuple[RedisKV, RedisKV]) -> None:
    config = HttpConfig(token_quota=100)
    one, two = (Limiter(kv, config) for kv in replicas)
    await one.spend("acme", 100)
    with pytest.raises(QuotaExceededError):
        await two.check_quota("acme")
    await two.check_quota("globex")


async def test_idempotent_result_replays_on_another_replica(
        replicas: tuple[RedisKV, RedisKV]) -> None:
    one, two = (Idempotency(kv, 60) for kv in replicas)
    calls = 0

    async def produce() -> Stored:
        nonlocal calls
        calls += 1
        return Stored(200, b'{"n": 1}')

    first = await one.run("acme", "k1", b"body", produce)
    again = await two.run("acme", "k1", b"body", produce)
    assert (first.replayed, again.replayed, again.body, calls) == (False, True, b'{"n": 1}', 1)
    with pytest.raises(IdempotencyKeyError) as reused:
        await two.run("acme", "k1", b"other body", produce)
    assert reused.value.status == 422
