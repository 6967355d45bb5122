"""Streaming one feature call: model text as it is generated, then the validated result.

A streamed call takes the same pipeline as `Engine.run` (`Engine.prepare`, then
`Engine.execute` with a text sink): the same checks, cache, coalescing, dispatcher,
structured-output attempts, usage records and meta. Failures that happen before anything is
streamed (bad input, over budget) raise from the constructor. A call answered without a model
call of its own (a cache hit, or an identical call in flight) streams its output as one delta.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from featurelm.engine.engine import Engine, Result, RunOptions
from featurelm.engine.loader import LoadedFeature


@dataclass(frozen=True)
class Delta:
    """Raw model text of attempt `attempt` (1-based); a new attempt starts a new text."""

    text: str
    attempt: int


@dataclass(frozen=True)
class Done:
    result: Result


StreamEvent = Delta | Done


def output_text(output: Any) -> str:
    """The text a stream shows for an output the model did not write just now."""
    return json.dumps(output, ensure_ascii=False)


class FeatureStream:
    """One streamed call. Construct (validates, may raise), then iterate `events()` once."""

    def __init__(self, engine: Engine, feature: LoadedFeature, input: Any, *,
                 tenant: str | None = None, options: RunOptions | None = None):
        self.engine = engine
        self.call = engine.prepare(feature, input, tenant=tenant, options=options)

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Deltas as the model writes, then Done with the schema-valid result (or raises)."""
        # Deltas and the call's end share one queue (None marks the end): one wakeup per
        # delta, where waiting on the queue and the task together costs a future and two
        # callbacks per delta.
        queue: asyncio.Queue[Delta | None] = asyncio.Queue()

        async def on_text(text: str, attempt: int) -> None:
            queue.put_nowait(Delta(text, attempt))

        task = asyncio.create_task(self.engine.execute(self.call, on_text))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        streamed = False
        try:
            while (delta := await queue.get()) is not None:
                streamed = True
                yield delta
            result = task.result()
        finally:
            task.cancel()
        if not streamed:
            yield Delta(output_text(result.output), 1)
        yield Done(result)
