"""Override files a tenant can get right alone: a published JSON Schema per feature, an offline
`featurelm override check` that lists every problem with its line, and unknown tenants refused
everywhere one is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from featurelm.cli import main
from featurelm.engine.contracts import FeatureSpec
from featurelm.engine.override_schema import override_schema
from tests.conftest import SENTIMENT, ProjectFactory

REPO = Path(__file__).resolve().parents[2]
FEATURE: dict[str, Any] = {**SENTIMENT, "overridable": ["prompt.system", "examples",
                                                        "model.temperature"]}


def cli(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(make_project: ProjectFactory) -> Path:
    return make_project([FEATURE])


def test_the_override_schema_holds_only_the_overridable_keys_with_their_types() -> None:
    schema = override_schema(FeatureSpec.model_validate(FEATURE))
    Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == {"name", "prompt", "examples", "model"}
    assert set(schema["properties"]["prompt"]["properties"]) == {"system"}
    assert schema["properties"]["model"]["properties"]["temperature"]["maximum"] == 2
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"prompt": {"system": "Be terse."}, "model": {"temperature": 0.2},
                               "examples": [{"input": {"text": "ok"},
                                             "output": {"sentiment": "neutral"}}]})
    assert not validator.is_valid({"model": {"temperature": "warm"}})
    assert not validator.is_valid({"output": {"type": "object"}})
    # Examples are checked against the feature's own input and output schemas.
    assert not validator.is_valid({"examples": [{"input": {"text": "ok"},
                                                 "output": {"sentiment": "meh"}}]})


@pytest.mark.parametrize("path", sorted((REPO / "features").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_each_shipped_feature_publishes_its_current_override_schema(path: Path) -> None:
    spec = FeatureSpec.model_validate(yaml.safe_load(path.read_text()))
    published = REPO / "schemas" / "overrides" / f"{spec.name}.schema.json"
    assert published.is_file(), f"run `featurelm override schema {spec.name} > {published}`"
    assert json.loads(published.read_text()) == override_schema(spec), (
        f"{published} is stale: run `featurelm override schema {spec.name} > {published}`")


BROKEN = """\
name: sentiment
prompt:
  system: You are terse.
  user: "{{ text }}"
output:
  type: object
model:
  temperature: hot
examples:
  - input: {text: fine}
    output: {sentiment: meh}
"""


def test_check_lists_every_problem_with_file_line_and_path(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "acme.yaml"
    broken.write_text(BROKEN)
    code, _, err = cli(project, capsys, "override", "check", str(broken))
    assert code == 2
    lines = err.splitlines()
    assert f"{broken}: line 4: prompt.user: is not overridable in this feature" in lines
    assert any(line.startswith(f"{broken}: line 5: output: is not overridable") for line in lines)
    assert f"{broken}: line 8: model.temperature: 'hot' is not of type 'number'" in lines
    assert any(line.startswith(f"{broken}: line 11: examples.0.output.sentiment: 'meh' is not "
                               "one of") for line in lines)
    assert lines[-1] == f"{broken}: 4 problem(s) in this override of sentiment"
    assert "Traceback" not in err


def test_check_runs_the_engine_checks_once_the_shape_is_right(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = tmp_path / "sentiment.yaml"  # the file name says which feature
    override.write_text("prompt:\n  system: 'Hello {{ nosuch.__class__ }}'\n")
    code, _, err = cli(project, capsys, "override", "check", str(override))
    assert code == 2
    assert f"{override}: line 2: prompt" in err


def test_check_accepts_a_valid_override_and_needs_no_store(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = tmp_path / "mine.yaml"
    override.write_text("prompt:\n  system: You are terse.\n")
    code, out, err = cli(project, capsys, "override", "check", str(override),
                         "--feature", "sentiment")
    assert (code, err) == (0, "")
    assert out == f"ok: {override} is a valid override of sentiment\n"
    assert not (project.parent / "featurelm.db").exists()


def test_check_says_when_it_cannot_tell_the_feature(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = tmp_path / "mine.yaml"
    override.write_text("prompt:\n  system: You are terse.\n")
    code, _, err = cli(project, capsys, "override", "check", str(override))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--feature NAME" in err


def test_invalid_yaml_is_one_problem_with_its_line(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = tmp_path / "sentiment.yaml"
    override.write_text("prompt:\n  system: [unclosed\n")
    code, _, err = cli(project, capsys, "override", "check", str(override))
    assert code == 2
    assert "invalid YAML" in err and ": line " in err


@pytest.mark.parametrize("args", [
    ["run", "sentiment", "--input", '{"text": "great"}', "--tenant", "acmee"],
    ["eval", "--tenant", "acmee"],
    ["eval", "--compare", "base", "tenant:acmee"],
])
def test_an_unknown_tenant_is_one_line_and_a_usage_error(
        project: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, err = cli(project, capsys, *args)
    assert code == 2
    assert "unknown tenant 'acmee'" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_known_tenant_still_runs(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(project, capsys, "tenant", "create", "acme")[0] == 0
    code, out, _ = cli(project, capsys, "run", "sentiment", "--input", '{"text": "great"}',
                       "--tenant", "acme")
    assert code == 0
    assert json.loads(out)["output"] == {"sentiment": "positive"}


def yaml_blocks(path: Path) -> list[str]:
    blocks, current, inside = [], [], False
    for line in path.read_text().splitlines():
        if line.strip() == "```yaml":
            inside, current = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_the_sample_override_in_the_docs_applies_to_its_feature(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [sample] = [b for b in yaml_blocks(REPO / "docs" / "tenants.md") if "examples:" in b]
    override = tmp_path / "acme.classify_ticket.yaml"
    override.write_text(sample)
    code, _, err = cli(REPO / "featurelm.yaml", capsys, "override", "check", str(override))
    assert (code, err) == (0, ""), err
