"""Untrusted schemas and inputs are checked in bounded time and space."""

from __future__ import annotations

import time
from typing import Any

from featurelm.engine.schemas import json_depth, schema_problems, violations


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
    huge = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(5000)}}
    assert "byte limit" in schema_problems(huge)[0][1]


def test_json_depth_is_iterative() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    assert json_depth(value) > 64
