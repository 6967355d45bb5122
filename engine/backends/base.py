"""The backend Protocols every model adapter implements (the data they exchange is in
engine/types.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from featurelm.engine.stats import PoolStats
from featurelm.engine.types import Capabilities, Completion, CompletionRequest, Usage


@runtime_checkable
class Backend(Protocol):
    """A model endpoint. Adapters raise only `engine.errors.BackendError` (mapped in one place)."""

    name: str
    model: str
    capabilities: Capabilities

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A backend that can yield the completion text as it is generated. A stream may end
    with the provider's `Usage` for the call; without one the engine counts the tokens."""

    def stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]: ...


@runtime_checkable
class PooledBackend(Protocol):
    """A backend with a connection pool whose load /metrics shows (in flight, waiting)."""

    def pool_stats(self) -> PoolStats: ...
