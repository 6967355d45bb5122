"""The data every layer exchanges with a model: messages, requests, completions, usage, and
what a backend can do. Plain frozen dataclasses, importable without the adapter registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]

#: How a backend is asked for schema-shaped output, in the dialect its server speaks.
#: - "json_schema": OpenAI-style response_format {"type": "json_schema", "json_schema": {...}}
#: - "structured_outputs": vLLM's `structured_outputs: {"json": schema}` request field
#: - "json_object_schema": llama.cpp server's response_format {"type": "json_object", "schema": ...}
#: - "grammar": in-process grammar-constrained decoding (the local llama.cpp backend)
#: - "none": no server-side constraint; the engine prompts, parses, repairs and re-asks
StructuredDialect = Literal[
    "json_schema", "structured_outputs", "json_object_schema", "grammar", "none"
]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the engine picks its structured-output strategy from this."""

    structured: StructuredDialect = "none"
    streaming: bool = False
    #: tiktoken encoding name used to count prompt tokens before sending.
    tokenizer: str = "cl100k_base"
    context_window: int = 8192


@dataclass(frozen=True)
class CompletionRequest:
    messages: tuple[Message, ...]
    #: JSON Schema the output must satisfy; sent as a decoding constraint where supported.
    output_schema: Mapping[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    #: Further decoding parameters (top_p, seed, stop, ...), already validated by the contract.
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Per-tenant salt for server-side prefix caches (vLLM `cache_salt`); derived by the engine.
    cache_salt: str | None = None
    #: Seconds left for this attempt; adapters set their HTTP timeout from it.
    timeout: float | None = None
    #: Opaque labels for logs and recording (feature, tenant, case id); never sent upstream.
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    #: Name of the backend (from featurelm.yaml) that actually answered.
    backend: str
    model: str
    usage: Usage = Usage()
    finish_reason: str = "stop"
