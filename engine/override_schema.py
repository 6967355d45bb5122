"""The JSON Schema of one feature's tenant override file: only its `overridable` keys, typed.

Published under schemas/overrides/<feature>.schema.json, so an editor completes and checks an
override file (`# yaml-language-server: $schema=...`) before it ever reaches the engine, and
`featurelm override check` validates a file offline with the same schema.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from featurelm.engine.contracts import FeatureSpec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: Embedded input/output schemas get an $id, so their own "#/$defs/..." references resolve
#: inside them and not against the override schema around them.
EMBEDDED_ID = "urn:featurelm:feature:{feature}:{part}"


@cache
def _spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = FeatureSpec.model_json_schema()
    return schema


def _field_schema(path: list[str]) -> dict[str, Any]:
    """The feature file's schema for a dotted path (`model.temperature`), $refs resolved."""
    root = _spec_schema()
    node: dict[str, Any] = root
    for segment in path:
        node = _deref(root, node)
        node = node["properties"][segment]
    inlined: dict[str, Any] = _inline(root, node)
    return inlined


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = root["$defs"][name]
    return node


def _inline(root: dict[str, Any], node: Any) -> Any:
    """`node` with every $ref into the feature schema's $defs replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(root, _deref(root, node))
        return {k: _inline(root, v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_inline(root, v) for v in node]
    return node


def _embedded(feature: str, part: str, schema: dict[str, Any]) -> dict[str, Any]:
    embedded = copy.deepcopy(schema)
    embedded.pop("$schema", None)
    embedded["$id"] = EMBEDDED_ID.format(feature=feature, part=part)
    return embedded


def _examples(spec: FeatureSpec) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": 32,
        "description": "Few-shot pairs; each input and output must satisfy the feature's "
                       "schemas. Replaces the feature's examples.",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["input", "output"],
            "properties": {
                "input": _embedded(spec.name, "input", spec.input),
                "output": _embedded(spec.name, "output", spec.output),
            },
        },
    }


def _prompt() -> dict[str, Any]:
    # Templates in overrides are inline: a tenant never names a file the engine loads.
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "system": {"type": "string", "description": "Inline system template (Jinja2)."},
            "user": {"type": "string", "description": "Inline user template (Jinja2)."},
        },
    }


def _leaf(spec: FeatureSpec, path: list[str], allowed_routes: list[str]) -> dict[str, Any]:
    if path == ["examples"]:
        return _examples(spec)
    if path == ["prompt"]:
        return _prompt()
    if path[0] == "prompt":
        return _prompt()["properties"][path[1]]  # type: ignore[no-any-return]
    if path == ["model", "route"]:
        return {"type": "string", "enum": allowed_routes,
                "description": "Route to run on; one of the feature's allowed routes."}
    return _field_schema(path)


def override_schema(spec: FeatureSpec) -> dict[str, Any]:
    """The JSON Schema an override file of `spec` must satisfy."""
    allowed_routes = list(dict.fromkeys([spec.model.route, *spec.model.allowed_routes]))
    properties: dict[str, Any] = {
        "name": {"const": spec.name, "description": "Optional; the feature's own name."},
    }
    for entry in sorted(spec.overridable):
        path = entry.split(".")
        node = properties
        for segment in path[:-1]:
            parent = node.setdefault(segment, {"type": "object", "additionalProperties": False,
                                               "properties": {}})
            node = parent["properties"]
        node[path[-1]] = _leaf(spec, path, allowed_routes)
    return {
        "$schema": DRAFT,
        "$id": f"urn:featurelm:override:{spec.name}",
        "title": f"Tenant override of {spec.name}",
        "description": f"What a tenant may change in {spec.name}: "
                       f"{', '.join(sorted(spec.overridable)) or 'nothing'}. The input and "
                       "output schemas never change.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
