"""One deterministic sample instance of an input JSON Schema, unlike a feature's examples:
every optional property present, arrays of several items, values taken from the schema's own
`const`/`examples`/`default`/`enum` where it has them. Overrides are rendered on it before
they are saved, so a template that breaks only on such inputs is refused.

Generators on PyPI (hypothesis-jsonschema, jsf) draw random instances; a save check must
refuse or pass the same text every time, so this walks the schema once instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurelm.engine.schemas import _resolve_local, violations

#: Nesting past this keeps only what the schema requires (recursive schemas end here).
OPTIONAL_DEPTH = 6
#: Nesting past this gives up: a schema that requires deeper values has no small sample.
MAX_DEPTH = 24
#: Values in one sample, all levels together; a schema needing more gets no sample.
MAX_NODES = 2_000
#: Items in each array when the schema allows them: more than examples usually hold.
ARRAY_ITEMS = 3

FORMATS = {
    "date": "2024-02-29", "date-time": "2024-02-29T12:30:00Z", "time": "12:30:00Z",
    "email": "sample@example.com", "idn-email": "sample@example.com",
    "uri": "https://example.com/sample", "iri": "https://example.com/sample",
    "uri-reference": "/sample", "hostname": "example.com", "idn-hostname": "example.com",
    "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "uuid": "00000000-0000-4000-8000-000000000001",
    "duration": "P1D", "regex": "^sample$", "json-pointer": "/sample",
}


class _NoSample(Exception):
    """The schema asks for something this walk cannot build within its bounds."""


def sample_input(schema: Mapping[str, Any]) -> Any | None:
    """A valid instance of `schema` with every optional part filled, or None if none is
    found (the caller then has nothing more to check)."""
    walk = _Walk(schema)
    try:
        value = walk.value(schema, depth=0, nth=0)
    except (_NoSample, RecursionError, TypeError, ValueError):  # schemas can be anything
        return None
    return value if not violations(schema, value) else None


class _Walk:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.nodes = 0

    def value(self, schema: Any, *, depth: int, nth: int) -> Any:
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise _NoSample
        if schema is True or schema == {}:
            return f"sample {nth + 1}"
        if not isinstance(schema, Mapping):
            raise _NoSample
        schema = self._flatten(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            # Successive array items take successive values, so uniqueItems holds.
            return schema["enum"][nth % len(schema["enum"])]
        kind = _type(schema)
        if kind not in ("object", "array"):  # containers are built, to fill what is optional
            if isinstance(schema.get("examples"), list) and schema["examples"]:
                return schema["examples"][nth % len(schema["examples"])]
            if "default" in schema:
                return schema["default"]
        if kind == "object":
            return self._object(schema, depth, nth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return _string(schema, nth)
        if kind in ("integer", "number"):
            return _number(schema, kind, nth)
        return {"boolean": True, "null": None}.get(kind)

    def _flatten(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """`schema` with its local $ref, allOf members and first anyOf/oneOf branch merged
        in: one set of keywords describing the value."""
        merged = {k: v for k, v in schema.items()
                  if k not in ("$ref", "allOf", "anyOf", "oneOf")}
        parts: list[Any] = []
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = _resolve_local(self.root, ref) if ref.startswith("#") else None
            if target is None:
                raise _NoSample
            parts.append(target)
        parts.extend(schema.get("allOf") or [])
        for key in ("anyOf", "oneOf"):
            branches = [b for b in schema.get(key) or [] if not _only_null(b)]
            if branches:
                parts.append(branches[0])
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise _NoSample
            for key, value in self._flatten(part).items():
                if key == "properties" and isinstance(merged.get(key), dict):
                    merged[key] = {**value, **merged[key]}
                elif key == "required" and isinstance(merged.get(key), list):
                    merged[key] = [*merged[key], *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _object(self, schema: Mapping[str, Any], depth: int, nth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [n for n in schema.get("required") or [] if isinstance(n, str)]
        names = list(properties) if depth < OPTIONAL_DEPTH else []
        names += [n for n in required if n not in names]
        return {name: self.value(properties.get(name, {}), depth=depth + 1, nth=nth)
                for name in names}

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", ARRAY_ITEMS)
        count = low if depth >= OPTIONAL_DEPTH else max(low, min(ARRAY_ITEMS, high))
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        return [self.value(prefix[i] if i < len(prefix) else items, depth=depth + 1, nth=i)
                for i in range(count)]


def _type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _only_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _string(schema: Mapping[str, Any], nth: int) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    text = f"Sample text {nth + 1}, with a second clause."
    low, high = schema.get("minLength", 0), schema.get("maxLength", len(text))
    if low > len(text):
        text = (text + " ") * (low // (len(text) + 1) + 1)
    return text[:max(low, min(high, len(text)))]


def _number(schema: Mapping[str, Any], kind: str, nth: int) -> int | float:
    value: int | float = 1
    if isinstance(schema.get("minimum"), int | float):
        value = schema["minimum"]
    elif isinstance(schema.get("exclusiveMinimum"), int | float):
        value = schema["exclusiveMinimum"] + (1 if kind == "integer" else 0.5)
    value += nth
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        value = -(-value // step) * step
    high = schema.get("maximum")
    if isinstance(high, int | float) and value > high:
        value = high  # may break multipleOf or a minimum: validation then drops the sample
    return int(value) if kind == "integer" else value
