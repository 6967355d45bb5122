"""Streaming one feature call: model text as it is generated, then the validated result.

Each attempt streams through `Dispatcher.stream` (backends without streaming answer in one
chunk); the attempts go through `generate_structured`, so the final result is exactly as
schema-checked as `Engine.run`'s. Streamed calls bypass the result cache. Failures that
happen before anything is streamed (bad input, over budget) raise from the constructor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from featurelm.engine.backends.base import StreamingBackend
from featurelm.engine.costs import cost_usd
from featurelm.engine.dispatch import CallRecord
from featurelm.engine.engine import Engine, Meta, Result, RunOptions
from featurelm.engine.errors import BackendError
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.structured import generate_structured
from featurelm.engine.tokens import count_prompt_tokens, count_text_tokens
from featurelm.engine.types import Completion, CompletionRequest, Usage


@dataclass(frozen=True)
class Delta:
    """Raw model text of attempt `attempt` (1-based); a new attempt starts a new text."""

    text: str
    attempt: int


@dataclass(frozen=True)
class Done:
    result: Result


StreamEvent = Delta | Done


class FeatureStream:
    """One streamed call. Construct (validates, may raise), then iterate `events()` once."""

    def __init__(self, engine: Engine, feature: LoadedFeature, input: Any, *,
                 tenant: str | None = None, options: RunOptions | None = None):
        self.engine = engine
        self.feature = feature
        self.tenant = tenant
        self.options = options or RunOptions()
        self.started = time.monotonic()
        self.cost = 0.0
        engine.validate_input(feature, input)
        self.route = engine.route_for(feature, self.options)
        self.request = engine.build_request(feature, input, tenant=tenant, options=self.options)
        engine.check_budget(self.route, self.request)
        self.deadline = self.started + engine.config.limits.request_timeout_s
        fitting = engine.dispatcher.backends_fitting(self.route, self.request)
        streaming = [n for n in fitting if isinstance(engine.backends[n], StreamingBackend)
                     and engine.backends[n].capabilities.streaming]
        # The dispatcher does not say which backend streamed; this is the one it tries first.
        self.backend = (streaming or fitting)[0]

    async def _attempt(self, request: CompletionRequest, attempt: int,
                       queue: asyncio.Queue[StreamEvent]) -> Completion:
        dispatcher = self.engine.dispatcher
        backend = self.engine.backends[self.backend]
        started = time.monotonic()
        chunks: list[str] = []
        try:
            async for chunk in dispatcher.stream(self.route, request, deadline=self.deadline):
                chunks.append(chunk)
                await queue.put(Delta(chunk, attempt))
        except BackendError as error:
            self._record(request, None, started, error)
            raise
        text = "".join(chunks)
        usage = Usage(count_prompt_tokens(request.messages, backend.capabilities.tokenizer),
                      count_text_tokens(text, backend.capabilities.tokenizer))
        completion = Completion(text=text, backend=self.backend, model=backend.model,
                                usage=usage)
        self._record(request, completion, started, None)
        return completion

    def _record(self, request: CompletionRequest, completion: Completion | None,
                started: float, error: BackendError | None) -> None:
        config = self.engine.config.backends.get(self.backend)
        usage = completion.usage if completion else Usage()
        model = completion.model if completion else None
        record = CallRecord(
            route=self.route, backend=self.backend, model=model, attempts=1, usage=usage,
            cost_usd=cost_usd(config, model or config.model, usage) if config else 0.0,
            latency_ms=(time.monotonic() - started) * 1000, labels=dict(request.labels),
            error=str(error) if error else None)
        self.cost += record.cost_usd
        if self.engine.dispatcher.on_call is not None:
            self.engine.dispatcher.on_call(record)

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Deltas as the model writes, then Done with the schema-valid result (or raises)."""
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        attempts = 0

        async def complete(request: CompletionRequest) -> Completion:
            nonlocal attempts
            attempts += 1
            return await self._attempt(request, attempts, queue)

        spec = self.feature.spec
        task = asyncio.create_task(generate_structured(complete, self.request, spec.output,
                                                       spec.model.max_attempts))
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            structured = task.result()
        finally:
            task.cancel()
        meta = Meta(feature=self.feature.name, feature_version=spec.version, tenant=self.tenant,
                    override_version=self.feature.override_version, route=self.route,
                    backend=structured.completion.backend, model=structured.completion.model,
                    attempts=structured.attempts, tokens_in=structured.tokens_in,
                    tokens_out=structured.tokens_out,
                    latency_ms=round((time.monotonic() - self.started) * 1000, 2),
                    cost_usd=round(self.cost, 8), cached=False)
        yield Done(Result(output=structured.output, meta=meta))
