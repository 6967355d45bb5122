"""Turning model text into output that satisfies the output schema, or failing loudly.

Per attempt: parse tolerantly (code fences, prose around the object), repair malformed JSON
with json-repair, validate against the compiled output schema. A failed attempt is re-asked
with the validation errors, up to the feature's attempt budget. Nothing that fails the schema
is ever returned: the caller gets an OutputError carrying every attempt.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from featurelm.engine.errors import Attempt, OutputError
from featurelm.engine.schemas import MAX_INSTANCE_DEPTH, compile_validator, json_depth, violations
from featurelm.engine.types import Completion, CompletionRequest, Message

MAX_RAW_KEPT = 2000

#: Invalid replies one backend may give before the next attempt goes to the route's next
#: backend: a backend that keeps failing the schema is not asked forever while another waits.
REPLIES_PER_BACKEND = 2
log = logging.getLogger("featurelm.engine")


class CompleteFn(Protocol):
    """One completion; `skip` names backends to pass over while another one can answer."""

    async def __call__(self, request: CompletionRequest, /, *,
                       skip: frozenset[str] = frozenset()) -> Completion: ...


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


def _takes_skip(complete: Any) -> bool:
    # A plain `backend.complete` (one backend, nothing to skip) takes no `skip`.
    try:
        return "skip" in inspect.signature(complete).parameters
    except (TypeError, ValueError):
        return False


def public_errors(schema: Mapping[str, Any], value: Any) -> list[str]:
    """Where `value` fails `schema` and which rule it breaks, never the value itself: what a
    caller is shown (the model may have echoed anything, a key or another tenant's text)."""
    if json_depth(value) > MAX_INSTANCE_DEPTH:
        return [f"$: nested deeper than {MAX_INSTANCE_DEPTH} levels"]
    found: list[str] = []
    try:
        for error in compile_validator(schema).iter_errors(value):
            path = _schema_path(error)
            found.append(f"{path}: fails '{error.validator}'")
            if len(found) >= 10:
                break
    except RecursionError:
        return ["$: schema recursion too deep for this reply"]
    return sorted(set(found))


def _schema_path(error: Any) -> str:
    # The path through the instance, but only as far as the schema names it: keys a model
    # made up (an extra property, a patternProperties match) are not repeated back.
    path = "$"
    schema_path = list(error.absolute_schema_path)
    for part in error.absolute_path:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "properties" in schema_path and part in schema_path:
            path += f".{part}"
        else:
            path += ".*"
    return path


#: Told of each attempt: (completion, validation errors (none when valid), repaired, seconds
#: spent parsing and validating). A trace listens here.
AttemptListener = Callable[[Completion, list[str], bool, float], None]


async def generate_structured(complete: CompleteFn, request: CompletionRequest,
                              schema: Mapping[str, Any], max_attempts: int, *,
                              on_attempt: AttemptListener | None = None) -> StructuredResult:
    """Call `complete` until it yields schema-valid output, at most `max_attempts` times;
    after REPLIES_PER_BACKEND invalid replies from one backend, the route's next backend is
    asked (the same conversation, re-ask included)."""
    messages = list(request.messages)
    attempts: list[Attempt] = []
    tokens_in = tokens_out = 0
    invalid: dict[str, int] = {}
    for _ in range(max_attempts):
        skip = frozenset(b for b, n in invalid.items() if n >= REPLIES_PER_BACKEND)
        attempt_request = replace(request, messages=tuple(messages))
        completion = await (complete(attempt_request, skip=skip) if skip and _takes_skip(complete)
                            else complete(attempt_request))
        tokens_in += completion.usage.prompt_tokens
        tokens_out += completion.usage.completion_tokens
        checked = time.perf_counter()
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
                if on_attempt is not None:
                    on_attempt(completion, [], parsed.repaired, time.perf_counter() - checked)
                return StructuredResult(parsed.value, completion, len(attempts) + 1,
                                        tokens_in, tokens_out)
        if on_attempt is not None:
            on_attempt(completion, errors, bool(parsed and parsed.repaired),
                       time.perf_counter() - checked)
        # The model is told exactly what was wrong (values included); the attempt kept for
        # the caller says only where and which rule.
        shown = errors if parsed is None or not isinstance(parsed.value, dict) \
            or completion.finish_reason == "length" else public_errors(schema, parsed.value)
        attempts.append(Attempt(backend=completion.backend, raw=completion.text[:MAX_RAW_KEPT],
                                errors=shown, repaired=bool(parsed and parsed.repaired)))
        invalid[completion.backend] = invalid.get(completion.backend, 0) + 1
        messages += [Message("assistant", completion.text[:MAX_RAW_KEPT]),
                     _reask_message(errors)]
    log.warning("no schema-valid output after %d attempt(s): %s", len(attempts),
                "; ".join(f"{a.backend}: {', '.join(a.errors[:3])}" for a in attempts))
    raise OutputError(f"no schema-valid output after {len(attempts)} attempt(s)", attempts)
