"""A scripted backend whose replies a test (or a demo config) decides.

Give it a function of the request, or a list of replies consumed in order. A reply is the
completion text, or an exception to raise (for example a BackendError to simulate a fault).
Every request it receives is kept in `requests`, so tests can assert on what was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from pydantic import BaseModel, ConfigDict

from featurelm.engine.backends import adapter_options, register
from featurelm.engine.config import BackendConfig
from featurelm.engine.types import (
    Capabilities,
    Completion,
    CompletionRequest,
    StructuredDialect,
    Usage,
)

Reply = str | BaseException
ReplyFunction = Callable[[CompletionRequest], Reply | Awaitable[Reply]]


class ScriptedBackend:
    def __init__(self, replies: Iterable[Reply] | ReplyFunction = (), *, name: str = "scripted",
                 model: str = "scripted", structured: StructuredDialect = "none",
                 delay: float = 0.0, context_window: int = 8192):
        self.name = name
        self.model = model
        self.capabilities = Capabilities(structured=structured, streaming=True,
                                         context_window=context_window)
        self.delay = delay
        self.requests: list[CompletionRequest] = []
        if callable(replies):
            self._function: ReplyFunction | None = replies
            self._queue: list[Reply] = []
        else:
            self._function = None
            self._queue = list(replies)

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def _reply(self, request: CompletionRequest) -> str:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._function is not None:
            reply = self._function(request)
            if asyncio.iscoroutine(reply) or isinstance(reply, Awaitable):
                reply = await reply
        elif self._queue:
            # The last reply repeats, so "always invalid" is a one-element script.
            reply = self._queue.pop(0) if len(self._queue) > 1 else self._queue[0]
        else:
            raise AssertionError(f"scripted backend {self.name!r} has no reply scripted")
        if isinstance(reply, BaseException):
            raise reply
        return reply

    @staticmethod
    def _usage(request: CompletionRequest, text: str) -> Usage:
        # A stand-in count, the same whether the reply is streamed or not (as a provider's).
        prompt_chars = sum(len(m.content) for m in request.messages)
        return Usage(prompt_tokens=prompt_chars // 4 + 1, completion_tokens=len(text) // 4 + 1)

    async def complete(self, request: CompletionRequest) -> Completion:
        text = await self._reply(request)
        return Completion(text=text, backend=self.name, model=self.model,
                          usage=self._usage(request, text))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        text = await self._reply(request)
        for start in range(0, len(text), 8):
            yield text[start:start + 8]
        yield self._usage(request, text)  # last, as OpenAI-style servers report it

    async def aclose(self) -> None:
        return None


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replies: list[str] = []
    delay: float = 0.0


@register("scripted")
def _from_config(name: str, config: BackendConfig) -> ScriptedBackend:
    options = adapter_options(name, ScriptedOptions, config.options)
    return ScriptedBackend(options.replies, name=name, model=config.model or "scripted",
                           structured=config.structured or "none",  # type: ignore[arg-type]
                           delay=options.delay,
                           context_window=config.context_window or 8192)
