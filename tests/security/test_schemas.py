"""JSON Schema attacks: tenants cannot touch schemas, patterns run in linear time over HTTP, and
hostile schemas in a feature file ($ref loops, refs to nothing, deep or huge schemas) are a
ContractError at load, never a RecursionError or a 500."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import yaml

from featurelm.engine import Engine
from featurelm.engine.errors import ContractError, InputError
from tests.conftest import SENTIMENT, ProjectFactory
from tests.security.conftest import SecureServer, assert_problem, override_versions, still_serves


@pytest.mark.slow
@pytest.mark.parametrize(("patch", "named"), [
    ({"input": {"type": "object", "properties": {"text": {"type": "string",
                                                          "pattern": "^(a+)+$"}}}},
     "input schema is the product's contract"),
    ({"output": {"type": "object", "properties": {"sentiment": {"type": "string"}}}},
     "output schema is the product's contract"),
    ({"output": {"additionalProperties": True}}, "output schema is the product's contract"),
    ({"input": {"properties": {"text": {"maxLength": 100_000_000}}}},
     "input schema is the product's contract"),
], ids=["input-pattern", "output-replaced", "output-loosened", "input-limit"])
def test_an_override_cannot_change_a_schema(http: httpx.Client, secure_server: SecureServer,
                                            patch: dict[str, Any], named: str) -> None:
    before = override_versions(http, secure_server, "initech")
    for dry_run in ("true", "false"):
        response = http.put("/v1/tenants/initech/overrides/sentiment",
                            content=yaml.safe_dump(patch), params={"dry_run": dry_run},
                            headers=secure_server.bearer("initech"))
        body = assert_problem(response, 422, named)
        assert body["errors"][0]["path"].split(".")[0] in ("input", "output")
    assert override_versions(http, secure_server, "initech") == before
    still_serves(http, secure_server)


@pytest.mark.slow
def test_a_backtracking_pattern_answers_fast_over_http(http: httpx.Client,
                                                       secure_server: SecureServer) -> None:
    """`^(a+)+$` against 50k 'a's and a '!' takes ages on a backtracking engine; RE2 is linear."""
    started = time.monotonic()
    response = http.post("/v1/features/guarded", json={"input": {"code": "a" * 50_000 + "!"}},
                         headers=secure_server.bearer("acme"))
    assert time.monotonic() - started < 2
    body = assert_problem(response, 422, "does not match")
    assert body["errors"][0]["path"] == "$.code"
    matching = http.post("/v1/features/guarded", json={"input": {"code": "a" * 50_000}},
                         headers=secure_server.bearer("acme"))
    assert matching.status_code == 200, matching.text
    still_serves(http, secure_server)


def with_input(schema: dict[str, Any], examples: bool = True) -> dict[str, Any]:
    return {**SENTIMENT, "name": "hostile", "input": schema,
            "prompt": {"user": "{{ text }}"},
            "examples": [{"input": {"text": "x"}, "output": {"sentiment": "neutral"}}]
            if examples else []}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"text": schema}}
    return schema


HOSTILE_SCHEMAS: list[tuple[str, dict[str, Any], str]] = [
    ("ref to itself", {"type": "object", "$ref": "#", "properties": {"text": {}}}, "$ref loop"),
    ("ref loop through defs", {"type": "object", "properties": {"text": {"$ref": "#/$defs/a"}},
                               "$defs": {"a": {"$ref": "#/$defs/b"},
                                         "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}},
     "$ref loop"),
    ("ref loop through allOf", {"type": "object", "allOf": [{"$ref": "#/$defs/x"}],
                                "$defs": {"x": {"allOf": [{"$ref": "#"}]}},
                                "properties": {"text": {}}}, "$ref loop"),
    ("ref to nothing", {"type": "object", "properties": {"text": {"$ref": "#/$defs/gone"}}},
     "points to nothing"),
    ("ref to a missing anchor", {"type": "object", "properties": {"text": {"$ref": "#nope"}}},
     "points to nothing"),
    ("remote ref", {"type": "object", "properties": {"text": {
        "$ref": "http://169.254.169.254/latest/meta-data"}}}, "points outside"),
    ("deeply nested", nested(40), "deeper than"),
    # Past the 1 MiB cap (engine.schemas.MAX_SCHEMA_BYTES), which real Kubernetes schemas need.
    ("huge", {"type": "object", "properties": {
        f"f{i}": {"type": "string", "description": "d" * 1024} for i in range(1100)}}, "over the"),
    ("backreference pattern", {"type": "object", "properties": {
        "text": {"type": "string", "pattern": "^(a)\\1$"}}}, "not supported"),
]


@pytest.mark.parametrize("examples", [True, False], ids=["with-examples", "no-examples"])
@pytest.mark.parametrize(("schema", "named"), [(s, n) for _, s, n in HOSTILE_SCHEMAS],
                         ids=[i for i, _, _ in HOSTILE_SCHEMAS])
def test_a_hostile_schema_in_a_feature_file_is_a_contract_error(
        make_project: ProjectFactory, schema: dict[str, Any], named: str,
        examples: bool) -> None:
    # A file big enough for the schema cap to be the one that refuses it (1 MiB; feature files
    # are capped at 256 KiB unless limits.max_yaml_bytes is raised).
    config = make_project([with_input(schema, examples)],
                          extra={"limits": {"max_yaml_bytes": 4 * 1024 * 1024}})
    with pytest.raises(ContractError) as refused:
        Engine.from_config(config)
    assert named in str(refused.value)
    # Nesting is cut off by the YAML loader already, before the document is a schema.
    assert refused.value.issues[0].path.startswith("input") or "nesting" in str(refused.value)


def test_a_recursive_schema_through_properties_still_loads_and_bounds_deep_input(
        make_project: ProjectFactory) -> None:
    tree = {"type": "object", "required": ["text"],
            "properties": {"text": {"type": "string"}, "child": {"$ref": "#"}}}
    engine = Engine.from_config(make_project([with_input(tree)]))
    feature = engine.registry.get("hostile")
    assert feature is not None
    deep: dict[str, Any] = {"text": "leaf"}
    for _ in range(5000):
        deep = {"text": "x", "child": deep}
    with pytest.raises(InputError) as refused:
        engine.validate_input(feature, deep)
    assert "deeper than" in refused.value.violations[0].message
