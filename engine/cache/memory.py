"""The embedded cache: a bounded in-process LRU with per-entry TTL, and the disabled cache."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from featurelm.engine.cache.base import CacheStore


class MemoryCache(CacheStore):
    """Least recently used entries go first once `max_entries` is reached; expired entries
    are dropped when read (or evicted like any other)."""

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        #: Injectable so tests can expire entries without sleeping.
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float | None, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        now = self.clock()
        found: list[str | None] = []
        for key in keys:
            item = self._entries.get(key)
            if item is not None and item[0] is not None and item[0] <= now:
                del self._entries[key]
                item = None
            if item is not None:
                self._entries.move_to_end(key)
            found.append(None if item is None else item[1])
        return found

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        expires = self.clock() + ttl_s if ttl_s else None
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class NullCache(CacheStore):
    """`cache: none`: nothing is stored; identical concurrent calls may still coalesce."""

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return [None] * len(keys)

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        return None
