"""The engine's result cache: who may read and write what, lookup, store, and coalescing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from featurelm.engine.cache.base import (
    CacheEntry,
    CacheStore,
    Done,
    Lease,
    decode_outcome,
    encode_outcome,
)
from featurelm.engine.cache.coalesce import SingleFlight
from featurelm.engine.cache.keys import BackendId, CacheKeys, cache_keys
from featurelm.engine.cache.memory import MemoryCache, NullCache
from featurelm.engine.config import EngineConfig
from featurelm.engine.errors import FeaturelmError
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.schemas import violations
from featurelm.engine.types import CompletionRequest

T = TypeVar("T")
Computed = tuple[CacheEntry, T]


@dataclass
class CacheStats:
    """Counters for metrics; `failures` (Redis down or slow) lives on the store."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    #: Calls answered by an identical call in flight, on this replica or another.
    coalesced: int = 0


@dataclass(frozen=True)
class CachePlan:
    """What the cache may do for one call."""

    keys: CacheKeys
    read: bool
    write: bool
    ttl_s: int
    #: Whether identical concurrent calls may share this call's backend call.
    merge: bool


def build_store(config: EngineConfig) -> CacheStore:
    """The store named by `cache:` in featurelm.yaml (the URL is checked at config load)."""
    settings = config.cache_settings
    if config.cache == "memory":
        return MemoryCache(settings.max_entries)
    if config.cache == "none":
        return NullCache()
    from featurelm.engine.cache.redis import RedisCache

    return RedisCache(config.cache, settings)


class ResultCache:
    def __init__(self, store: CacheStore):
        self.store = store
        self.enabled = not isinstance(store, NullCache)
        self.stats = CacheStats()
        self._flights: SingleFlight[tuple[CacheEntry, Any]] = SingleFlight()

    @property
    def failures(self) -> int:
        """Cache operations that failed and were served around (the degradation counter)."""
        return self.store.failures

    def plan(self, feature: LoadedFeature, request: CompletionRequest, *, tenant: str | None,
             chain: Sequence[BackendId], read: bool = True, write: bool = True,
             coalesce: bool = True) -> CachePlan:
        policy = feature.spec.cache
        caching = self.enabled and policy.enabled
        read, write = caching and read, caching and write
        # Merging hands one answer to several callers, which is as good as reading it from
        # the cache: fine for greedy decoding, or when the caller would take a cached answer.
        merge = coalesce and (request.temperature == 0 or read)
        return CachePlan(cache_keys(feature, request, tenant=tenant, chain=chain),
                         read=read, write=write, ttl_s=policy.ttl, merge=merge)

    async def lookup(self, plan: CachePlan, schema: Mapping[str, Any]) -> CacheEntry | None:
        """The first valid entry along the route's chain, or None."""
        entry = await self._find(plan, schema)
        if entry is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return entry

    async def _find(self, plan: CachePlan, schema: Mapping[str, Any]) -> CacheEntry | None:
        for text in await self.store.get_many([key for _, key in plan.keys.lookup]):
            entry = CacheEntry.decode(text) if text is not None else None
            if entry is not None and not violations(schema, entry.output):
                return entry
        return None

    async def save(self, plan: CachePlan, entry: CacheEntry, schema: Mapping[str, Any]) -> None:
        """Store a schema-valid entry under the backend that answered (never anything else)."""
        key = plan.keys.entry_for(entry.backend)
        if key is None or violations(schema, entry.output):
            return
        await self.store.set(key, entry.encode(), plan.ttl_s)
        self.stats.stores += 1

    async def coalesce(self, plan: CachePlan, compute: Callable[[], Awaitable[Computed[T]]], *,
                       schema: Mapping[str, Any], deadline: float,
                       ) -> tuple[CacheEntry, T | None]:
        """Run `compute` once for all identical concurrent calls (across replicas too, where
        the store allows). The second item is `compute`'s value for the caller whose call
        made the backend call, None for the callers it answered."""
        flight = plan.keys.flight
        # Across replicas the outcome travels through Redis, so only calls that store anyway.
        distributed = plan.write and self.store.distributed

        async def lead() -> tuple[CacheEntry, T | None]:
            claim = await self.store.claim(flight, deadline) if distributed else None
            if isinstance(claim, Done):
                outcome = decode_outcome(claim.payload)
                if isinstance(outcome, FeaturelmError):
                    raise outcome
                self.stats.coalesced += 1
                if outcome is not None and not violations(schema, outcome.output):
                    return outcome, None
                claim = None  # an unreadable outcome: make the call alone
            if isinstance(claim, Lease) and plan.read:
                # The previous leader may have stored the entry just before we took the lock.
                entry = await self._find(plan, schema)
                if entry is not None:
                    self.stats.coalesced += 1
                    await self.store.finish(flight, claim, encode_outcome(entry))
                    return entry, None
            try:
                entry, value = await compute()
            except FeaturelmError as exc:
                if isinstance(claim, Lease):
                    await self.store.finish(flight, claim, encode_outcome(exc))
                raise
            except BaseException:
                if isinstance(claim, Lease):
                    await self.store.finish(flight, claim, None)
                raise
            if isinstance(claim, Lease):
                await self.store.finish(flight, claim, encode_outcome(entry))
            return entry, value

        # A no-store call does not lead a call whose result others expect to be stored.
        (entry, value), leader = await self._flights.run(f"{flight}:{int(plan.write)}", lead)
        if not leader:
            self.stats.coalesced += 1
            return entry, None
        return entry, value

    async def aclose(self) -> None:
        await self._flights.aclose()
        await self.store.aclose()
