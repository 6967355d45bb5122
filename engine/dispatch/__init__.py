"""Dispatching calls to backends: fallback chains, retries, deadlines, circuit breakers."""

from featurelm.engine.dispatch.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from featurelm.engine.dispatch.dispatcher import CallRecord, Dispatched, Dispatcher, TextSink
from featurelm.engine.dispatch.retry import RetryPolicy

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CallRecord",
    "CircuitBreaker",
    "Dispatched",
    "Dispatcher",
    "RetryPolicy",
    "TextSink",
]
