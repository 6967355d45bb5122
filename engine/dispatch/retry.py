"""How long to wait before retrying: exponential backoff with full jitter, or Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

from featurelm.engine.errors import BackendError


@dataclass(frozen=True)
class RetryPolicy:
    #: First backoff ceiling in seconds; doubles with each retry.
    base_delay: float = 0.1
    #: Largest backoff ceiling.
    max_delay: float = 2.0
    #: A provider's Retry-After is honoured up to this many seconds.
    max_retry_after: float = 10.0

    def delay(self, retry: int, error: BackendError, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0-based) after `error`."""
        if error.retry_after is not None:
            return min(error.retry_after, self.max_retry_after)
        # Full jitter spreads synchronized clients apart (AWS architecture blog, "Exponential
        # Backoff And Jitter").
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** retry))
