"""The production cache: Redis shared by every engine replica, which also coalesces identical
calls across replicas (a short renewed lock, waiters poll for the leader's outcome)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from featurelm.engine.cache.base import CacheStore, Done, Lease
from featurelm.engine.config import CacheSettings

log = logging.getLogger("featurelm.cache")

#: What a sick Redis raises; any of these degrades to "no cache", never to a failed call.
REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
#: Waiters poll for the leader's outcome with a doubling delay between these bounds (s).
POLL_MIN_S, POLL_MAX_S = 0.005, 0.05

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Publish before release, atomically: a waiter that sees the lock gone sees the outcome too.
_FINISH = """
if ARGV[2] ~= '' then redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 1
"""


def _text(value: bytes | str | None) -> str | None:
    # The client decodes replies (decode_responses=True); its typing cannot know that.
    return value.decode() if isinstance(value, bytes) else value


class RedisCache(CacheStore):
    distributed = True

    def __init__(self, url: str, settings: CacheSettings):
        # Bounded waits everywhere: for a pooled connection, to connect, for each reply; one
        # immediate retry replaces a connection the server closed while it sat in the pool.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=settings.redis_max_connections, timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(NoBackoff(), 1), decode_responses=True)
        self._redis: Redis = Redis.from_pool(pool)
        self._prefix = settings.key_prefix
        self._lock_ms = int(settings.lock_s * 1000)
        self._backoff_s = settings.redis_backoff_s
        self._log_interval_s = settings.log_interval_s
        self._skip_until = 0.0
        self._logged_at = -float("inf")
        self._unlogged = 0
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._renew = self._redis.register_script(_RENEW)
        self._finish = self._redis.register_script(_FINISH)

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, exc: BaseException) -> None:
        # After a failure Redis is left alone for a while, so a slow Redis costs one timeout
        # per interval rather than one per call; the log says so once per interval too.
        self.failures += 1
        self._unlogged += 1
        now = time.monotonic()
        self._skip_until = now + self._backoff_s
        if now - self._logged_at >= self._log_interval_s:
            log.warning("cache unavailable, serving without it (%d failure(s) since the last "
                        "report): %s: %s", self._unlogged, type(exc).__name__, exc)
            self._logged_at = now
            self._unlogged = 0

    def _lock_key(self, flight: str) -> str:
        # The hash tag keeps a flight's lock and outcome in one Redis Cluster slot.
        return f"{self._prefix}{{{flight}}}:lock"

    def _done_key(self, flight: str, token: str) -> str:
        return f"{self._prefix}{{{flight}}}:done:{token}"

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        if keys and self._available():
            try:
                return [_text(v) for v in await self._redis.mget([self._prefix + k for k in keys])]
            except REDIS_FAILURES as exc:
                self._failed(exc)
        return [None] * len(keys)

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        if not self._available():
            return
        try:
            await self._redis.set(self._prefix + key, value, ex=ttl_s or None)
        except REDIS_FAILURES as exc:
            self._failed(exc)

    async def claim(self, flight: str, deadline: float) -> Lease | Done | None:
        if not self._available():
            return None
        lock = self._lock_key(flight)
        try:
            while time.monotonic() < deadline:
                token = secrets.token_hex(16)
                if await self._redis.set(lock, token, nx=True, px=self._lock_ms):
                    self._renewals[token] = asyncio.create_task(self._keep(lock, token))
                    return Lease(token)
                holder = _text(await self._redis.get(lock))
                if holder is not None:
                    done = await self._wait(flight, lock, holder, deadline)
                    if done is not None:
                        return done
        except REDIS_FAILURES as exc:
            self._failed(exc)
        return None

    async def _wait(self, flight: str, lock: str, holder: str, deadline: float) -> Done | None:
        """Poll for the outcome of the flight `holder` leads; None once it is gone without
        one (it failed unexpectedly or died) or at the deadline."""
        delay = POLL_MIN_S
        self.waiting += 1
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)
                done, current = await self._redis.mget([self._done_key(flight, holder), lock])
                if done is not None:
                    return Done(str(_text(done)))
                if _text(current) != holder:
                    return None
            return None
        finally:
            self.waiting -= 1

    async def _keep(self, lock: str, token: str) -> None:
        """Renew a held lock: short enough that a dead leader frees waiters quickly, renewed
        so a slow backend call does not lose it."""
        while True:
            await asyncio.sleep(self._lock_ms / 3000)
            try:
                await self._renew(keys=[lock], args=[token, self._lock_ms])
            except REDIS_FAILURES as exc:
                self._failed(exc)
                return

    async def finish(self, flight: str, lease: Lease, outcome: str | None) -> None:
        renewal = self._renewals.pop(lease.token, None)
        if renewal is not None:
            renewal.cancel()
        if not self._available():
            return  # the lock expires by itself; waiters then make the call alone
        try:
            await self._finish(keys=[self._lock_key(flight), self._done_key(flight, lease.token)],
                               args=[lease.token, outcome or "", self._lock_ms])
        except REDIS_FAILURES as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        for renewal in self._renewals.values():
            renewal.cancel()
        self._renewals.clear()
        await self._redis.aclose()
