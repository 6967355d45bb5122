"""A JSON Schema as rows a person reads: each field's path, type, whether it is required, its
constraints and description. Only what the console shows; the schema itself stays the truth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Keywords shown as constraints, in this order.
CONSTRAINTS = ("enum", "const", "format", "pattern", "minLength", "maxLength", "minimum",
               "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
               "uniqueItems", "default")
#: Deepest nesting listed; deeper parts show as their parent's type.
MAX_DEPTH = 6


@dataclass(frozen=True)
class Field:
    path: str
    type: str
    required: bool
    constraints: str
    description: str


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind is not None:
        return str(kind)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(combinator), list):
            return f"{combinator} of {len(schema[combinator])}"
    return "$ref" if "$ref" in schema else "any"


def fields_of(schema: Any, path: str = "", required: bool = True,
              depth: int = 0) -> list[Field]:
    if not isinstance(schema, dict):
        return []
    rows = []
    if path:
        constraints = "; ".join(f"{key}: {json.dumps(schema[key], ensure_ascii=False)}"
                                for key in CONSTRAINTS if key in schema)
        rows.append(Field(path, _type(schema), required, constraints,
                          str(schema.get("description", ""))))
    if depth >= MAX_DEPTH:
        return rows
    properties = schema.get("properties")
    if isinstance(properties, dict):
        needed = set(schema.get("required") or [])
        for name, sub in properties.items():
            rows += fields_of(sub, f"{path}.{name}" if path else name, name in needed,
                              depth + 1)
    items = schema.get("items")
    if isinstance(items, dict):
        rows += fields_of(items, f"{path}[]" if path else "[]", True, depth + 1)
    return rows
