"""The OpenAPI 3.1 document: each feature's request and response schemas from its contract,
under components/schemas and referenced by $ref, so generated clients are typed per feature.

Every schema a client deals in has a name (batch items included), and each operation's 200
declares only JSON: streaming is an `Accept: text/event-stream` negotiation described in the
operation's text and its `x-featurelm-streaming` extension, so generators (openapi-python-client,
openapi-fetch) type the JSON response without a choice of media types to resolve."""

from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from featurelm.engine.engine import Meta
from featurelm.engine.loader import LoadedFeature
from featurelm.serving import problems
from featurelm.serving.auth import bearer
from featurelm.serving.idempotency import HEADER as IDEMPOTENCY_HEADER
from featurelm.serving.idempotency import KEY_PATTERN

REF = "#/components/schemas/"

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Per-call choices; everything else is the engine's business.",
    "properties": {
        "route": {"type": "string", "description": "Another route from the feature's allowed "
                                                   "list."},
        "cache": {"type": "string", "enum": ["default", "no-cache", "no-store"],
                  "description": "no-cache skips the cache read; no-store skips the write."},
    },
}


def schema_name(feature: str, suffix: str) -> str:
    """`ticket_triage` + `Input` -> `TicketTriageInput`."""
    return "".join(part.capitalize() for part in feature.split("_")) + suffix


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _rebase_refs(schema: Any, base: str) -> Any:
    """Point a contract's local refs (`#/$defs/x`) at where the schema now lives."""
    if isinstance(schema, dict):
        out = {k: _rebase_refs(v, base) for k, v in schema.items()}
        target = schema.get("$ref")
        if isinstance(target, str) and target.startswith("#"):
            out["$ref"] = base + target[1:]
        return out
    if isinstance(schema, list):
        return [_rebase_refs(v, base) for v in schema]
    return schema


def _contract_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    embedded = _rebase_refs(copy.deepcopy(schema), REF + name)
    # The document's dialect is 2020-12 already; a nested $schema/$id would re-base refs.
    embedded.pop("$schema", None)
    embedded.pop("$id", None)
    return dict(embedded)


def feature_components(feature: LoadedFeature,
                       batch_max_items: int) -> dict[str, dict[str, Any]]:
    """Input, Output, Request, Response, BatchRequest and BatchResponse of one feature."""
    n = feature.name
    return {
        schema_name(n, "Input"): _contract_schema(feature.spec.input, schema_name(n, "Input")),
        schema_name(n, "Output"): _contract_schema(feature.spec.output,
                                                   schema_name(n, "Output")),
        schema_name(n, "Request"): {
            "type": "object", "required": ["input"], "additionalProperties": False,
            "properties": {"input": ref(schema_name(n, "Input")), "options": ref("RunOptions")}},
        schema_name(n, "Response"): {
            "type": "object", "required": ["output", "meta"],
            "properties": {"output": ref(schema_name(n, "Output")), "meta": ref("Meta")}},
        schema_name(n, "BatchRequest"): {
            "type": "object", "required": ["inputs"], "additionalProperties": False,
            "properties": {"inputs": {"type": "array", "minItems": 1,
                                      "maxItems": batch_max_items,
                                      "items": ref(schema_name(n, "Input"))},
                           "options": ref("RunOptions")}},
        schema_name(n, "BatchItem"): {
            "description": "One input's result: its output and meta, or its error.",
            "oneOf": [ref(schema_name(n, "Response")), ref("BatchItemError")]},
        schema_name(n, "BatchResponse"): {
            "type": "object", "required": ["results"],
            "properties": {"results": {"type": "array",
                                       "items": ref(schema_name(n, "BatchItem"))}}},
    }


BATCH_ITEM_ERROR: dict[str, Any] = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "description": "A batch input that failed; the other inputs are unaffected.",
    "properties": {"error": ref("Problem")}}

#: Named so a generated client calls them `Override` and `OverrideSchema`, not a name spelled
#: from the operation and path. Their shape depends on the feature: the override-schema
#: endpoint describes each one.
OVERRIDE: dict[str, Any] = {
    "type": "object", "additionalProperties": True,
    "description": "An override file as a JSON object (the same mapping as its YAML); "
                   "`GET /v1/features/{feature}/override-schema` gives its keys per feature."}
OVERRIDE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": True,
    "description": "A JSON Schema (2020-12) of one feature's override files: only its "
                   "overridable keys, with their types."}

STREAMING_NOTE = (
    "\n\nStreaming: send `Accept: text/event-stream` to receive server-sent events instead "
    "of the JSON body: `progress`, `delta` (raw model text, not yet validated), then `result` "
    "(the same object as the JSON response) or `error` (a Problem).")


CALL_ERRORS = (401, 404, 409, 413, 422, 429, 502, 503, 504)
IDEMPOTENCY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
    "description": "Retrying a POST with the same key returns the first result (per tenant).",
    "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
}


def _operation(operation_id: str, summary: str | None, description: str, request: str,
               ok: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["features"],
        "summary": summary,
        "description": description,
        "operationId": operation_id,
        "security": [{bearer.scheme_name: []}],
        "parameters": [IDEMPOTENCY_PARAMETER],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": ref(request)}}},
        "responses": {"200": ok, **{str(k): v for k, v in
                                    problems.responses(*CALL_ERRORS).items()}},
    }
    return {k: v for k, v in operation.items() if v}


def feature_paths(feature: LoadedFeature) -> dict[str, dict[str, Any]]:
    """The call and batch operations of one feature (served by serving.features.FeatureCalls,
    outside FastAPI's router, so they are described here)."""
    n = feature.name
    call_ok = {
        "description": "Schema-valid output and how it was produced.",
        "content": {"application/json": {"schema": ref(schema_name(n, "Response"))}}}
    batch_ok = {"description": "One result or error per input, in order.",
                "content": {"application/json": {"schema": ref(schema_name(n, "BatchResponse"))}}}
    description = (feature.spec.description + STREAMING_NOTE).strip()
    call = _operation(f"run_{n}", feature.spec.description.split("\n")[0] or None,
                      description, schema_name(n, "Request"), call_ok)
    call["x-featurelm-streaming"] = {
        "accept": "text/event-stream", "events": ["progress", "delta", "result", "error"],
        "result": ref(schema_name(n, "Response")), "error": ref("Problem")}
    return {
        f"/v1/features/{n}": {"post": call},
        f"/v1/features/{n}/batch": {"post": _operation(
            f"batch_{n}", f"{n} for a list of inputs", "", schema_name(n, "BatchRequest"),
            batch_ok)},
    }


def meta_schema() -> dict[str, Any]:
    schema = TypeAdapter(Meta).json_schema()
    schema["description"] = ("How the result was produced: backend, model, attempts, tokens, "
                             "cost, cache.")
    schema["required"] = [f.name for f in fields(Meta)]
    return schema


def build(app: FastAPI, features: list[LoadedFeature], batch_max_items: int) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, openapi_version="3.1.0",
                       description=app.description, routes=app.routes, tags=app.openapi_tags)
    paths: dict[str, Any] = {}
    for feature in features:
        paths.update(feature_paths(feature))
    spec["paths"] = {**paths, **spec.get("paths", {})}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = problems.PROBLEM_SCHEMA
    schemas["BatchItemError"] = BATCH_ITEM_ERROR
    schemas["RunOptions"] = OPTIONS_SCHEMA
    schemas["Override"] = OVERRIDE
    schemas["OverrideSchema"] = OVERRIDE_SCHEMA
    schemas["Meta"] = meta_schema()
    for feature in features:
        schemas.update(feature_components(feature, batch_max_items))
    return spec


def install(app: FastAPI, features: list[LoadedFeature], batch_max_items: int) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, features, batch_max_items)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
