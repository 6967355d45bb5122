"""JSON Schema checking and validation with bounded cost, under the draft a schema declares.

A schema is validated under its `$schema` (draft 04, 06, 07, 2019-09 or 2020-12; 2020-12 when
it names none) with `format` asserted, not just annotated. User-supplied schemas are untrusted:
`pattern` and `patternProperties` run on RE2 (linear time, no catastrophic backtracking),
schemas and instances have size and depth limits, `$ref` may only point inside the schema
itself, at something that exists, and never in a loop that applies a schema to the same value
forever, and an unknown keyword is an error (a typo such as `requierd` would otherwise make a
field silently optional). Validators are compiled once per schema.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
    validators,
)
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

from featurelm.engine.errors import SchemaViolation

#: Measured on real schemas (see docs/contracts.md): Kubernetes objects with their
#: definitions inlined reach 200-600 KiB (a Pod template is ~450 KiB), SchemaStore's CI
#: configurations up to 2 MiB. The cap bounds what one contract costs to compile and to put
#: in a prompt; 1 MiB admits all but the largest while a prompt still fails the context check.
MAX_SCHEMA_BYTES = 1024 * 1024
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


_RE2_KEYWORDS = {"pattern": _pattern, "patternProperties": _pattern_properties}

#: `$schema` URI (without a trailing '#', http or https) -> validator class with RE2 regexes.
DRAFTS: dict[str, Any] = {}
for _draft in (Draft4Validator, Draft6Validator, Draft7Validator, Draft201909Validator,
               Draft202012Validator):
    _uri = str(_draft.META_SCHEMA["$schema"]).rstrip("#")
    DRAFTS[_uri.split("://", 1)[1]] = validators.extend(_draft, _RE2_KEYWORDS)

#: Draft 2020-12 with RE2-backed regex keywords: the draft of a schema that names none.
BoundedValidator = DRAFTS["json-schema.org/draft/2020-12/schema"]

#: Keywords that carry no assertion but are standard in some draft, or written by the editors
#: and generators real schemas come from (VS Code, SchemaStore, OpenAPI); `x-` keys are free.
ANNOTATIONS = frozenset({
    "$schema", "$id", "id", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$vocabulary",
    "$comment", "$defs", "definitions", "title", "description", "default", "examples",
    "example", "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
    "contentSchema", "format", "markdownDescription", "deprecationMessage", "errorMessage",
    "enumDescriptions", "markdownEnumDescriptions", "defaultSnippets", "doNotSuggest",
    "patternErrorMessage", "allowComments", "allowTrailingCommas", "suggestSortText",
    "tsType", "discriminator", "nullable", "externalDocs", "xml", "fileMatch",
})
#: Keywords some later draft has: in a schema of an earlier draft they validate nothing.
_NEWER_KEYWORDS = frozenset({"then", "else"}).union(*(cls.VALIDATORS for cls in DRAFTS.values()))
#: Where subschemas sit: a map of names to schemas, one schema, or a list of schemas.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                "dependencies")
_SCHEMA_ONE = ("additionalProperties", "additionalItems", "items", "contains", "propertyNames",
               "not", "if", "then", "else", "unevaluatedItems", "unevaluatedProperties",
               "contentSchema")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")


def validator_class(schema: Mapping[str, Any]) -> Any:
    """The validator class for the draft `schema` declares; None for an unknown `$schema`."""
    declared = schema.get("$schema")
    if declared is None:
        return BoundedValidator
    if not isinstance(declared, str) or "://" not in declared:
        return None
    return DRAFTS.get(declared.split("://", 1)[1].rstrip("#"))


def _subschemas(node: Mapping[str, Any], here: str) -> Iterator[tuple[str, Any]]:
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, dict):  # draft-07 `dependencies` also maps to name lists
                    yield f"{here}{key}.{name}", sub
    for key in _SCHEMA_ONE:
        if isinstance(node.get(key), dict):
            yield f"{here}{key}", node[key]
    for key in _SCHEMA_LISTS:
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                if isinstance(sub, dict):
                    yield f"{here}{key}.{i}", sub


def unknown_keywords(schema: Mapping[str, Any], validator: Any) -> list[tuple[str, str]]:
    """Keywords that no draft-`validator` rule or known annotation reads, with a guess at what
    was meant (Ajv's strict mode): each is a typo or a keyword of another draft."""
    known = set(validator.VALIDATORS) | ANNOTATIONS
    # Read by another keyword's rule, not rules of their own.
    if "if" in known:
        known |= {"then", "else"}
    if "exclusiveMaximum" not in known:
        known |= {"exclusiveMaximum", "exclusiveMinimum"}  # draft 04's boolean modifiers
    problems: list[tuple[str, str]] = []
    stack: list[tuple[str, Mapping[str, Any]]] = [("", schema)]
    while stack:
        here, node = stack.pop()
        for key in node:
            if not isinstance(key, str) or key in known or key.startswith("x-"):
                continue
            guess = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            if key in _NEWER_KEYWORDS:
                hint = (" (it belongs to a later draft: declare that draft's $schema, or the "
                        "keyword is silently ignored)")
            elif guess:
                hint = f" (did you mean {guess[0]!r}?)"
            else:
                hint = " (prefix your own annotations with 'x-')"
            problems.append((f"{here}{key}", f"unknown keyword {key!r} for this draft{hint}"))
        stack.extend((f"{path}.", sub) for path, sub in _subschemas(node, here))
    return sorted(problems)


def without_formats(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with every `format` keyword removed (a property named "format"
    stays): what a feature that opts out of format checking serves and publishes."""
    copy = {key: value for key, value in schema.items() if key != "format"}
    for key in _SCHEMA_MAPS:
        if isinstance(copy.get(key), dict):
            copy[key] = {name: without_formats(sub) if isinstance(sub, dict) else sub
                         for name, sub in copy[key].items()}
    for key in set(_SCHEMA_ONE) | set(_SCHEMA_LISTS):
        value = copy.get(key)
        if isinstance(value, dict):
            copy[key] = without_formats(value)
        elif isinstance(value, list):
            copy[key] = [without_formats(v) if isinstance(v, dict) else v for v in value]
    return copy


def is_object_schema(schema: Mapping[str, Any]) -> bool:
    """Whether the top level admits only objects, in any spelling: `type: object`,
    `type: [object]`, or no `type` beside object keywords or a `$ref`/`allOf` to an object."""
    kind = schema.get("type")
    if kind is not None:
        return bool(kind == "object" or kind == ["object"])
    if any(key in schema for key in ("properties", "required", "additionalProperties",
                                     "patternProperties")):
        return True
    ref = schema.get("$ref")
    target = _resolve_local(schema, ref) if isinstance(ref, str) and ref.startswith("#") else None
    if isinstance(target, dict) and target is not schema and "$ref" not in target:
        return is_object_schema(target)
    members = schema.get("allOf")
    return isinstance(members, list) and any(
        isinstance(m, dict) and m.get("type") in ("object", ["object"]) for m in members)


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
    validator = validator_class(schema)
    if validator is None:
        return [("$schema", f"unknown $schema {schema.get('$schema')!r}; use one of: "
                 + ", ".join(f"https://{uri}" for uri in DRAFTS))]
    problems: list[tuple[str, str]] = []
    # Every error the metaschema finds, not only the first: a check reports in one pass.
    for error in sorted(validator(validator.META_SCHEMA).iter_errors(schema),
                        key=lambda e: [str(p) for p in e.absolute_path])[:MAX_VIOLATIONS]:
        problems.append((".".join(str(p) for p in error.absolute_path), error.message[:300]))
    problems.extend(unknown_keywords(schema, validator))
    if problems:
        return problems
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
    schema = json.loads(canonical)
    cls = validator_class(schema) or BoundedValidator
    # `format` asserts: "nobody" is no email and "yesterday" no date-time. A feature that
    # opts out has its `format` keywords removed at load (see engine.loader).
    validator: Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
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
