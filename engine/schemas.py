"""JSON Schema (2020-12) checking and validation with bounded cost.

User-supplied schemas are untrusted: `pattern` and `patternProperties` run on RE2 (linear
time, no catastrophic backtracking), schemas and instances have size and depth limits, and
`$ref` may only point inside the schema itself, at something that exists, and never in a loop
that applies a schema to the same value forever. Validators are compiled once per schema.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

from featurelm.engine.errors import SchemaViolation

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_INSTANCE_DEPTH = 64
MAX_PATTERN_LENGTH = 1000
MAX_VIOLATIONS = 20

#: A pattern that needs more than this much DFA state is refused.
RE2_MAX_MEM = 8 << 20


class UnsupportedPattern(ValueError):
    """RE2 refused the pattern (syntax it lacks, such as lookaround, or over RE2_MAX_MEM)."""


@lru_cache(maxsize=1024)
def _re2(pattern: str) -> Any:
    # RE2 (a C++ library, a few MiB resident) loads with the first schema that has a pattern.
    import re2

    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        raise UnsupportedPattern(str(exc)) from None


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


def _resolve_local(root: Any, ref: str) -> Any | None:
    """The subschema a '#...' ref names (JSON pointer or $anchor), or None if there is none."""
    fragment = unquote(ref[1:])
    if fragment == "":
        return root
    if not fragment.startswith("/"):
        return next((node for _, node in _walk(root)
                     if isinstance(node, dict) and node.get("$anchor") == fragment), None)
    node = root
    for part in fragment[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _in_place(root: Any, node: dict[str, Any]) -> Iterator[Any]:
    """Subschemas applied to the same value as `node` (no property or item is consumed)."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        yield _resolve_local(root, ref)
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            yield from node[key]
    for key in ("not", "if", "then", "else"):
        yield node.get(key)
    if isinstance(node.get("dependentSchemas"), dict):
        yield from node["dependentSchemas"].values()


def _ref_problems(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Refs to nothing, and ref loops that never consume input (validation would recurse
    until the stack runs out), found by an iterative depth-first search."""
    problems: list[tuple[str, str]] = []
    where = {id(node): path for path, node in _walk(schema) if isinstance(node, dict)}
    for path, node in _walk(schema):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str) and ref.startswith("#") and not isinstance(
                _resolve_local(schema, ref), dict | bool):
            problems.append((path, f"$ref {ref!r} points to nothing in this schema"))
    if problems:
        return problems
    nodes = {id(n): n for _, n in _walk(schema) if isinstance(n, dict)}
    done: set[int] = set()
    exhausted = object()
    for first in nodes:
        if first in done:
            continue
        on_path = {first}
        stack: list[tuple[int, Iterator[Any]]] = [(first, _in_place(schema, nodes[first]))]
        while stack:
            current, children = stack[-1]
            child = next(children, exhausted)
            if child is exhausted:
                stack.pop()
                on_path.discard(current)
                done.add(current)
            elif isinstance(child, dict) and id(child) not in done:
                if id(child) in on_path:
                    return [(where.get(current, ""), "$ref loop: this schema applies itself to "
                             "the same value forever; a recursive schema must go through "
                             "properties or items")]
                on_path.add(id(child))
                stack.append((id(child), _in_place(schema, child)))
    return problems


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
            except UnsupportedPattern as exc:
                problems.append((where, f"pattern {pattern!r} is not supported: {exc} (patterns "
                                        "use RE2 syntax: no backreferences or lookaround)"))
    return problems or _ref_problems(schema)


@lru_cache(maxsize=512)
def _compiled(canonical: str) -> Validator:
    validator: Validator = BoundedValidator(json.loads(canonical))
    return validator


#: Contracts hand the same schema object to every call: recognising it by identity skips
#: re-encoding it per call. Each entry holds its schema, so the id cannot be reused meanwhile.
_BY_IDENTITY: dict[int, tuple[Mapping[str, Any], Validator]] = {}


def compile_validator(schema: Mapping[str, Any]) -> Validator:
    """A validator for `schema`, compiled once per distinct schema."""
    known = _BY_IDENTITY.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    validator = _compiled(canonical_json(schema))
    if len(_BY_IDENTITY) >= 512:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(schema)] = (schema, validator)
    return validator


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
            message = error.message
            if len(message) > 300:
                # jsonschema quotes the whole value: a huge one would crowd out what failed.
                message = (f"value fails {error.validator}: "
                           f"{canonical_json(error.validator_value)[:200]}")
            found.append(SchemaViolation(_json_path(error), message))
            if len(found) >= MAX_VIOLATIONS:
                break
    except RecursionError:
        return [SchemaViolation("$", "schema recursion too deep for this input")]
    except Unresolvable as exc:
        # schema_problems refuses such schemas at load; a schema built elsewhere still must
        # not turn a caller's input into a 500.
        return [SchemaViolation("$", f"the schema has an unresolvable $ref: {exc}"[:300])]
    return sorted(found, key=lambda v: v.path)
