"""The result cache: canonical keys, memory or Redis stores, and request coalescing."""

from featurelm.engine.cache.base import CacheEntry, CacheStore
from featurelm.engine.cache.keys import BackendId, CacheKeys, cache_keys
from featurelm.engine.cache.memory import MemoryCache, NullCache
from featurelm.engine.cache.results import CachePlan, CacheStats, ResultCache, build_store

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
