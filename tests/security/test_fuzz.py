"""Property tests: inputs generated from each shipped feature's input schema, arbitrary JSON,
YAML-ish text and mutated feature documents never crash the engine; the only exceptions are
the engine's own InputError (bad input) and ContractError (bad feature or override)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from featurelm.engine import Engine, RunOptions
from featurelm.engine.config import EngineConfig
from featurelm.engine.errors import ContractError, InputError
from featurelm.engine.loader import build_feature
from featurelm.engine.safe_yaml import load_yaml_text
from tests.conftest import SENTIMENT

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = settings(max_examples=60, deadline=2000, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])


def shipped_engine() -> Engine:
    config = EngineConfig.model_validate({
        "root": ROOT, "store": "sqlite:///:memory:", "cache": "none",
        "backends": {"scripted": {"kind": "scripted", "options": {"replies": ["{}"]}}},
        "routes": {"default": {"backends": ["scripted"]}}})
    return Engine(config)


ENGINE = shipped_engine()
FEATURES = ENGINE.registry.all()
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=50),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


def strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """hypothesis-jsonschema per leaf; objects and arrays composed here, because its object
    strategy breaks on current hypothesis ('many' object has no attribute 'more')."""
    if schema.get("type") == "object" and "properties" in schema:
        properties = schema["properties"]
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: strategy(v) for k, v in properties.items() if k in required},
            optional={k: strategy(v) for k, v in properties.items() if k not in required})
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return st.lists(strategy(schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 5), 5),
                        unique=bool(schema.get("uniqueItems")))
    return from_schema(schema)


def run_offline(feature_name: str, input: Any) -> None:
    """Validate and render as a call would; InputError is the only allowed refusal."""
    feature = ENGINE.registry.get(feature_name)
    assert feature is not None
    try:
        ENGINE.validate_input(feature, input)
        request = ENGINE.build_request(feature, input, tenant="fuzz", options=RunOptions())
    except InputError:
        return
    assert request.messages[-1].role == "user"


@pytest.mark.parametrize("name", [f.name for f in FEATURES])
def test_schema_generated_inputs_validate_and_render(name: str) -> None:
    feature = ENGINE.registry.get(name)
    assert feature is not None

    @BOUNDED
    @given(strategy(feature.spec.input))
    def check(input: dict[str, Any]) -> None:
        # Generated from the schema: it must pass validation and render.
        ENGINE.validate_input(feature, input)
        ENGINE.build_request(feature, input, tenant="fuzz", options=RunOptions())

    check()


@pytest.mark.parametrize("name", [f.name for f in FEATURES])
def test_arbitrary_json_inputs_are_accepted_or_refused_cleanly(name: str) -> None:
    @BOUNDED
    @given(JSON)
    def check(input: Any) -> None:
        run_offline(name, input)

    check()


YAMLISH = st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"\n #%@`?,.0123456789 ")),
                  max_size=200) | st.builds(
    lambda d: yaml.safe_dump(d), st.dictionaries(st.sampled_from(
        ["prompt", "model", "examples", "input", "output", "name", "cache", "x"]), JSON,
        max_size=4))


@BOUNDED
@given(YAMLISH)
def test_yamlish_text_is_loaded_or_refused_cleanly(text: str) -> None:
    with contextlib.suppress(ContractError):
        load_yaml_text(text, source="fuzz", max_bytes=10_000)


@BOUNDED
@given(YAMLISH)
def test_yamlish_overrides_are_built_or_refused_cleanly(text: str) -> None:
    with contextlib.suppress(ContractError):
        ENGINE.overrides.build("fuzz", "classify_ticket", text)


PATHS = ["name", "input", "output", "prompt", "prompt.user", "prompt.system", "examples",
         "model", "model.route", "model.temperature", "cache", "overridable", "evals",
         "input.properties", "input.properties.text", "output.properties.sentiment", "input.$ref",
         "output.required", "examples.0", "examples.0.input"]


def mutate(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    node: Any = mutated
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, dict | list):
            return mutated
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return mutated


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(PATHS), JSON), min_size=1, max_size=3))
def test_mutated_feature_documents_load_or_fail_as_contract_errors(
        mutations: list[tuple[str, Any]]) -> None:
    document: dict[str, Any] = {**SENTIMENT, "model": {"route": "default"}}
    for path, value in mutations:
        try:
            document = mutate(document, path, value)
        except (IndexError, ValueError, TypeError):
            continue
    with contextlib.suppress(ContractError):
        build_feature(document, source="fuzz.yaml", config=ENGINE.config,
                      renderer=ENGINE.renderer)
