"""Eval datasets: `evals/datasets/<feature>.jsonl` (one case per line) or `.yaml` (a list of cases).

Loading checks every case and reports each problem with the file and line it is on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.safe_yaml import load_yaml_file
from featurelm.evals.assertions import Assertion

MAX_DATASET_BYTES = 16 * 1024 * 1024
SUFFIXES = (".jsonl", ".yaml", ".yml")


class Case(BaseModel):
    """One eval case: an input for the feature and what its output must satisfy."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\s].*$")
    input: dict[str, Any]
    assertions: list[Assertion] = Field(default_factory=list, alias="assert")
    weight: float = Field(1.0, gt=0, description="Share of the feature's pass rate.")


@dataclass(frozen=True)
class Dataset:
    path: Path
    cases: list[Case]
    #: The line each case starts on, parallel to `cases` (for messages that point at it).
    lines: list[int] = field(default_factory=list)


def load_dataset(path: Path) -> Dataset:
    """Load and check a dataset; raises ContractError listing every bad case by line."""
    if not path.exists():
        raise ContractError([ContractIssue(str(path), "", "dataset file not found",
                                           "create it or fix evals.dataset in the feature file")])
    if path.suffix not in SUFFIXES:
        raise ContractError([ContractIssue(str(path), "", f"unknown dataset format {path.suffix!r}",
                                           f"use one of: {', '.join(SUFFIXES)}")])
    rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _yaml_rows(path)
    issues: list[ContractIssue] = []
    cases: list[Case] = []
    lines: list[int] = []
    first_line: dict[str, int] = {}
    for line, raw in rows:
        try:
            case = Case.model_validate(raw)
        except ValidationError as exc:
            issues.extend(_issues(path, line, exc))
            continue
        if case.id in first_line:
            issues.append(ContractIssue(str(path), f"line {line}: id",
                                        f"duplicate case id {case.id!r} (first on line "
                                        f"{first_line[case.id]})", "give every case its own id"))
            continue
        first_line[case.id] = line
        cases.append(case)
        lines.append(line)
    if issues:
        raise ContractError(issues)
    return Dataset(path=path, cases=cases, lines=lines)


def find_dataset(directory: Path, feature: str) -> Path | None:
    """The conventional dataset of a feature in `directory`, if there is one."""
    for suffix in SUFFIXES:
        candidate = directory / f"{feature}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    _check_size(path)
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                rows.append((number, json.loads(text)))
            except json.JSONDecodeError as exc:
                raise ContractError([ContractIssue(
                    str(path), f"line {number}", f"invalid JSON: {exc.msg} at column {exc.colno}",
                    "each line must be one JSON object")]) from None
    return rows


def _yaml_rows(path: Path) -> list[tuple[int, Any]]:
    data = load_yaml_file(path, max_bytes=MAX_DATASET_BYTES)
    if not isinstance(data, list):
        raise ContractError([ContractIssue(str(path), "", "a YAML dataset must be a list of cases",
                                           "start each case with '- id: ...'")])
    # Composing again (no construction, aliases already refused) gives each case's line.
    root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    lines = [item.start_mark.line + 1 for item in root.value] if root is not None else []
    return list(zip(lines, data, strict=True))


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_DATASET_BYTES:
        raise ContractError([ContractIssue(
            str(path), "", f"file is {size} bytes, over the {MAX_DATASET_BYTES}-byte limit",
            "split the dataset")])


def _issues(path: Path, line: int, exc: ValidationError) -> list[ContractIssue]:
    issues = []
    for err in exc.errors():
        # Drop pydantic's union-member labels ("equals", "function-after[...]") from the path.
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
        if len(loc) >= 3 and loc[0] == "assert" and err["type"] != "union_tag_invalid":
            loc = loc[:2] + loc[3:]
        where = ".".join(loc)
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        fix = {"extra_forbidden": "remove it", "missing": "add it"}.get(err["type"], "")
        issues.append(ContractIssue(str(path), f"line {line}: {where}" if where else
                                    f"line {line}", message, fix))
    return issues
