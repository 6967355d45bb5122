"""An output schema as a token-level grammar for in-process decoding, compiled by llguidance.

llguidance (one of the two engines vLLM uses server-side) compiles a JSON Schema without a
model and, per generated token, computes which tokens keep the output valid. Its compiler is
Rust with resource limits: a schema it cannot handle is an error value, never a crash. A
schema it cannot compile exactly is compiled leniently (the keywords it lacks are left to the
validator, which checks every output anyway); one it cannot compile at all is constrained to
"a JSON object" only, and the call is degraded to validate + repair + re-ask.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

#: Compact JSON: no whitespace between tokens, so no tokens spent on layout. `oneOf` is
#: generated as `anyOf` (the validator then enforces "exactly one").
_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "coerce_one_of": True}
#: What a schema llguidance cannot compile is still held to.
ANY_OBJECT = '{"type": "object"}'
_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \[(.*?)\]')


@dataclass(frozen=True)
class GrammarPlan:
    """How the local backend will hold generation to one schema."""

    #: An llguidance grammar that always compiles (the schema's, or "any JSON object").
    grammar: str
    status: Literal["constrained", "degraded"]
    #: "schema path: what the grammar does not enforce" (the validator still checks it).
    unenforced: tuple[str, ...]
    compile_s: float


def _keyword_paths(schema: Any, keywords: set[str], prefix: str) -> Iterator[str]:
    stack: list[tuple[str, Any]] = [(prefix, schema)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{here}.{key}" if here else str(key)
                if key in keywords:
                    yield path
                stack.append((path, value))
        elif isinstance(node, list):
            stack.extend((f"{here}.{i}", v) for i, v in enumerate(node))


def _explain(schema: Any, message: str, prefix: str) -> tuple[str, ...]:
    """Turn llguidance's message into 'path: reason' lines naming where in the schema."""
    first = " ".join(message.split())[:300]
    found = _UNIMPLEMENTED.search(message)
    if found:
        keys = set(json.loads(f"[{found.group(1)}]"))
        paths = sorted(_keyword_paths(schema, keys, prefix))[:5]
        if paths:
            return tuple(f"{path}: not enforced by the grammar" for path in paths)
    return (f"{prefix}: {first}",)


def _compile(schema_json: str, lenient: bool) -> tuple[str | None, str]:
    """(grammar, "") when llguidance accepts the schema, else (None, its error)."""
    from llguidance import LLMatcher

    try:
        options: Any = {**_OPTIONS, "lenient": lenient}
        grammar = LLMatcher.grammar_from_json_schema(schema_json, defaults=options)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    except (ValueError, TypeError, RuntimeError) as exc:
        return None, str(exc)
    if is_error:
        return None, messages[0] if messages else "grammar rejected"
    return grammar, "; ".join(messages)


@lru_cache(maxsize=256)
def _plan(schema_json: str, prefix: str) -> GrammarPlan:
    started = time.perf_counter()
    schema = json.loads(schema_json)
    grammar, message = _compile(schema_json, lenient=False)
    if grammar is not None:
        return GrammarPlan(grammar, "constrained", (), time.perf_counter() - started)
    lenient, _ = _compile(schema_json, lenient=True)
    unenforced = _explain(schema, message, prefix)
    if lenient is not None:
        return GrammarPlan(lenient, "constrained", unenforced, time.perf_counter() - started)
    fallback, _ = _compile(ANY_OBJECT, lenient=False)
    assert fallback is not None  # a constant that compiles (tested)
    return GrammarPlan(fallback, "degraded", unenforced, time.perf_counter() - started)


def plan_grammar(schema: Mapping[str, Any], prefix: str = "output") -> GrammarPlan:
    """The grammar for `schema`, compiled once per distinct schema; never raises on a schema.

    `prefix` names the schema in messages (the YAML path of the contract's output)."""
    # Declared key order, not sorted: the grammar emits properties in this order, and the
    # contract's order (say, reasoning before verdict) is the one to generate in.
    return _plan(json.dumps(schema, ensure_ascii=False), prefix)
