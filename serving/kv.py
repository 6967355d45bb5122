"""Expiring counters and values shared by the limits and idempotency: Redis or in-process.

Redis (when `cache` in featurelm.yaml is a redis:// URL) makes limits hold across replicas;
the in-process store is for one replica (the embedded defaults).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis.asyncio as redis


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


class RedisKV:
    def __init__(self, url: str, *, prefix: str = "featurelm:http:") -> None:
        # Imported here: a replica without Redis never loads the client (about 6 MiB).
        import redis.asyncio as redis

        self._redis: redis.Redis = redis.Redis.from_url(url)
        self._prefix = prefix

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


def kv_for(cache_url: str, *, prefix: str = "featurelm:http:") -> KV:
    """Redis where the engine's cache is Redis, else in-process."""
    if cache_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisKV(cache_url, prefix=prefix)
    return MemoryKV()
