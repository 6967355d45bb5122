"""Adapter for OpenAI-compatible chat servers (vLLM, llama.cpp server, SGLang), kind "openai".

Keep-alive connections pooled per backend and event loop (engine/backends/http1.py), requests
balanced across replicas by least in-flight (weighted), structured output sent in the dialect
the server speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from featurelm.engine import json_bytes
from featurelm.engine.backends import adapter_dialect, adapter_options, api_key_from_env, register
from featurelm.engine.backends.http1 import Client, Endpoint
from featurelm.engine.backends.pool import ConnectionGate
from featurelm.engine.backends.provider_errors import (
    MalformedResponse,
    ProviderStatusError,
    mapped_errors,
)
from featurelm.engine.config import BackendConfig
from featurelm.engine.stats import PoolStats
from featurelm.engine.tokens import count_prompt_tokens, count_text_tokens
from featurelm.engine.types import (
    Capabilities,
    Completion,
    CompletionRequest,
    StructuredDialect,
    Usage,
)

#: Dialects an HTTP chat server can speak ("grammar" is for in-process decoding only).
HTTP_DIALECTS: tuple[StructuredDialect, ...] = (
    "json_schema", "structured_outputs", "json_object_schema", "none")
DEFAULT_CONTEXT_WINDOW = 8192
#: vLLM's V1 engine runs up to 1024 sequences at once on a large GPU (`--max-num-seqs`, 256
#: on smaller ones) and queues the rest itself; 2048 in flight lets one engine replica keep
#: two such servers full. See docs/deploy.md, "Sizing", for sizing it from the servers'.
DEFAULT_MAX_CONNECTIONS = 2048
DEFAULT_QUEUE_TIMEOUT_S = 10.0


class OpenAIOptions(BaseModel):
    """`options:` of a kind "openai" backend in featurelm.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_urls: list[str] = Field(min_length=1, description="Replica base URLs, ending in /v1.")
    weights: list[float] | None = Field(None, description="Relative share per replica.")
    api_key_env: str | None = Field(None, description="Name of the env var holding the API key.")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_connections: int = Field(
        DEFAULT_MAX_CONNECTIONS, ge=1,
        description="Calls in flight at once to this backend, across all its replicas (one "
        "connection each); calls beyond it wait for a free connection.")
    queue_timeout_s: float = Field(
        DEFAULT_QUEUE_TIMEOUT_S, gt=0,
        description="Most seconds a call waits for a free connection (never past its "
        "deadline) before it fails with 504 or moves on to the route's next backend.")
    keepalive_s: float = Field(
        15.0, ge=0, description="How long an idle connection is kept open for the next call; "
        "0 closes each connection after its call.")
    send_cache_salt: bool | None = Field(
        None, description="Send the tenant's cache_salt; default on for structured_outputs.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    streaming: bool = True

    @field_validator("base_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [url.rstrip("/") for url in urls]

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(k.lower() in ("authorization", "api-key", "x-api-key") for k in headers):
            raise ValueError("credentials do not belong in config; use api_key_env")
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"header {name[:40]!r}: a name is letters, digits and "
                                 "-!#$%&'*+.^_`|~; a value is printable Latin-1 on one line")
        return headers

    @model_validator(mode="after")
    def _weights_match(self) -> OpenAIOptions:
        if self.weights is not None and (
                len(self.weights) != len(self.base_urls) or min(self.weights) <= 0):
            raise ValueError("weights needs one positive number per base_urls entry")
        return self


#: RFC 9110 field names and (printable Latin-1, one line) values: config headers go on the wire.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


@dataclass
class Replica:
    url: str
    weight: float = 1.0
    #: Where its chat completions are POSTed, with the request head built once.
    completions: Endpoint = field(init=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    keep_alive: bool = True
    in_flight: int = 0
    #: Sequence number of the last pick, so ties go to the replica used least recently.
    last_pick: int = 0

    def __post_init__(self) -> None:
        self.completions = Endpoint(f"{self.url}/chat/completions", self.headers,
                                    keep_alive=self.keep_alive)


class Balancer:
    """Least in-flight (per unit of weight) across replicas; no lock: one event loop owns it."""

    def __init__(self, urls: Sequence[str], weights: Sequence[float] | None = None, *,
                 headers: Mapping[str, str] | None = None, keep_alive: bool = True):
        weights = weights or [1.0] * len(urls)
        self.replicas = [Replica(url, weight, headers=headers or {}, keep_alive=keep_alive)
                         for url, weight in zip(urls, weights, strict=True)]
        self._picks = itertools.count(1)

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Replica]:
        replica = min(self.replicas, key=lambda r: ((r.in_flight + 1) / r.weight, r.last_pick))
        replica.in_flight += 1
        replica.last_pick = next(self._picks)
        try:
            yield replica
        finally:
            replica.in_flight -= 1


def structured_fields(dialect: StructuredDialect,
                      schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """The request fields that ask the server for schema-constrained output."""
    if schema is None or dialect in ("none", "grammar"):
        return {}
    if dialect == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "output", "schema": dict(schema), "strict": True}}}
    if dialect == "structured_outputs":
        return {"structured_outputs": {"json": dict(schema)}}
    return {"response_format": {"type": "json_object", "schema": dict(schema)}}


def chat_body(request: CompletionRequest, *, model: str, dialect: StructuredDialect,
              send_cache_salt: bool, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        **request.params,
        **structured_fields(dialect, request.output_schema),
    }
    if send_cache_salt and request.cache_salt:
        body["cache_salt"] = request.cache_salt
    if stream:
        # The last event then carries the server's own token counts (vLLM, OpenAI, llama.cpp
        # server), so a stream is billed like the same call answered in one body.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def parse_completion(data: Any) -> tuple[str, str, Usage | None, str | None]:
    """(text, finish_reason, usage or None, model) from a chat.completion body."""
    if not isinstance(data, Mapping):
        raise MalformedResponse("response body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        error = data.get("error")
        raise MalformedResponse(f"response has no choices{f': {error}' if error else ''}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    if content is not None and not isinstance(content, str):
        raise MalformedResponse("message content is not a string")
    usage = None
    raw_usage = data.get("usage")
    if isinstance(raw_usage, Mapping) and isinstance(raw_usage.get("prompt_tokens"), int):
        usage = Usage(prompt_tokens=raw_usage["prompt_tokens"],
                      completion_tokens=int(raw_usage.get("completion_tokens") or 0))
    model = data.get("model")
    return (content or "", str(choices[0].get("finish_reason") or "stop"), usage,
            model if isinstance(model, str) else None)


def _stream_event(payload: str) -> tuple[str, Usage | None]:
    """(text delta, usage if this event reports it) of one `data:` event of a stream."""
    data = json_bytes.loads(payload)
    if not isinstance(data, Mapping):
        raise MalformedResponse("stream event is not a JSON object")
    if data.get("error"):
        raise MalformedResponse(f"stream error: {data['error']}")
    choices = data.get("choices") or []
    delta = choices[0].get("delta") if choices and isinstance(choices[0], Mapping) else None
    content = delta.get("content") if isinstance(delta, Mapping) else None
    usage = None
    raw_usage = data.get("usage")
    if isinstance(raw_usage, Mapping) and isinstance(raw_usage.get("prompt_tokens"), int):
        usage = Usage(prompt_tokens=raw_usage["prompt_tokens"],
                      completion_tokens=int(raw_usage.get("completion_tokens") or 0))
    return (content if isinstance(content, str) else ""), usage


class OpenAICompatBackend:
    """A chat-completions endpoint with one or more replicas."""

    def __init__(self, name: str, *, model: str, base_urls: Sequence[str],
                 weights: Sequence[float] | None = None, api_key: str | None = None,
                 structured: StructuredDialect = "json_schema",
                 send_cache_salt: bool | None = None, streaming: bool = True,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, keepalive_s: float = 15.0,
                 headers: Mapping[str, str] | None = None,
                 context_window: int = DEFAULT_CONTEXT_WINDOW, tokenizer: str = "cl100k_base"):
        self.name = name
        self.model = model
        self.capabilities = Capabilities(structured=structured, streaming=streaming,
                                         tokenizer=tokenizer, context_window=context_window)
        self.send_cache_salt = (structured == "structured_outputs"
                                if send_cache_salt is None else send_cache_salt)
        self._secrets = (api_key,) if api_key else ()
        request_headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            request_headers["Authorization"] = f"Bearer {api_key}"
        self.balancer = Balancer(base_urls, weights, headers=request_headers,
                                 keep_alive=keepalive_s > 0)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._queue_timeout_s = queue_timeout_s
        self._keepalive_s = keepalive_s
        #: One client and gate per event loop: connections belong to the loop that made them
        #: (the CLI and tests may run several loops over one backend).
        self._clients: dict[asyncio.AbstractEventLoop, Client] = {}
        self._gates: dict[asyncio.AbstractEventLoop, ConnectionGate] = {}

    def _client(self) -> Client:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = Client(connect_timeout=self._connect_timeout,
                                                  read_timeout=self._read_timeout,
                                                  keepalive_s=self._keepalive_s)
        return client

    def _gate(self) -> ConnectionGate:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = ConnectionGate(self.name, self._max_connections,
                                                      self._queue_timeout_s)
        return gate

    def pool_stats(self) -> PoolStats:
        """Calls in flight and waiting for a connection, over every event loop's pool."""
        gates = list(self._gates.values())
        return PoolStats(backend=self.name, limit=self._max_connections,
                         in_flight=sum(g.in_flight for g in gates),
                         waiting=sum(g.waiting for g in gates),
                         queue_timeouts=sum(g.timed_out for g in gates))

    def _body(self, request: CompletionRequest, stream: bool = False) -> bytes:
        return json_bytes.dumps(chat_body(request, model=self.model,
                                          dialect=self.capabilities.structured,
                                          send_cache_salt=self.send_cache_salt, stream=stream))

    async def complete(self, request: CompletionRequest) -> Completion:
        async with self._gate().slot(request.timeout):
            return await self._complete(request)

    async def _complete(self, request: CompletionRequest) -> Completion:
        with mapped_errors(self.name, self._secrets), self.balancer.acquire() as replica:
            # Each wait for the server is bounded by read_timeout and by the call's deadline.
            async with self._client().post(replica.completions, self._body(request),
                                           timeout=request.timeout) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise ProviderStatusError(response.status, raw.decode(errors="replace"),
                                              response.headers)
            text, finish, usage, model = parse_completion(json_bytes.loads(raw))
        if usage is None:
            encoding = self.capabilities.tokenizer
            usage = Usage(prompt_tokens=count_prompt_tokens(request.messages, encoding),
                          completion_tokens=count_text_tokens(text, encoding))
        return Completion(text=text, backend=self.name, model=model or self.model,
                          usage=usage, finish_reason=finish)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        async with self._gate().slot(request.timeout):
            async for item in self._stream(request):
                yield item

    async def _stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        with mapped_errors(self.name, self._secrets), self.balancer.acquire() as replica:
            # A stream may outlast its attempt's share once text flows (the dispatcher keeps
            # the deadline); the share bounds each wait for the server.
            gap = (self._read_timeout if request.timeout is None
                   else min(self._read_timeout, max(request.timeout, 0.001)))
            async with self._client().post(replica.completions,
                                           self._body(request, stream=True),
                                           timeout=None, read_timeout=gap) as response:
                if response.status >= 400:
                    raw = await response.read()
                    raise ProviderStatusError(response.status, raw.decode(errors="replace"),
                                              response.headers)
                if response.content_type == "application/json":
                    # A server that ignores `stream: true` answers with one plain completion.
                    text, _, usage, _ = parse_completion(json_bytes.loads(await response.read()))
                    if text:
                        yield text
                    if usage is not None:
                        yield usage
                    return
                async for raw_line in response.lines():
                    line = raw_line.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    text, usage = _stream_event(payload)
                    if text:
                        yield text
                    if usage is not None:
                        yield usage

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        self._gates.pop(loop, None)
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()


@register("openai")
def _from_config(name: str, config: BackendConfig) -> OpenAICompatBackend:
    options = adapter_options(name, OpenAIOptions, config.options)
    structured = adapter_dialect(name, config, HTTP_DIALECTS,
                                 "is not a dialect an OpenAI-compatible server speaks")
    api_key = api_key_from_env(name, options.api_key_env)
    return OpenAICompatBackend(
        name, model=config.model, base_urls=options.base_urls, weights=options.weights,
        api_key=api_key, structured=structured,
        send_cache_salt=options.send_cache_salt, streaming=options.streaming,
        connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
        max_connections=options.max_connections, queue_timeout_s=options.queue_timeout_s,
        keepalive_s=options.keepalive_s,
        headers=options.headers, context_window=config.context_window or DEFAULT_CONTEXT_WINDOW,
        tokenizer=config.tokenizer or "cl100k_base")
