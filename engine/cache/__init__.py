"""The result cache: canonical keys, memory or Redis stores, and request coalescing."""

from engine.cache.base import CacheEntry, CacheStore
from engine.cache.keys import BackendId, CacheKeys, cache_keys
from engine.cache.memory import MemoryCache, NullCache
from engine.cache.results import CachePlan, CacheStats, ResultCache, build_store

__all__ = [
    "BackendId",
    "CacheEntry",
    "CacheKeys",
    "CachePlan",
    "CacheStats",
    "CacheStore",
    "MemoryCache",
    "NullCache",
    "ResultCache",
    "build_store",
    "cache_keys",
]
