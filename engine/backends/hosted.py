"""Adapter for hosted model APIs through litellm, kind "hosted".

Imported only when a hosted backend is configured: litellm is heavy and, unless told
otherwise, fetches a price map from the network at import. Its own retries are off because
the dispatcher is the one retry loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from featurelm.engine.backends import adapter_dialect, adapter_options, api_key_from_env, register
from featurelm.engine.backends.openai_compat import structured_fields
from featurelm.engine.backends.provider_errors import MalformedResponse, mapped_errors
from featurelm.engine.config import BackendConfig
from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.tokens import count_prompt_tokens, count_text_tokens
from featurelm.engine.types import (
    Capabilities,
    Completion,
    CompletionRequest,
    StructuredDialect,
    Usage,
)

# Must precede the import: litellm reads it at import time to stay offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm

litellm.telemetry = False
litellm.suppress_debug_info = True
litellm.num_retries = 0

HOSTED_DIALECTS: tuple[StructuredDialect, ...] = ("json_schema", "none")
DEFAULT_CONTEXT_WINDOW = 128_000


class HostedOptions(BaseModel):
    """`options:` of a kind "hosted" backend in featurelm.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key_env: str | None = Field(None, description="Name of the env var holding the API key.")
    api_base: str | None = Field(None, description="Override the provider's endpoint URL.")
    timeout: float = Field(60.0, gt=0, description="Seconds per attempt at most.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")


class HostedBackend:
    """A model behind a hosted API, addressed by its litellm name ("openai/gpt-4o-mini")."""

    def __init__(self, name: str, *, model: str, api_key: str | None = None,
                 api_base: str | None = None, timeout: float = 60.0,
                 structured: StructuredDialect = "json_schema",
                 headers: Mapping[str, str] | None = None,
                 context_window: int = DEFAULT_CONTEXT_WINDOW, tokenizer: str = "cl100k_base"):
        self.name = name
        self.model = model
        self.capabilities = Capabilities(structured=structured, streaming=True,
                                         tokenizer=tokenizer, context_window=context_window)
        self._api_key = api_key
        self._api_base = api_base
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._secrets = (api_key,) if api_key else ()

    def _arguments(self, request: CompletionRequest) -> dict[str, Any]:
        timeout = self._timeout if request.timeout is None else min(self._timeout,
                                                                    request.timeout)
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            **request.params,
            **structured_fields(self.capabilities.structured, request.output_schema),
            "timeout": timeout,
            # The dispatcher owns retries; litellm's and the provider SDK's stay off.
            "num_retries": 0,
            "max_retries": 0,
        }
        if self._api_key:
            arguments["api_key"] = self._api_key
        if self._api_base:
            arguments["api_base"] = self._api_base
        if self._headers:
            arguments["extra_headers"] = self._headers
        return arguments

    async def complete(self, request: CompletionRequest) -> Completion:
        with mapped_errors(self.name, self._secrets):
            response = await litellm.acompletion(**self._arguments(request))
            try:
                choice = response.choices[0]
                text = choice.message.content or ""
            except (AttributeError, IndexError, TypeError) as exc:
                raise MalformedResponse("response has no message") from exc
        usage = getattr(response, "usage", None)
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            counted = Usage(prompt_tokens=int(usage.prompt_tokens),
                            completion_tokens=int(usage.completion_tokens or 0))
        else:
            encoding = self.capabilities.tokenizer
            counted = Usage(prompt_tokens=count_prompt_tokens(request.messages, encoding),
                            completion_tokens=count_text_tokens(text, encoding))
        return Completion(text=text, backend=self.name,
                          model=str(getattr(response, "model", None) or self.model),
                          usage=counted, finish_reason=str(choice.finish_reason or "stop"))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        with mapped_errors(self.name, self._secrets):
            chunks = await litellm.acompletion(**self._arguments(request), stream=True)
            async for chunk in chunks:
                choices = getattr(chunk, "choices", None) or []
                delta = getattr(choices[0], "delta", None) if choices else None
                if text := getattr(delta, "content", None):
                    yield cast(str, text)

    async def aclose(self) -> None:
        return None


@register("hosted")
def _from_config(name: str, config: BackendConfig) -> HostedBackend:
    options = adapter_options(name, HostedOptions, config.options)
    structured = adapter_dialect(name, config, HOSTED_DIALECTS,
                                 "is not supported for hosted backends")
    if not config.model:
        raise ContractError([ContractIssue(
            "featurelm.yaml", f"backends.{name}.model", "a hosted backend needs a model",
            "name it as litellm does, e.g. openai/gpt-4o-mini")])
    api_key = api_key_from_env(name, options.api_key_env)
    return HostedBackend(
        name, model=config.model, api_key=api_key, api_base=options.api_base,
        timeout=options.timeout, structured=structured,
        headers=options.headers,
        context_window=config.context_window or DEFAULT_CONTEXT_WINDOW,
        tokenizer=config.tokenizer or "cl100k_base")
