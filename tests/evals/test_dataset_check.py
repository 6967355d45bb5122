"""`featurelm check` on eval datasets: each case under the feature's own rules, with its line."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SENTIMENT, ProjectFactory


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featurelm.cli", "--config", str(config),
                           "check"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ), cwd=config.parent)


def dated() -> dict[str, object]:
    spec = copy.deepcopy(SENTIMENT)
    spec["input"]["properties"]["text"]["maxLength"] = 20
    spec["output"]["properties"]["when"] = {"type": "string", "format": "date"}
    return spec


def write_cases(config: Path, *cases: dict[str, object]) -> Path:
    path = config.parent / "evals" / "datasets" / "sentiment.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    return path


def test_every_bad_case_is_reported_with_file_and_line_and_the_feature_still_loads(
        make_project: ProjectFactory) -> None:
    config = make_project([dated()])
    path = write_cases(
        config,
        {"id": "fine", "input": {"text": "ok"},
         "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]},
        {"id": "long", "input": {"text": "far too long for the twenty-character cap"}},
        {"id": "typo", "input": {"txt": "ok"}},
        {"id": "label", "input": {"text": "ok"},
         "assert": [{"type": "one_of", "path": "sentiment", "values": ["positive", "happy"]}]},
        {"id": "date", "input": {"text": "ok"},
         "assert": [{"type": "equals", "path": "when", "value": "next Tuesday"}]})
    done = check(config)
    assert done.returncode == 0, done.stderr  # serving never depends on a dataset
    warnings = [line for line in done.stderr.splitlines() if "eval dataset" in line]
    assert all(str(path) in line for line in warnings)
    text = "\n".join(warnings)
    assert "line 2: input" in text and "too long" in text
    assert "line 3: input" in text and "txt" in text
    assert "line 4: assert.0" in text and "'happy'" in text
    assert "line 5: assert.0" in text and "date" in text
    assert "line 1" not in text


def test_formats_ignore_applies_to_dataset_cases(make_project: ProjectFactory) -> None:
    spec = dated()
    spec["formats"] = "ignore"
    config = make_project([spec])
    write_cases(config, {"id": "date", "input": {"text": "ok"},
                         "assert": [{"type": "equals", "path": "when", "value": "soon"}]})
    done = check(config)
    assert done.returncode == 0 and "eval dataset" not in done.stderr, done.stderr


def test_an_unreadable_dataset_is_a_warning_naming_its_line(make_project: ProjectFactory) -> None:
    config = make_project()
    path = write_cases(config, {"id": "a", "input": {"text": "ok"}})
    path.write_text(path.read_text() + "{not json\n")
    done = check(config)
    assert done.returncode == 0, done.stderr
    assert f"{path}: line 2: invalid JSON" in done.stderr


def test_expected_values_under_refs_or_combinators_are_not_guessed(
        make_project: ProjectFactory) -> None:
    spec = copy.deepcopy(SENTIMENT)
    spec["output"] = {"type": "object", "$defs": {"s": {"type": "string", "enum": ["a"]}},
                      "properties": {"sentiment": {"$ref": "#/$defs/s"},
                                     "either": {"anyOf": [{"type": "string"},
                                                          {"type": "integer"}]}}}
    spec["examples"] = []
    config = make_project([spec])
    write_cases(config, {"id": "a", "input": {"text": "ok"},
                         "assert": [{"type": "equals", "path": "sentiment", "value": "a"},
                                    {"type": "equals", "path": "either", "value": 3}]})
    done = check(config)
    assert done.returncode == 0 and "eval dataset" not in done.stderr, done.stderr
