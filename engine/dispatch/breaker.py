"""Per-backend circuit breaker: stop sending to a backend that keeps failing, probe it later."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    #: Consecutive failures that open the breaker.
    failure_threshold: int = 5
    #: Seconds an open breaker waits before letting one probe call through.
    cooldown: float = 30.0


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after the cool-down (one
    probe at a time) -> closed on the probe's success, open again on its failure."""

    def __init__(self, policy: BreakerPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if (self._state is BreakerState.OPEN
                and self._clock() - self._opened_at >= self.policy.cooldown):
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to this backend now? In half-open, only the single probe may."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._state = BreakerState.HALF_OPEN
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.policy.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """The call ended without a verdict on the backend's health (e.g. the caller gave up)."""
        self._probing = False
