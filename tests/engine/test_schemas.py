"""Untrusted schemas and inputs are checked in bounded time and space."""

from __future__ import annotations

import time
from typing import Any

import pytest

from featurelm.engine.schemas import (
    is_object_schema,
    json_depth,
    schema_problems,
    violations,
    without_formats,
)


def test_catastrophic_backtracking_pattern_runs_in_linear_time() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
    started = time.monotonic()
    found = violations(schema, {"s": "a" * 50_000 + "!"})
    assert time.monotonic() - started < 1
    assert [v.path for v in found] == ["$.s"]


def test_pattern_properties_use_the_bounded_engine_too() -> None:
    schema = {"type": "object", "patternProperties": {"^(x+)+$": {"type": "integer"}}}
    assert violations(schema, {"x" * 5000: 1}) == []
    assert [v.path for v in violations(schema, {"xxx": "no"})] == ["$.xxx"]


def test_backreferences_and_lookaround_are_refused_at_load() -> None:
    for pattern in ["(a)\\1", "(?=a)b"]:
        problems = schema_problems({"type": "string", "pattern": pattern})
        assert problems and "not supported" in problems[0][1]


def test_remote_refs_are_refused_and_local_refs_work() -> None:
    assert "outside the schema" in schema_problems({"$ref": "http://x/y.json"})[0][1]
    schema = {"$defs": {"n": {"type": "integer"}}, "type": "object",
              "properties": {"a": {"$ref": "#/$defs/n"}}}
    assert schema_problems(schema) == []
    assert [v.path for v in violations(schema, {"a": "x"})] == ["$.a"]


def test_recursive_ref_schema_against_deep_input_is_bounded() -> None:
    schema: dict[str, Any] = {"type": "object",
                              "properties": {"child": {"$ref": "#"}}}
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(10_000):
        node["child"] = {}
        node = node["child"]
    found = violations(schema, deep)
    assert found and "deeper than" in found[0].message


def test_deep_and_huge_schemas_are_refused() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"x": deep}}
    assert "deeper than" in schema_problems(deep)[0][1]
    huge = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(50_000)}}
    assert "byte limit" in schema_problems(huge)[0][1]


def test_json_depth_is_iterative() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    assert json_depth(value) > 64


def test_a_typo_in_a_keyword_is_an_error_with_a_suggestion() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "maxLenght": 3}},
              "requierd": ["x"]}
    assert schema_problems(schema) == [
        ("properties.x.maxLenght", "unknown keyword 'maxLenght' for this draft (did you mean "
                                   "'maxLength'?)"),
        ("requierd", "unknown keyword 'requierd' for this draft (did you mean 'required'?)")]
    # Property names are data, not keywords; `x-` annotations and editor annotations pass.
    assert schema_problems({"type": "object", "x-owner": "team", "properties": {
        "requierd": {"type": "string", "markdownDescription": "*a name*"}}}) == []


def test_a_keyword_of_a_later_draft_in_an_earlier_one_is_an_error() -> None:
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
              "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    assert [where for where, _ in schema_problems(schema)] == ["if", "then"]
    assert "later draft" in schema_problems(schema)[0][1]


def test_the_declared_draft_is_honoured() -> None:
    exclusive = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                 "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                 "dependencies": {"a": {"not": {"required": ["b"]}}}}
    assert schema_problems(exclusive) == []
    assert violations(exclusive, {"a": "x"}) == []
    assert [v.path for v in violations(exclusive, {"a": "x", "b": "y"})] == ["$"]
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
              "properties": {"n": {"type": "number", "maximum": 5, "exclusiveMaximum": True}}}
    assert schema_problems(draft4) == []
    assert [v.path for v in violations(draft4, {"n": 5})] == ["$.n"]
    assert "unknown $schema" in schema_problems({"$schema": "https://example.com/s"})[0][1]


@pytest.mark.parametrize(("fmt", "bad", "good"), [
    ("email", "nobody", "a@example.com"), ("date-time", "yesterday", "2024-05-01T10:00:00Z"),
    ("date", "mock", "2024-05-01"), ("time", "noon", "10:00:00Z"), ("uri", "not a uri",
    "https://example.com/x"), ("uuid", "1234", "12345678-1234-5678-1234-567812345678"),
    ("ipv4", "1.2.3", "10.0.0.1"), ("ipv6", "::g", "::1"), ("hostname", "a..b", "example.com")])
def test_formats_are_enforced(fmt: str, bad: str, good: str) -> None:
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": fmt}}}
    assert [v.path for v in violations(schema, {"v": bad})] == ["$.v"]
    assert violations(schema, {"v": good}) == []


def test_without_formats_drops_the_keyword_not_a_property_named_format() -> None:
    schema = {"type": "object", "properties": {
        "format": {"type": "string", "format": "date"},
        "list": {"type": "array", "items": {"format": "email"}}}}
    assert without_formats(schema) == {"type": "object", "properties": {
        "format": {"type": "string"}, "list": {"type": "array", "items": {}}}}


def test_every_spelling_of_an_object_top_level_is_one() -> None:
    assert is_object_schema({"type": "object"}) and is_object_schema({"type": ["object"]})
    assert is_object_schema({"properties": {"a": {}}})
    assert is_object_schema({"$ref": "#/$defs/o", "$defs": {"o": {"type": "object"}}})
    assert not is_object_schema({"type": ["object", "null"]})
    assert not is_object_schema({"type": "string"})
