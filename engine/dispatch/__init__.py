"""Dispatching calls to backends: fallback chains, retries, deadlines, circuit breakers."""

from engine.dispatch.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from engine.dispatch.dispatcher import CallRecord, Dispatched, Dispatcher
from engine.dispatch.retry import RetryPolicy

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CallRecord",
    "CircuitBreaker",
    "Dispatched",
    "Dispatcher",
    "RetryPolicy",
]
