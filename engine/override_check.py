"""Checks a tenant override file offline: every problem, each with file, line and YAML path.

First the feature's override JSON Schema (keys, types, examples against the feature's input and
output schemas), then, if that passes, the engine's own build of the override (templates compile
in the sandbox and render for the feature's example inputs and a sample input built from its
input schema). No store and no model are used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError

from featurelm.engine.errors import ContractError, ContractIssue, NotFoundError
from featurelm.engine.override_schema import override_schema
from featurelm.engine.overrides import Overrides
from featurelm.engine.safe_yaml import load_yaml_text

#: The tenant name an offline check builds the override as; it is never stored.
CHECK_TENANT = "check"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: line {self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top level)'}: {self.message}"


def feature_of(path: Path, data: Any, known: list[str]) -> str | None:
    """The feature an override file is for: its `name:`, else a file name ending in it."""
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        return str(data["name"])
    stem = path.name.split(".")[:-1]
    return next((part for part in reversed(stem) if part in known), None)


def check_override(overrides: Overrides, feature: str, text: str, *,
                   file: str) -> list[Problem]:
    """Every problem in override `text` for `feature`; an empty list when it would apply."""
    base = overrides.registry.get(feature)
    if base is None:
        raise NotFoundError(f"unknown feature {feature!r} "
                            f"(known: {', '.join(overrides.registry.names())})")
    lines = _LineIndex(text)
    try:
        data = load_yaml_text(text, source=file, max_bytes=overrides.config.limits.max_yaml_bytes)
    except ContractError as exc:
        return [Problem(file, _mark_line(i.problem), i.path, i.problem) for i in exc.issues]
    if data is None:
        data = {}
    validator = Draft202012Validator(override_schema(base.spec),
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    problems = [problem for error in validator.iter_errors(data)
                for problem in _problems(error, file, lines, base.spec.overridable)]
    if problems:
        return sorted(problems, key=lambda p: (p.line or 0, p.path))
    try:
        overrides.build(CHECK_TENANT, feature, text)
    except ContractError as exc:
        return [Problem(file, lines.line(_split(i.path)), i.path, _with_fix(i))
                for i in exc.issues]
    return []


def located(issues: Sequence[ContractIssue], text: str, *, file: str) -> list[Problem]:
    """The engine's issues about override `text` as problems of `file`: the engine names its
    source `override TENANT/FEATURE`, the tenant knows the file; the line is added where the
    YAML path (or the parser's message) gives one."""
    lines = _LineIndex(text)
    return [Problem(file, _issue_line(lines, i), i.path, _with_fix(i)) for i in issues]


def _issue_line(lines: _LineIndex, issue: ContractIssue) -> int | None:
    path = _split(issue.path)
    if not path:
        return _mark_line(issue.problem)
    # A path outside the file (`evals: case 'x'`) has no line; a deeper key that is absent
    # (a default the override changed) gets its nearest ancestor's.
    return lines.line(path) if lines.has(path[0]) else None


def _with_fix(issue: ContractIssue) -> str:
    return f"{issue.problem} (fix: {issue.fix})" if issue.fix else issue.problem


def _split(path: str) -> list[str]:
    return [part for part in path.split(".") if part] if path else []


def _mark_line(message: str) -> int | None:
    """The line PyYAML names in a parse error ('line 3, column 5'), if any."""
    import re

    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else None


def _problems(error: ValidationError, file: str, lines: _LineIndex,
              overridable: Sequence[str]) -> Iterator[Problem]:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        for key in error.instance:
            if key in allowed:
                continue
            where = [*path, str(key)]
            message = ("is not overridable in this feature"
                       if len(path) <= 1 and path[:1] != ["examples"] else "is not allowed here")
            if not path:
                message += f" (overridable: {', '.join(sorted(overridable)) or 'none'})"
            yield Problem(file, lines.line(where), ".".join(where), message)
        return
    if error.validator == "const" and path == ["name"]:
        yield Problem(file, lines.line(path), "name",
                      f"names another feature; expected {error.validator_value!r}")
        return
    yield Problem(file, lines.line(path), ".".join(path), error.message)


class _LineIndex:
    """Maps a YAML path (keys and list indices) to the 1-based line where its value starts."""

    def __init__(self, text: str):
        try:
            self.root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self.root = None

    def has(self, key: str) -> bool:
        """Whether the document's top level has `key`."""
        return self.root is not None and self._child(self.root, key) is not None

    def line(self, path: list[str]) -> int | None:
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            child = self._child(node, part)
            if child is None:
                break
            key_line, node = child
            line = key_line
        return line

    @staticmethod
    def _child(node: yaml.Node, part: str) -> tuple[int, yaml.Node] | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    return key.start_mark.line + 1, value
        if isinstance(node, yaml.SequenceNode) and part.lstrip("-").isdigit():
            index = int(part)
            if -len(node.value) <= index < len(node.value):
                item = node.value[index]
                return item.start_mark.line + 1, item
        return None
