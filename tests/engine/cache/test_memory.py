"""The embedded memory cache: bounded by entry count (least recently used go), per-entry TTL."""

from __future__ import annotations

import pytest

from featurelm.engine.cache import MemoryCache
from featurelm.engine.config import EngineConfig, load_config
from featurelm.engine.errors import ContractError
from tests.conftest import ProjectFactory


async def test_the_least_recently_used_entry_goes_when_full() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", "1", 0)
    await cache.set("b", "2", 0)
    assert await cache.get_many(["a"]) == ["1"]  # "a" is now the most recently used
    await cache.set("c", "3", 0)
    assert await cache.get_many(["a", "b", "c"]) == ["1", None, "3"]
    assert len(cache) == 2


async def test_entries_expire_after_their_own_ttl_and_zero_means_never() -> None:
    now = [100.0]
    cache = MemoryCache(max_entries=10, clock=lambda: now[0])
    await cache.set("short", "s", 5)
    await cache.set("long", "l", 50)
    await cache.set("forever", "f", 0)
    now[0] += 5
    assert await cache.get_many(["short", "long", "forever"]) == [None, "l", "f"]
    now[0] += 1_000_000
    assert await cache.get_many(["short", "long", "forever"]) == [None, None, "f"]
    assert len(cache) == 1


@pytest.mark.parametrize("value", ["memory", "none", "redis://127.0.0.1:6379/0",
                                   "rediss://user:pw@host:6380/1", "unix:///run/redis.sock"])
def test_cache_accepts_memory_none_and_redis_urls(value: str) -> None:
    assert EngineConfig(cache=value).cache == value


def test_an_unknown_cache_is_refused_without_echoing_it(make_project: ProjectFactory) -> None:
    with pytest.raises(ContractError) as caught:
        load_config(make_project(extra={"cache": "memcached://secret@host"}))
    assert caught.value.issues[0].path == "cache"
    assert "secret" not in str(caught.value)
