"""Adapter for OpenAI-compatible chat servers (vLLM, llama.cpp server, SGLang), kind "openai".

One pooled keep-alive httpx client per backend, requests balanced across replicas by least
in-flight (weighted), structured output sent in the dialect the server speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.backends import adapter_dialect, adapter_options, api_key_from_env, register
from engine.backends.base import (
    Capabilities,
    Completion,
    CompletionRequest,
    StructuredDialect,
    Usage,
)
from engine.backends.provider_errors import MalformedResponse, mapped_errors
from engine.config import BackendConfig
from engine.tokens import count_prompt_tokens, count_text_tokens

#: Dialects an HTTP chat server can speak ("grammar" is for in-process decoding only).
HTTP_DIALECTS: tuple[StructuredDialect, ...] = (
    "json_schema", "structured_outputs", "json_object_schema", "none")
DEFAULT_CONTEXT_WINDOW = 8192


class OpenAIOptions(BaseModel):
    """`options:` of a kind "openai" backend in featurelm.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_urls: list[str] = Field(min_length=1, description="Replica base URLs, ending in /v1.")
    weights: list[float] | None = Field(None, description="Relative share per replica.")
    api_key_env: str | None = Field(None, description="Name of the env var holding the API key.")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_connections: int = Field(100, ge=1, description="Pool size across all replicas.")
    max_keepalive: int = Field(20, ge=0)
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
        return headers

    @model_validator(mode="after")
    def _weights_match(self) -> OpenAIOptions:
        if self.weights is not None and (
                len(self.weights) != len(self.base_urls) or min(self.weights) <= 0):
            raise ValueError("weights needs one positive number per base_urls entry")
        return self


@dataclass
class Replica:
    url: str
    weight: float = 1.0
    in_flight: int = 0
    #: Sequence number of the last pick, so ties go to the replica used least recently.
    last_pick: int = 0
    served: int = 0


class Balancer:
    """Least in-flight (per unit of weight) across replicas; no lock: one event loop owns it."""

    def __init__(self, urls: Sequence[str], weights: Sequence[float] | None = None):
        weights = weights or [1.0] * len(urls)
        self.replicas = [Replica(url, weight) for url, weight in zip(urls, weights, strict=True)]
        self._picks = itertools.count(1)

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Replica]:
        replica = min(self.replicas, key=lambda r: ((r.in_flight + 1) / r.weight, r.last_pick))
        replica.in_flight += 1
        replica.last_pick = next(self._picks)
        replica.served += 1
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
        body["stream"] = True
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


def _stream_delta(payload: str) -> str:
    data = json.loads(payload)
    if not isinstance(data, Mapping):
        raise MalformedResponse("stream event is not a JSON object")
    if data.get("error"):
        raise MalformedResponse(f"stream error: {data['error']}")
    choices = data.get("choices") or []
    delta = choices[0].get("delta") if choices and isinstance(choices[0], Mapping) else None
    content = delta.get("content") if isinstance(delta, Mapping) else None
    return content if isinstance(content, str) else ""


class OpenAICompatBackend:
    """A chat-completions endpoint with one or more replicas."""

    def __init__(self, name: str, *, model: str, base_urls: Sequence[str],
                 weights: Sequence[float] | None = None, api_key: str | None = None,
                 structured: StructuredDialect = "json_schema",
                 send_cache_salt: bool | None = None, streaming: bool = True,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 max_connections: int = 100, max_keepalive: int = 20,
                 headers: Mapping[str, str] | None = None,
                 context_window: int = DEFAULT_CONTEXT_WINDOW, tokenizer: str = "cl100k_base"):
        self.name = name
        self.model = model
        self.capabilities = Capabilities(structured=structured, streaming=streaming,
                                         tokenizer=tokenizer, context_window=context_window)
        self.send_cache_salt = (structured == "structured_outputs"
                                if send_cache_salt is None else send_cache_salt)
        self.balancer = Balancer(base_urls, weights)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._secrets = (api_key,) if api_key else ()
        request_headers = dict(headers or {})
        if api_key:
            request_headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=request_headers,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_keepalive),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    def _timeout(self, request: CompletionRequest) -> httpx.Timeout:
        budget = request.timeout
        if budget is None:
            return httpx.Timeout(self._read_timeout, connect=self._connect_timeout)
        budget = max(budget, 0.001)
        return httpx.Timeout(min(self._read_timeout, budget),
                             connect=min(self._connect_timeout, budget))

    def _body(self, request: CompletionRequest, stream: bool = False) -> dict[str, Any]:
        return chat_body(request, model=self.model, dialect=self.capabilities.structured,
                         send_cache_salt=self.send_cache_salt, stream=stream)

    async def complete(self, request: CompletionRequest) -> Completion:
        with mapped_errors(self.name, self._secrets), self.balancer.acquire() as replica:
            # httpx times each read; the overall budget also bounds a slowly trickling body.
            async with asyncio.timeout(request.timeout):
                response = await self._client.post(
                    f"{replica.url}/chat/completions", json=self._body(request),
                    timeout=self._timeout(request))
            response.raise_for_status()
            text, finish, usage, model = parse_completion(response.json())
        if usage is None:
            encoding = self.capabilities.tokenizer
            usage = Usage(prompt_tokens=count_prompt_tokens(request.messages, encoding),
                          completion_tokens=count_text_tokens(text, encoding))
        return Completion(text=text, backend=self.name, model=model or self.model,
                          usage=usage, finish_reason=finish)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        with mapped_errors(self.name, self._secrets), self.balancer.acquire() as replica:
            async with self._client.stream(
                    "POST", f"{replica.url}/chat/completions",
                    json=self._body(request, stream=True),
                    timeout=self._timeout(request)) as response:
                if response.is_error:
                    await response.aread()
                    response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    if text := _stream_delta(payload):
                        yield text

    async def aclose(self) -> None:
        await self._client.aclose()


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
        max_connections=options.max_connections, max_keepalive=options.max_keepalive,
        headers=options.headers, context_window=config.context_window or DEFAULT_CONTEXT_WINDOW,
        tokenizer=config.tokenizer or "cl100k_base")
