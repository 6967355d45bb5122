"""How many calls an HTTP backend has in flight, how many wait for a connection, and for how
long they may wait: the gate in front of an adapter's connection pool.

HTTP/1.1 carries one call per connection, so the pool size is the backend's in-flight limit.
Calls beyond it wait in line (first come, first served); the line is visible (`PoolStats`,
exported by /metrics) and bounded in time, so a saturated backend fails calls with a clear
504 instead of holding them silently until the caller gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from featurelm.engine.backends.provider_errors import Failure, to_backend_error
from featurelm.engine.stats import PoolStats


class ConnectionGate:
    """At most `limit` calls in flight; the rest wait up to `queue_timeout_s` (and never past
    their own deadline). One per backend and event loop: asyncio primitives belong to one loop."""

    def __init__(self, backend: str, limit: int, queue_timeout_s: float) -> None:
        self.backend = backend
        self.limit = limit
        self.queue_timeout_s = queue_timeout_s
        self._slots = asyncio.Semaphore(limit)
        self.waiting = 0
        #: Calls that gave up waiting (queue timeout or deadline), since start.
        self.timed_out = 0

    @property
    def in_flight(self) -> int:
        return self.limit - self._slots._value

    def stats(self) -> PoolStats:
        return PoolStats(backend=self.backend, limit=self.limit, in_flight=self.in_flight,
                         waiting=self.waiting, queue_timeouts=self.timed_out)

    @contextlib.asynccontextmanager
    async def slot(self, deadline_s: float | None) -> AsyncIterator[None]:
        """Hold one of the `limit` slots for the block; `deadline_s` is the time the call has
        left (None: no deadline)."""
        if self._slots.locked():
            await self._wait(deadline_s)
        else:
            # Free slot: taken without a timer, the common case stays as cheap as a counter.
            self._slots._value -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def _wait(self, deadline_s: float | None) -> None:
        bound = self.queue_timeout_s if deadline_s is None else min(self.queue_timeout_s,
                                                                      max(deadline_s, 0.0))
        self.waiting += 1
        try:
            async with asyncio.timeout(bound):
                await self._slots.acquire()
        except TimeoutError:
            self.timed_out += 1
            # Not retryable on this backend (it would wait in the same line), but a timeout:
            # the dispatcher moves on to the route's next backend, and with none left the
            # caller gets 504 with this message.
            raise to_backend_error(Failure(
                what="no free connection", retryable=False, timeout=True,
                detail=f"all {self.limit} connections (max_connections) busy for {bound:.3g} s, "
                       f"{self.waiting - 1} other calls waiting; raise max_connections or add "
                       "replicas"), self.backend, detail_is_public=True) from None
        finally:
            self.waiting -= 1
