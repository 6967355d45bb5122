"""Backend wrappers that record every exchange to cassettes, or answer from them with no backend.

Pass `RecordingBackend.wrapper(store)` or `ReplayingBackend.wrapper(store)` as the engine's
`backend_wrapper`; every backend the engine builds is then wrapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from featurelm.engine.backends.base import Backend
from featurelm.engine.errors import BackendError
from featurelm.engine.types import Completion, CompletionRequest
from featurelm.evals.cassettes import CassetteStore


class RecordingBackend:
    """Calls the real backend and keeps what it answered."""

    def __init__(self, inner: Backend, store: CassetteStore):
        self.inner = inner
        self.store = store
        self.name = inner.name
        self.model = inner.model
        self.capabilities = inner.capabilities

    @classmethod
    def wrapper(cls, store: CassetteStore) -> Callable[[Backend], Backend]:
        return lambda backend: cls(backend, store)

    async def complete(self, request: CompletionRequest) -> Completion:
        completion = await self.inner.complete(request)
        self.store.record(self.name, self.model, request, completion)
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True)
class Miss:
    """A request the cassettes have no answer for."""

    feature: str
    case: str
    backend: str
    model: str

    def __str__(self) -> str:
        return (f"no recording for case {self.case!r} of feature {self.feature!r} "
                f"(backend {self.backend!r}, model {self.model!r})")


class MissingRecording(BackendError):
    """Replay got a request that was never recorded; the prompt, model or input changed."""


class ReplayingBackend:
    """Answers from the cassettes only; the wrapped backend is never called."""

    def __init__(self, inner: Backend, store: CassetteStore, misses: list[Miss]):
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        # The same capabilities as when recording, so the engine builds the same requests.
        self.capabilities = inner.capabilities
        self.store = store
        self.misses = misses

    @classmethod
    def wrapper(cls, store: CassetteStore, misses: list[Miss]) -> Callable[[Backend], Backend]:
        """`misses` collects every unrecorded request, so the run can fail on them."""
        return lambda backend: cls(backend, store, misses)

    async def complete(self, request: CompletionRequest) -> Completion:
        completion = self.store.lookup(self.name, self.model, request)
        if completion is not None:
            return completion
        miss = Miss(feature=request.labels.get("feature", "?"),
                    case=request.labels.get("case", "?"), backend=self.name, model=self.model)
        self.misses.append(miss)
        raise MissingRecording(f"replay: {miss} in {self.store.directory}; record it again "
                               f"with --record {self.store.directory}",
                               backend=self.name, retryable=False)

    async def aclose(self) -> None:
        # Never called, but it may have opened clients when it was built.
        await self.inner.aclose()
