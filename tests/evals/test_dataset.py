"""Datasets load from JSONL or YAML, and every problem names the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from featurelm.engine.errors import ContractError
from featurelm.evals.assertions import Equals, Regex
from featurelm.evals.dataset import find_dataset, load_dataset


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CASE = {"id": "refund-request", "input": {"text": "refund please"},
        "assert": [{"type": "equals", "path": "category", "value": "billing"},
                   {"type": "regex", "path": "summary", "pattern": "refund", "weight": 2}],
        "weight": 2.0}


def test_jsonl_cases_load_with_their_assertions(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "classify.jsonl",
                       [CASE, "", {"id": "second", "input": {"text": "x"}}])
    dataset = load_dataset(path)
    assert [c.id for c in dataset.cases] == ["refund-request", "second"]
    first = dataset.cases[0]
    assert first.weight == 2.0
    assert isinstance(first.assertions[0], Equals)
    assert isinstance(first.assertions[1], Regex) and first.assertions[1].weight == 2
    assert dataset.cases[1].assertions == [] and dataset.cases[1].weight == 1.0


def test_yaml_datasets_hold_the_same_cases(tmp_path: Path) -> None:
    path = tmp_path / "classify.yaml"
    path.write_text(
        "- id: refund-request\n"
        "  input: {text: refund please}\n"
        "  assert:\n"
        "    - {type: equals, path: category, value: billing}\n"
        "    - {type: regex, path: summary, pattern: refund, weight: 2}\n"
        "  weight: 2.0\n")
    assert load_dataset(path).cases == load_dataset(
        write_jsonl(tmp_path / "classify.jsonl", [CASE])).cases


def problems(path: Path) -> list[str]:
    with pytest.raises(ContractError) as caught:
        load_dataset(path)
    return [str(issue) for issue in caught.value.issues]


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CASE, '{"id": "broken", "input": {'])
    [problem] = problems(path)
    assert problem.startswith(f"{path}: line 2: invalid JSON")


def test_every_bad_case_is_reported_with_its_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        CASE,
        {"id": "no-value", "input": {}, "assert": [{"type": "equals", "path": "a"}]},
        {"id": "bad-type", "input": {}, "assert": [{"type": "equal", "path": "a", "value": 1}]},
        {"id": "bad-regex", "input": {}, "assert": [{"type": "regex", "path": "a",
                                                     "pattern": "(x"}]},
        {"id": "typo", "inputs": {}},
        {**CASE},
    ])
    found = problems(path)
    assert f"{path}: line 2: assert.0.value: Field required (fix: add it)" in found
    assert any(p.startswith(f"{path}: line 3: assert.0:") and "'equal'" in p for p in found)
    assert any(p.startswith(f"{path}: line 4: assert.0.pattern: invalid RE2 pattern")
               for p in found)
    assert f"{path}: line 5: input: Field required (fix: add it)" in found
    assert f"{path}: line 5: inputs: Extra inputs are not permitted (fix: remove it)" in found
    assert any(p.startswith(f"{path}: line 6: id: duplicate case id 'refund-request' "
                            "(first on line 1)") for p in found)


def test_yaml_problems_name_the_line_of_the_case(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("- id: good\n  input: {}\n\n- id: bad\n  input: {}\n  assert:\n"
                    "    - {type: approx, path: total, value: ten}\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: line 4: assert.0.value:")


def test_a_yaml_dataset_must_be_a_list_and_may_not_use_aliases(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("id: lonely\ninput: {}\n")
    assert "must be a list of cases" in problems(path)[0]
    path.write_text("- id: a\n  input: &shared {x: 1}\n- id: b\n  input: *shared\n")
    assert "anchors" in problems(path)[0]


def test_missing_or_unknown_files_are_reported(tmp_path: Path) -> None:
    assert "dataset file not found" in problems(tmp_path / "nope.jsonl")[0]
    (tmp_path / "d.csv").write_text("id,input\n")
    assert "unknown dataset format '.csv'" in problems(tmp_path / "d.csv")[0]


def test_the_conventional_dataset_is_found_by_feature_name(tmp_path: Path) -> None:
    assert find_dataset(tmp_path, "classify") is None
    (tmp_path / "classify.yaml").write_text("[]\n")
    assert find_dataset(tmp_path, "classify") == tmp_path / "classify.yaml"
    (tmp_path / "classify.jsonl").write_text("")
    assert find_dataset(tmp_path, "classify") == tmp_path / "classify.jsonl"
