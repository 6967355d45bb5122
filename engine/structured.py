"""Turning model text into output that satisfies the output schema, or failing loudly.

Per attempt: parse tolerantly (code fences, prose around the object), repair malformed JSON
with json-repair, validate against the compiled output schema. A failed attempt is re-asked
with the validation errors, up to the feature's attempt budget. Nothing that fails the schema
is ever returned: the caller gets an OutputError carrying every attempt.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from featurelm.engine.errors import Attempt, OutputError
from featurelm.engine.schemas import violations
from featurelm.engine.types import Completion, CompletionRequest, Message

MAX_RAW_KEPT = 2000

CompleteFn = Callable[[CompletionRequest], Awaitable[Completion]]


@dataclass(frozen=True)
class ParsedOutput:
    value: Any
    repaired: bool


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        if "```" in stripped:
            stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()


def parse_output(text: str) -> ParsedOutput | None:
    """The JSON object in `text`, repaired if needed; None if nothing object-like is there."""
    body = _strip_fences(text)
    start, end = body.find("{"), body.rfind("}")
    candidate = body[start:end + 1] if start != -1 and end > start else body
    try:
        return ParsedOutput(json.loads(candidate), repaired=False)
    except ValueError:
        pass
    source = body[start:] if start != -1 else body
    import json_repair  # loads with the first reply that is not valid JSON

    try:
        repaired = json_repair.repair_json(source, return_objects=True, skip_json_loads=True)
    except Exception:  # json-repair raises assorted errors on pathological input
        return None
    if isinstance(repaired, dict) and repaired:
        return ParsedOutput(repaired, repaired=True)
    return None


@dataclass(frozen=True)
class StructuredResult:
    output: dict[str, Any]
    completion: Completion
    attempts: int
    tokens_in: int
    tokens_out: int


def _reask_message(errors: list[str]) -> Message:
    listed = "\n".join(f"- {e}" for e in errors[:10])
    return Message("user", "Your previous reply was not valid for the required JSON Schema:\n"
                           f"{listed}\nReply again with only the corrected JSON object.")


async def generate_structured(complete: CompleteFn, request: CompletionRequest,
                              schema: Mapping[str, Any], max_attempts: int) -> StructuredResult:
    """Call `complete` until it yields schema-valid output, at most `max_attempts` times."""
    messages = list(request.messages)
    attempts: list[Attempt] = []
    tokens_in = tokens_out = 0
    for _ in range(max_attempts):
        completion = await complete(replace(request, messages=tuple(messages)))
        tokens_in += completion.usage.prompt_tokens
        tokens_out += completion.usage.completion_tokens
        parsed = parse_output(completion.text)
        if completion.finish_reason == "length":
            errors = ["the reply was cut off at the output token limit; answer more concisely"]
        elif parsed is None:
            errors = ["the reply contained no JSON object"]
        elif not isinstance(parsed.value, dict):
            errors = ["the reply must be a JSON object"]
        else:
            errors = [f"{v.path}: {v.message}" for v in violations(schema, parsed.value)]
            if not errors:
                return StructuredResult(parsed.value, completion, len(attempts) + 1,
                                        tokens_in, tokens_out)
        attempts.append(Attempt(backend=completion.backend, raw=completion.text[:MAX_RAW_KEPT],
                                errors=errors, repaired=bool(parsed and parsed.repaired)))
        messages += [Message("assistant", completion.text[:MAX_RAW_KEPT]),
                     _reask_message(errors)]
    raise OutputError(f"no schema-valid output after {len(attempts)} attempt(s)", attempts)
