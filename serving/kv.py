"""Expiring counters and values shared by the limits and idempotency: Redis or in-process.

Redis (when `cache` in featurelm.yaml is a redis:// URL) makes limits hold across replicas;
the in-process store is for one replica (the embedded defaults). Redis is reached through a
bounded client (pooled, connect and reply timeouts from `cache_settings`); when it is down or
slow, every operation falls back to the in-process store for `redis_backoff_s`, so a Redis
outage makes limits per-replica and idempotency per-process instead of failing calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    import redis.asyncio as redis

    from featurelm.engine.config import CacheSettings

log = logging.getLogger("featurelm.serving")
T = TypeVar("T")


class KV(Protocol):
    async def incr(self, key: str, amount: int, ttl_s: float) -> int: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float, *, only_new: bool = False) -> bool:
        """Store `value`; with `only_new`, only if `key` is absent. True if stored."""
        ...

    async def delete(self, key: str) -> None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryKV:
    def __init__(self) -> None:
        #: key -> (value, expiry on the monotonic clock); counters are stored as decimal bytes.
        self._entries: dict[str, tuple[bytes, float]] = {}

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            self._entries.pop(key, None)
            return None
        return entry[0]

    def _sweep(self, now: float) -> None:
        # Bounded work per write: expired entries are dropped lazily, oldest first.
        for key in [k for k, (_, exp) in list(self._entries.items())[:64] if exp <= now]:
            del self._entries[key]

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        now = time.monotonic()
        self._sweep(now)
        current = self._live(key, now)
        count = int(current or 0) + amount
        expires = self._entries[key][1] if current is not None else now + ttl_s
        self._entries[key] = (str(count).encode(), expires)
        return count

    async def get(self, key: str) -> bytes | None:
        return self._live(key, time.monotonic())

    async def set(self, key: str, value: bytes, ttl_s: float, *, only_new: bool = False) -> bool:
        now = time.monotonic()
        self._sweep(now)
        if only_new and self._live(key, now) is not None:
            return False
        self._entries[key] = (value, now + ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


#: Defaults of `cache_settings` for a RedisKV built without them (tests, tools).
DEFAULT_TIMEOUT_S = 0.25
DEFAULT_MAX_CONNECTIONS = 50


class RedisKV:
    """The Redis side, with every wait bounded: for a pooled connection, to connect, for each
    reply. It raises on failure; `ResilientKV` decides what a failure means."""

    def __init__(self, url: str, *, prefix: str = "featurelm:http:",
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        # Imported here: a replica without Redis never loads the client (about 6 MiB).
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One immediate retry replaces a connection the server closed while it sat in the pool.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1))
        self._redis: redis.Redis = redis.Redis.from_pool(pool)
        self._prefix = prefix
        #: A hard bound over one operation (its retry included), should a socket timeout not
        #: apply (a TLS handshake, a pool wait stacked on a connect).
        self.timeout_s = timeout_s * 4

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        name = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(name, amount)
            # NX: the window's expiry is set by its first increment only.
            pipe.expire(name, max(1, round(ttl_s)), nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(self._prefix + key)
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: float, *, only_new: bool = False) -> bool:
        stored = await self._redis.set(self._prefix + key, value,
                                       px=max(1, round(ttl_s * 1000)), nx=only_new)
        return bool(stored)

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()


def _redis_failures() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class ResilientKV:
    """Redis while it answers; the in-process store while it does not.

    After a failure Redis is left alone for `backoff_s`, so a hung Redis costs one bounded
    wait per interval, not one per call. While degraded, rate limits and quotas count per
    replica and Idempotency-Keys hold within this process; counts made meanwhile are not
    carried back to Redis when it returns (a window's limit may be exceeded once, by up to
    one replica's worth)."""

    def __init__(self, redis_kv: RedisKV, *, backoff_s: float = 5.0,
                 log_interval_s: float = 60.0) -> None:
        self.redis = redis_kv
        self.local = MemoryKV()
        self.backoff_s = backoff_s
        self.log_interval_s = log_interval_s
        #: Redis operations that failed and were served in-process instead.
        self.failures = 0
        #: Operations answered in-process because Redis was failing or left alone.
        self.fallbacks = 0
        self.last_error: str | None = None
        self._skip_until = 0.0
        self._logged_at = -float("inf")
        self._unlogged = 0
        self._failure_types = _redis_failures()

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self._skip_until

    def health(self) -> str:
        """"ok", or what is degraded and why (for /readyz; never a URL, it may hold a password)."""
        if not self.degraded:
            return "ok"
        return (f"degraded: Redis unavailable ({self.last_error}); limits count per replica "
                "and idempotency holds per process")

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._unlogged += 1
        self.last_error = type(exc).__name__
        now = time.monotonic()
        self._skip_until = now + self.backoff_s
        if now - self._logged_at >= self.log_interval_s:
            log.warning("shared state (Redis) unavailable, limits and idempotency run per "
                        "replica (%d failure(s) since the last report): %s", self._unlogged,
                        type(exc).__name__)
            self._logged_at = now
            self._unlogged = 0

    async def _either(self, remote: Callable[[], Awaitable[T]],
                      local: Callable[[], Awaitable[T]]) -> T:
        if not self.degraded:
            try:
                async with asyncio.timeout(self.redis.timeout_s):
                    return await remote()
            except self._failure_types as exc:
                self._failed(exc)
        self.fallbacks += 1
        return await local()

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        return await self._either(lambda: self.redis.incr(key, amount, ttl_s),
                                  lambda: self.local.incr(key, amount, ttl_s))

    async def get(self, key: str) -> bytes | None:
        return await self._either(lambda: self.redis.get(key), lambda: self.local.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float, *, only_new: bool = False) -> bool:
        return await self._either(
            lambda: self.redis.set(key, value, ttl_s, only_new=only_new),
            lambda: self.local.set(key, value, ttl_s, only_new=only_new))

    async def delete(self, key: str) -> None:
        # Both: a key claimed in-process while Redis was away is released too.
        await self.local.delete(key)
        await self._either(lambda: self.redis.delete(key), self._nothing)

    @staticmethod
    async def _nothing() -> None:
        return None

    async def ping(self) -> None:
        """Probe Redis even while degraded (readiness asks); a success ends the degradation
        early, a failure is counted and never raised."""
        try:
            async with asyncio.timeout(self.redis.timeout_s):
                await self.redis.ping()
        except self._failure_types as exc:
            self._failed(exc)
            return
        self._skip_until = 0.0

    async def aclose(self) -> None:
        await self.redis.aclose()


class KVCollector:
    """Exposes a ResilientKV's failure counters and state on /metrics."""

    def __init__(self, kv: ResilientKV) -> None:
        self.kv = kv

    def collect(self) -> Iterable[Metric]:
        failures = CounterMetricFamily(
            "featurelm_shared_state_failures", "Redis operations of the limits and idempotency "
            "that failed (served in-process instead).")
        failures.add_metric([], self.kv.failures)
        fallbacks = CounterMetricFamily(
            "featurelm_shared_state_fallbacks", "Limit and idempotency operations answered "
            "in-process because Redis was failing.")
        fallbacks.add_metric([], self.kv.fallbacks)
        degraded = GaugeMetricFamily(
            "featurelm_shared_state_degraded", "1 while Redis is left alone after a failure "
            "(limits per replica, idempotency per process).")
        degraded.add_metric([], 1.0 if self.kv.degraded else 0.0)
        return [failures, fallbacks, degraded]


def kv_for(cache_url: str, settings: CacheSettings | None = None, *,
           prefix: str | None = None) -> KV:
    """Redis (bounded, degrading to in-process) where the engine's cache is Redis, else
    in-process."""
    if not cache_url.startswith(("redis://", "rediss://", "unix://")):
        return MemoryKV()
    from featurelm.engine.config import CacheSettings

    settings = settings or CacheSettings()
    redis_kv = RedisKV(cache_url, prefix=prefix or settings.key_prefix + "http:",
                       timeout_s=settings.redis_timeout_s,
                       max_connections=settings.redis_max_connections)
    return ResilientKV(redis_kv, backoff_s=settings.redis_backoff_s,
                       log_interval_s=settings.log_interval_s)
