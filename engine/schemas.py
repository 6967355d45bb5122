"""JSON Schema (2020-12) checking and validation with bounded cost.

User-supplied schemas are untrusted: `pattern` and `patternProperties` run on RE2 (linear
time, no catastrophic backtracking), schemas and instances have size and depth limits, and
`$ref` may only point inside the schema itself. Validators are compiled once per schema.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

from engine.errors import SchemaViolation

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_INSTANCE_DEPTH = 64
MAX_PATTERN_LENGTH = 1000
MAX_VIOLATIONS = 20

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 8 << 20  # a pattern that needs more than 8 MiB of DFA state is refused


@lru_cache(maxsize=1024)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not _re2(pattern).search(instance):
        yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                        schema: Any) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    for pattern, subschema in patterns.items():
        regex = _re2(pattern)
        for key, value in instance.items():
            if regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


#: Draft 2020-12 with RE2-backed regex keywords.
BoundedValidator = validators.extend(
    Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def schema_hash(schema: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(schema).encode()).hexdigest()


def json_depth(value: Any, limit: int = MAX_INSTANCE_DEPTH) -> int:
    """Nesting depth, computed iteratively so hostile input cannot hit the recursion limit."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def _walk(schema: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    stack = [(path, schema)]
    while stack:
        here, node = stack.pop()
        yield here, node
        if isinstance(node, dict):
            stack.extend((f"{here}.{k}" if here else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{here}.{i}", v) for i, v in enumerate(node))


def schema_problems(schema: Any) -> list[tuple[str, str]]:
    """Problems with a schema as (path inside the schema, message); empty when it is usable."""
    if not isinstance(schema, dict):
        return [("", "a schema must be a mapping (JSON object)")]
    size = len(canonical_json(schema))
    if size > MAX_SCHEMA_BYTES:
        return [("", f"schema is {size} bytes, over the {MAX_SCHEMA_BYTES}-byte limit")]
    if json_depth(schema, MAX_SCHEMA_DEPTH * 2) > MAX_SCHEMA_DEPTH * 2:
        return [("", f"schema nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        return [(where, exc.message)]
    problems: list[tuple[str, str]] = []
    for where, node in _walk(schema):
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            problems.append((where, f"$ref {ref!r} points outside the schema; only '#/...' refs "
                                    "are allowed"))
        patterns = []
        if isinstance(node.get("pattern"), str):
            patterns.append(node["pattern"])
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(node["patternProperties"])
        for pattern in patterns:
            if len(pattern) > MAX_PATTERN_LENGTH:
                problems.append((where, f"pattern longer than {MAX_PATTERN_LENGTH} characters"))
                continue
            try:
                _re2(pattern)
            except re2.error as exc:
                problems.append((where, f"pattern {pattern!r} is not supported: {exc} (patterns "
                                        "use RE2 syntax: no backreferences or lookaround)"))
    return problems


@lru_cache(maxsize=512)
def _compiled(canonical: str) -> Validator:
    validator: Validator = BoundedValidator(json.loads(canonical))
    return validator


def compile_validator(schema: Mapping[str, Any]) -> Validator:
    """A validator for `schema`, compiled once per distinct schema."""
    return _compiled(canonical_json(schema))


def _json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def violations(schema: Mapping[str, Any], instance: Any) -> list[SchemaViolation]:
    """Schema violations of `instance`, at most MAX_VIOLATIONS, each with a JSON path."""
    if json_depth(instance) > MAX_INSTANCE_DEPTH:
        return [SchemaViolation("$", f"nested deeper than {MAX_INSTANCE_DEPTH} levels")]
    found = []
    try:
        for error in compile_validator(schema).iter_errors(instance):
            found.append(SchemaViolation(_json_path(error), error.message[:300]))
            if len(found) >= MAX_VIOLATIONS:
                break
    except RecursionError:
        return [SchemaViolation("$", "schema recursion too deep for this input")]
    return sorted(found, key=lambda v: v.path)
