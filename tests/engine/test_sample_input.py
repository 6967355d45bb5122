"""A sample input built from a feature's input schema, and overrides refused when their
template breaks on it although it renders on every example."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurelm.cli import main
from featurelm.engine import ContractError, Engine
from featurelm.engine.sample_input import sample_input
from featurelm.engine.schemas import violations
from tests.conftest import SENTIMENT, ProjectFactory

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "features").glob("*.yaml"))

TICKET: dict[str, Any] = {
    **SENTIMENT,
    "name": "ticket",
    "input": {"type": "object", "additionalProperties": False, "required": ["body"],
              "properties": {
                  "body": {"type": "string", "minLength": 1, "maxLength": 2000},
                  "channel": {"type": "string", "enum": ["email", "chat"]},
                  "tags": {"type": "array", "maxItems": 5, "uniqueItems": True,
                           "items": {"type": "string", "minLength": 1}}}},
    "prompt": {"system": "Classify tickets.", "user": "Ticket: {{ body }}"},
    "examples": [{"input": {"body": "It broke.", "tags": ["billing"]},
                  "output": {"sentiment": "negative"}}],
    "overridable": ["prompt.user"],
}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_feature_yields_a_valid_sample_input(path: Path) -> None:
    schema = yaml.safe_load(path.read_text())["input"]
    sample = sample_input(schema)
    assert sample is not None
    assert violations(schema, sample) == []
    assert set(sample) == set(schema["properties"])  # optional properties filled too


def test_the_sample_fills_optional_fields_and_longer_arrays() -> None:
    sample = sample_input(TICKET["input"])
    assert sample is not None
    assert sample["channel"] == "email"
    assert len(sample["tags"]) == 3 and len(set(sample["tags"])) == 3


def test_the_sample_uses_what_the_schema_offers_and_respects_its_bounds() -> None:
    schema = {"type": "object", "required": ["n"], "$defs": {"when": {"format": "date",
                                                                      "type": "string"}},
              "properties": {
                  "n": {"type": "integer", "minimum": 10, "maximum": 12, "multipleOf": 4},
                  "lang": {"type": "string", "examples": ["de"]},
                  "mode": {"const": "fast"}, "size": {"type": "string", "default": "M"},
                  "code": {"type": "string", "minLength": 80, "maxLength": 80},
                  "on": {"$ref": "#/$defs/when"},
                  "pair": {"type": "array", "minItems": 2, "maxItems": 2,
                           "items": {"type": ["null", "number"], "exclusiveMinimum": 0}},
                  "note": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}}}
    assert sample_input(schema) == {
        "n": 12, "lang": "de", "mode": "fast", "size": "M", "code": sample_input(
            {"type": "string", "minLength": 80, "maxLength": 80}),
        "on": "2024-02-29", "pair": [0.5, 1.5], "note": True}
    assert len(sample_input(schema)["code"]) == 80


@pytest.mark.parametrize("schema", [
    {"type": "object", "required": ["id"],
     "properties": {"id": {"type": "string", "pattern": "^[0-9]{6}$"}}},
    {"type": "array", "minItems": 5000, "items": {"type": "integer"}},
    {"$ref": "#/$defs/node", "$defs": {"node": {
        "type": "object", "required": ["next"], "properties": {"next": {"$ref": "#/$defs/node"}}}}},
    {"type": "object", "required": ["x"], "properties": {"x": {"$ref": "#/$defs/missing"}}},
])
def test_a_schema_it_cannot_satisfy_gives_no_sample(schema: dict[str, Any]) -> None:
    assert sample_input(schema) is None


def test_a_recursive_schema_stops_at_what_is_required() -> None:
    tree = {"$ref": "#/$defs/node", "$defs": {"node": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"},
                       "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}}
    sample = sample_input(tree)
    assert sample is not None and violations(tree, sample) == []


@pytest.fixture
async def engine(make_project: ProjectFactory) -> AsyncIterator[Engine]:
    engine = Engine.from_config(make_project([TICKET]))
    await (await engine.store()).create_tenant("acme", actor="ops")
    yield engine
    await engine.aclose()


@pytest.mark.parametrize("template", [
    # An optional field the examples never set, used as if it were an object.
    "{{ body }}{% if channel is defined %} via {{ channel.label }}{% endif %}",
    # An array longer than the examples': its second item treated as an object.
    "{{ body }}{% for tag in tags[1:] %}{{ tag.name }}{% endfor %}",
])
async def test_an_override_breaking_only_on_the_sample_input_is_refused(
        engine: Engine, template: str) -> None:
    text = yaml.safe_dump({"prompt": {"user": template}})
    with pytest.raises(ContractError) as caught:
        await engine.overrides.apply("acme", "ticket", text, author="eve")
    issue = caught.value.issues[0]
    assert issue.path == "prompt"
    assert "for a sample input built from the input schema" in issue.problem
    assert await engine.overrides.list_versions("acme") == []


async def test_an_override_that_handles_every_input_is_saved(engine: Engine) -> None:
    template = "{{ body }}{% if channel is defined %} via {{ channel }}{% endif %}" \
               "{% for tag in tags | default([]) %} #{{ tag }}{% endfor %}"
    result = await engine.overrides.apply("acme", "ticket",
                                          yaml.safe_dump({"prompt": {"user": template}}),
                                          author="ann")
    assert result.version == 1


def test_override_check_reports_a_template_that_breaks_on_the_sample_input(
        make_project: ProjectFactory, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = make_project([TICKET])
    override = tmp_path / "ticket.yaml"
    override.write_text(yaml.safe_dump({"prompt": {"user": "{{ body }}{% if channel is defined "
                                                           "%}{{ channel.label }}{% endif %}"}}))
    assert main(["--config", str(config), "override", "check", str(override)]) == 2
    err = capsys.readouterr().err
    assert "prompt" in err and "for a sample input built from the input schema" in err
