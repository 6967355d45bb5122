"""`featurelm check` on eval datasets: every case under the feature's own contract rules.

A case's input must satisfy the input schema (drafts, formats and `formats: ignore` as for
calls), and an expected value an assertion names at an output path must satisfy that part of
the output schema, when the part is plain to find (properties and items, no `$ref` or
combinators). Problems are reported with the dataset file and the case's line. Serving never
depends on eval files, so these are the dataset's problems, never the feature's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from featurelm.engine.engine import Engine
from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.schemas import violations
from featurelm.evals.assertions import Equals, OneOf, SetEquals
from featurelm.evals.dataset import Case, load_dataset
from featurelm.evals.harness import target_for


def schema_at(schema: Any, path: str) -> Mapping[str, Any] | None:
    """The subschema an output path lands in, or None when finding it is not plain."""
    node = schema
    for part in path.split(".") if path else []:
        if not isinstance(node, Mapping) or _opaque(node):
            return None
        if part.lstrip("-").isdigit():
            index = int(part)
            prefix = node.get("prefixItems")
            if isinstance(prefix, list) and 0 <= index < len(prefix):
                node = prefix[index]
            else:
                node = node.get("items")
        else:
            node = node.get("properties", {}).get(part)
    if not isinstance(node, Mapping) or _opaque(node):
        return None
    return node


def _opaque(node: Mapping[str, Any]) -> bool:
    # A $ref resolves against the root, and combinators split the value's schema in parts:
    # a part checked alone would report false problems.
    return "$ref" in str(node) or any(
        key in node for key in ("allOf", "anyOf", "oneOf", "if", "$dynamicRef"))


def _expected(case: Case) -> Iterator[tuple[int, str, Any]]:
    """(assertion index, output path, a value the output is expected to hold there)."""
    for i, assertion in enumerate(case.assertions):
        if isinstance(assertion, Equals | SetEquals):
            yield i, assertion.path, assertion.value
        elif isinstance(assertion, OneOf):
            for value in assertion.values:
                yield i, assertion.path, value


def case_issues(feature: LoadedFeature, source: str, line: int, case: Case) -> list[ContractIssue]:
    issues = [ContractIssue(source, f"line {line}: input", f"{v.path}: {v.message}",
                            f"make case {case.id!r} satisfy {feature.name}'s input schema")
              for v in violations(feature.spec.input, case.input)]
    for i, path, value in _expected(case):
        part = schema_at(feature.spec.output, path)
        if part is None:
            continue
        if "$schema" in feature.spec.output:  # the part is read under the contract's draft
            part = {**part, "$schema": feature.spec.output["$schema"]}
        for v in violations(part, value):
            issues.append(ContractIssue(
                source, f"line {line}: assert.{i}",
                f"expected value at {path or 'the output'!r}: {v.path}: {v.message}",
                "the output schema never allows it; fix the expected value"))
    return issues


def check_datasets(engine: Engine) -> list[ContractIssue]:
    """Every problem in every feature's dataset (a missing one is reported elsewhere)."""
    issues: list[ContractIssue] = []
    for feature in engine.features():
        path = target_for(engine, feature).dataset
        if path is None or not path.is_file():  # a missing dataset is warned about apart
            continue
        try:
            dataset = load_dataset(path)
        except ContractError as exc:
            issues.extend(exc.issues)
            continue
        for line, case in zip(dataset.lines, dataset.cases, strict=True):
            issues.extend(case_issues(feature, str(path), line, case))
    return issues
