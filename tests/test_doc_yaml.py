"""Every YAML example in the docs is loaded as what it claims to be: a featurelm.yaml, a feature
file (or a section of one) or a tenant override, so no sample a reader copies is rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from featurelm.engine.config import EngineConfig
from featurelm.engine.contracts import CachePolicy, FeatureSpec
from featurelm.engine.override_schema import override_schema

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def yaml_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, text) of each ```yaml block."""
    blocks: list[tuple[int, str]] = []
    current: list[str] | None = None
    start = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        # "```yaml" or "```yaml path/it/goes/to.yaml"
        if current is None and line.strip().split(" ")[0] == "```yaml":
            current, start = [], number
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


BLOCKS = [(path, line, text) for path in DOCS for line, text in yaml_blocks(path)]


def load_as_what_it_is(data: dict[str, Any]) -> None:
    if "name" in data and "prompt" in data:
        FeatureSpec.model_validate(data)
    elif set(data) == {"cache"} and isinstance(data["cache"], dict):
        CachePolicy.model_validate(data["cache"])  # the cache section of a feature file
    elif "content_type_overrides" in data:
        # The openapi-python-client settings of docs/http.md, checked by the generator's own
        # model; it ignores unknown keys, so a misspelt one is caught here.
        from openapi_python_client.config import ConfigFile

        assert set(data) <= set(ConfigFile.model_fields), set(data) - set(ConfigFile.model_fields)
        ConfigFile.model_validate(data)
    elif set(data) & {"prompt", "examples"}:
        # A tenant override: every shipped feature it could be for is tried.
        specs = [FeatureSpec.model_validate(yaml.safe_load(p.read_text()))
                 for p in sorted((REPO / "features").glob("*.yaml"))]
        errors = {spec.name: [e.message for e in Draft202012Validator(
            override_schema(spec)).iter_errors(data)] for spec in specs}
        assert any(not problems for problems in errors.values()), errors
    else:
        EngineConfig.model_validate(data)


def test_the_docs_have_yaml_examples() -> None:
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize(("path", "line", "text"), BLOCKS,
                         ids=[f"{p.relative_to(REPO)}:{n}" for p, n, _ in BLOCKS])
def test_a_yaml_example_loads(path: Path, line: int, text: str) -> None:
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{path}:{line}: not a mapping"
    load_as_what_it_is(data)
