"""What the engine counts about its own degradation, read by `Engine.stats()` for /metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started. They only grow, so they export as Prometheus
    counters; a scrape reads a fresh snapshot."""

    #: Result cache lookups that found a valid entry / found none.
    cache_hits: int
    cache_misses: int
    #: Valid results saved to the result cache (a failing cache drops them and counts a
    #: failure).
    cache_stores: int
    #: Calls answered by an identical call in flight, on this replica or another.
    cache_coalesced: int
    #: Cache operations that failed (Redis down or slow) and were served around: calls went
    #: on without the cache, so only this counter shows that the cache is degraded.
    cache_failures: int
    #: Tenant store operations (connects included) that failed: the store was unreachable,
    #: timed out or refused the query.
    store_failures: int
    #: Connection pools of the HTTP backends (in flight, waiting), one entry per backend.
    pools: tuple[PoolStats, ...] = ()


@dataclass(frozen=True)
class PoolStats:
    """One HTTP backend's connection pool at this moment (gauges), and its queue timeouts
    since start (a counter)."""

    backend: str
    #: `max_connections`: calls this backend may have in flight at once.
    limit: int
    in_flight: int
    #: Calls waiting for a free connection: above zero, the backend is the bottleneck.
    waiting: int
    #: Calls that gave up waiting for a connection (504, or the route's next backend).
    queue_timeouts: int
