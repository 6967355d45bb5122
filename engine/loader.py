"""Loads feature files into checked, ready-to-serve features, reporting every problem found.

A feature is served only if its schemas are valid JSON Schema, its templates compile in the
sandbox and use only declared input fields, its examples satisfy both schemas and render,
and its routes exist. Each problem names the file, the YAML path, what is wrong and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from featurelm.engine.config import EngineConfig, pydantic_issues
from featurelm.engine.contracts import FeatureSpec
from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.prompts import CompiledTemplate, PromptRenderer, TemplateRefused
from featurelm.engine.safe_yaml import load_yaml_file
from featurelm.engine.schemas import (
    is_object_schema,
    schema_hash,
    schema_problems,
    violations,
    without_formats,
)
from featurelm.engine.types import Message

SCHEMA_INSTRUCTION = (
    "Reply with one JSON object that satisfies this JSON Schema, and nothing else "
    "(no prose, no code fences):\n{schema}"
)


@dataclass(frozen=True)
class LoadedFeature:
    """A feature that passed every load-time check. Immutable: a call keeps the version it
    started with even if an override is activated meanwhile."""

    spec: FeatureSpec
    source: str
    contract_hash: str
    output_schema_hash: str
    system: CompiledTemplate | None
    user: CompiledTemplate
    #: Tenant override version merged into this feature, if any.
    override_version: int | None = None
    #: Per renderer: the turns that do not depend on the input (see `_constant_turns`).
    _constant: dict[PromptRenderer, tuple[Message | None, str, tuple[Message, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def allowed_routes(self) -> list[str]:
        return [self.spec.model.route, *self.spec.model.allowed_routes]

    def render_messages(self, renderer: PromptRenderer,
                        input: Mapping[str, Any]) -> tuple[Message, ...]:
        """System turn (with the output schema), few-shot turns, then the caller's input."""
        # One deadline for the whole conversation: a template just under the per-render
        # deadline must not cost that deadline once per few-shot example.
        with renderer.budget():
            system, instruction, examples = self._constant_turns(renderer)
            if system is None:
                assert self.system is not None
                text = renderer.render(self.system, input)
                system = Message("system", f"{text}\n\n{instruction}".strip())
            user = Message("user", renderer.render(self.user, input))
        return (system, *examples, user)

    def fixed_turns(self, renderer: PromptRenderer) -> tuple[Message, ...]:
        """The turns every call sends whatever its input: the schema instruction (in the
        system turn when that does not depend on the input) and the few-shot examples."""
        system, instruction, examples = self._constant_turns(renderer)
        return (system or Message("system", instruction), *examples)

    def _constant_turns(self, renderer: PromptRenderer,
                        ) -> tuple[Message | None, str, tuple[Message, ...]]:
        """(system turn if it does not depend on the input, schema instruction, few-shot
        turns): the same on every call of this feature version, so rendered on first use."""
        cached = self._constant.get(renderer)
        if cached is None:
            instruction = SCHEMA_INSTRUCTION.format(schema=json.dumps(self.spec.output,
                                                                      ensure_ascii=False))
            system = None
            if self.system is None or self.system.constant:
                text = renderer.render(self.system, {}) if self.system else ""
                system = Message("system", f"{text}\n\n{instruction}".strip())
            examples: list[Message] = []
            for example in self.spec.examples:
                examples.append(Message("user", renderer.render(self.user, example.input)))
                examples.append(Message("assistant",
                                        json.dumps(example.output, ensure_ascii=False)))
            cached = self._constant[renderer] = (system, instruction, tuple(examples))
        return cached


def _template_source(inline: str | None, file: str | None, prompts_dir: Path,
                     where: str, issues: list[ContractIssue], source: str) -> str | None:
    if inline is not None:
        return inline
    if file is None:
        return None
    relative = PurePosixPath(file)
    if relative.is_absolute() or ".." in relative.parts:
        issues.append(ContractIssue(source, where, f"{file!r} must be a path inside prompts/",
                                    "use a relative path without '..'"))
        return None
    path = prompts_dir / relative
    if not path.is_file():
        issues.append(ContractIssue(source, where, f"prompt file {file!r} not found in "
                                    f"{prompts_dir}", "create it or fix the path"))
        return None
    return path.read_text(encoding="utf-8")


def _schema_issues(source: str, key: str, schema: dict[str, Any]) -> list[ContractIssue]:
    issues = [ContractIssue(source, f"{key}.{where}".rstrip("."), problem,
                            "fix the JSON Schema (see docs/contracts.md)")
              for where, problem in schema_problems(schema)]
    if not is_object_schema(schema):
        issues.append(ContractIssue(source, f"{key}.type", "must be \"object\"",
                                    "wrap the fields in an object schema with properties"))
    return issues


def build_feature(data: Any, *, source: str, config: EngineConfig, renderer: PromptRenderer,
                  expected_name: str | None = None, override_version: int | None = None,
                  ) -> LoadedFeature:
    """Check one feature document (already parsed YAML) and return it ready to serve."""
    if not isinstance(data, dict):
        raise ContractError([ContractIssue(source, "", "a feature file must be a YAML mapping",
                                           "start from an existing file under features/")])
    try:
        spec = FeatureSpec.model_validate(data)
    except ValidationError as exc:
        # One pass: a typo in a top-level key must not hide what is wrong in the schemas.
        found = pydantic_issues(source, exc)
        for key in ("input", "output"):
            if isinstance(data.get(key), dict):
                found.extend(_schema_issues(source, key, data[key]))
        raise ContractError(found) from None
    if spec.formats == "ignore":
        spec = spec.model_copy(update={"input": without_formats(spec.input),
                                       "output": without_formats(spec.output)})

    issues: list[ContractIssue] = []
    if expected_name is not None and spec.name != expected_name:
        issues.append(ContractIssue(source, "name", f"name {spec.name!r} does not match the "
                                    f"file name {expected_name!r}", "make them equal"))
    broken = set()
    for key in ("input", "output"):
        found = _schema_issues(source, key, getattr(spec, key))
        if found:
            broken.add(key)
        issues.extend(found)
    # The schema may be broken (reported above): only string keys of a mapping are fields.
    properties = spec.input.get("properties")
    fields = [k for k in properties if isinstance(k, str)] if isinstance(properties, dict) else []

    prompts_dir = config.path(config.prompts_dir)
    templates: dict[str, CompiledTemplate | None] = {}
    for turn in ("system", "user"):
        text = _template_source(getattr(spec.prompt, turn), getattr(spec.prompt, f"{turn}_file"),
                                prompts_dir, f"prompt.{turn}", issues, source)
        templates[turn] = None
        if text is None:
            continue
        try:
            templates[turn] = renderer.compile(text, fields)
        except TemplateRefused as exc:
            issues.append(ContractIssue(source, f"prompt.{turn}", str(exc),
                                        "use only input fields and the allowed filters"))

    for route in {spec.model.route, *spec.model.allowed_routes}:
        if route not in config.routes:
            issues.append(ContractIssue(source, "model.route", f"unknown route {route!r}",
                                        f"use one of: {', '.join(sorted(config.routes))}"))

    # Examples are checked against every schema that is itself sound, whatever else failed.
    for i, example in enumerate(spec.examples):
        for key in ("input", "output"):
            if key in broken:
                continue
            for v in violations(getattr(spec, key), getattr(example, key)):
                issues.append(ContractIssue(source, f"examples.{i}.{key}",
                                            f"{v.path}: {v.message}",
                                            f"make the example satisfy the {key} schema"))
        user = templates["user"]
        if user is not None and "input" not in broken:
            try:
                renderer.render(user, example.input)
            except TemplateRefused as exc:
                issues.append(ContractIssue(source, f"examples.{i}.input",
                                            f"prompt does not render: {exc}",
                                            "fix the template or the example"))
    if issues:
        raise ContractError(issues)

    user_template = templates["user"]
    assert user_template is not None
    contract = {"spec": spec.model_dump(mode="json"),
                "system": templates["system"].source if templates["system"] else None,
                "user": user_template.source}
    return LoadedFeature(spec=spec, source=source, contract_hash=schema_hash(contract),
                         output_schema_hash=schema_hash(spec.output), system=templates["system"],
                         user=user_template, override_version=override_version)


class FeatureRegistry:
    """The base features, by name. Tenant overrides are resolved on top by the engine."""

    def __init__(self, features: Mapping[str, LoadedFeature]):
        self._features = dict(features)

    @classmethod
    def load(cls, config: EngineConfig, renderer: PromptRenderer) -> FeatureRegistry:
        """Load every features/*.yaml; raises one ContractError listing all problems."""
        directory = config.path(config.features_dir)
        if not directory.is_dir():
            raise ContractError([ContractIssue(str(directory), "", "features directory not found",
                                               "create it or set features_dir in featurelm.yaml")])
        features: dict[str, LoadedFeature] = {}
        issues: list[ContractIssue] = []
        for path in sorted(directory.glob("*.y*ml")):
            try:
                data = load_yaml_file(path, max_bytes=config.limits.max_yaml_bytes)
                feature = build_feature(data, source=str(path), config=config, renderer=renderer,
                                        expected_name=path.stem)
            except ContractError as exc:
                issues.extend(exc.issues)
                continue
            features[feature.name] = feature
        if issues:
            raise ContractError(issues)
        return cls(features)

    def names(self) -> list[str]:
        return sorted(self._features)

    def get(self, name: str) -> LoadedFeature | None:
        return self._features.get(name)

    def all(self) -> list[LoadedFeature]:
        return [self._features[name] for name in self.names()]
