"""A corpus of real-world JSON Schemas used as feature output contracts, and how each fares.

The schemas come from packages the dev install already has: the Kubernetes API schemas
bundled by kubernetes-validate (their `_definitions.json` refs inlined under `$defs`, since a
contract may only point inside itself) and the SchemaStore schemas vendored by
check-jsonschema, plus the hard cases that once crashed or failed the local backend. Each
schema is classified the way `featurelm check` would: refused (with one line), or accepted
and then constrained or degraded on the local backend. `classify_all` runs in a child
process (this file run as a script) so that no schema can take its caller down.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The Kubernetes release whose schemas are used (strict: no unknown fields).
KUBERNETES = "v1.37.0-local-strict"
#: Refs into `_definitions.json`, from a schema file or from inside that file itself.
_K8S_REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")

#: Schemas from the issue that found the problems: each once crashed or failed the process.
HARD_CASES: dict[str, dict[str, Any]] = {
    "pattern-digit-class": {"type": "object", "properties": {
        "n": {"type": "string", "pattern": "^\\d+$"}}},
    "pattern-word-space-dot": {"type": "object", "properties": {
        "w": {"type": "string", "pattern": "^\\w+\\s\\.$"}}},
    "pattern-unanchored": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "[A-Z]{3}"}}},
    "description-only-property": {"type": "object", "properties": {
        "note": {"description": "anything"}}},
    "empty-items": {"type": "object", "properties": {"list": {"type": "array", "items": {}}}},
    "draft-07-dependencies": {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "dependencies": {"a": {"not": {"required": ["b"]}}}},
    "formats": {"type": "object", "required": ["date", "email", "at"], "properties": {
        "date": {"type": "string", "format": "date"},
        "email": {"type": "string", "format": "email"},
        "at": {"type": "string", "format": "date-time"}}},
    "type-list-object": {"type": ["object"], "properties": {"x": {"type": "integer"}}},
    "long-max-length": {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": 8000}}},
    "typo-requierd": {"type": "object", "properties": {"x": {"type": "string"}},
                      "requierd": ["x"]},
    "lookahead-pattern": {"type": "object", "properties": {
        "p": {"type": "string", "pattern": "^(?=.*[0-9]).{8,}$"}}},
}


def _inline_kubernetes(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every ref into `_definitions.json` copied under its own `$defs`."""
    wanted: dict[str, Any] = {}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                match = _K8S_REF.match(value) if key == "$ref" and isinstance(value, str) else None
                if match:
                    name = match.group(1)
                    if name not in wanted:
                        wanted[name] = None
                        wanted[name] = rewrite(definitions[name])
                    out[key] = f"#/$defs/{name}"
                else:
                    out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    top: dict[str, Any] = rewrite(schema)
    top.pop("$id", None)  # its refs are now local; an absolute $id would rebase nothing
    if wanted:
        top["$defs"] = wanted
    return top


def corpus(k8s_step: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, schema) for every schema in the corpus, in a stable order; every
    `k8s_step`-th Kubernetes schema only (the tests take a half, to stay quick)."""
    import check_jsonschema
    import kubernetes_validate

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / KUBERNETES
    definitions = json.loads((folder / "_definitions.json").read_text())["$defs"]
    for path in sorted(folder.glob("*-v1.json"))[::k8s_step]:
        yield f"k8s/{path.stem}", _inline_kubernetes(json.loads(path.read_text()), definitions)
    vendor = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor"
    for path in sorted(vendor.glob("*.json")):
        yield f"schemastore/{path.stem}", json.loads(path.read_text())
    for name, schema in HARD_CASES.items():
        yield f"hard/{name}", schema


@dataclass(frozen=True)
class Outcome:
    name: str
    #: "refused", "constrained" or "degraded"
    status: str
    #: One line: why refused or degraded, or what the grammar leaves to the validator.
    reason: str
    #: The schema is valid JSON Schema with an object top level (the issue's denominator).
    valid_object: bool
    compile_s: float
    size: int


def classify(name: str, schema: dict[str, Any]) -> Outcome:
    from featurelm.engine.grammar import plan_grammar
    from featurelm.engine.schemas import (
        canonical_json,
        is_object_schema,
        schema_problems,
        validator_class,
    )

    size = len(canonical_json(schema))
    cls = validator_class(schema)
    valid_object = (cls is not None and is_object_schema(schema)
                    and not any(True for _ in cls(cls.META_SCHEMA).iter_errors(schema)))
    problems = schema_problems(schema)
    if not is_object_schema(schema):
        problems.append(("type", 'must be "object"'))
    if problems:
        where, problem = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        line = " ".join(f"output.{where}: {problem}{more}".split())
        return Outcome(name, "refused", line, valid_object, 0.0, size)
    plan = plan_grammar(schema)
    reason = "; ".join(plan.unenforced)
    return Outcome(name, plan.status, " ".join(reason.split()), valid_object, plan.compile_s,
                   size)


def classify_all(k8s_step: int = 1, timeout_s: float = 600.0) -> tuple[list[Outcome], str]:
    """Every outcome, computed in a child process, and that process's stderr. A schema that
    crashes the child shows as a missing outcome and a non-zero exit in the stderr."""
    # Run as a script: its folder, not the checkout (whose featurelm/ would shadow the
    # installed package), goes first on the child's path.
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(k8s_step)],
                          capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    outcomes = [Outcome(**json.loads(line)) for line in done.stdout.splitlines() if line]
    tail = done.stderr[-2000:]
    if done.returncode != 0:
        tail += f"\nexit status {done.returncode}"
    return outcomes, tail


@dataclass(frozen=True)
class Shares:
    total: int
    valid_objects: int
    accepted_valid: int
    accepted: int
    constrained: int
    degraded: int
    refused: int
    partly: int
    compile_ms_median: float
    compile_ms_max: float


def shares(outcomes: list[Outcome]) -> Shares:
    accepted = [o for o in outcomes if o.status != "refused"]
    times = [o.compile_s * 1000 for o in accepted] or [0.0]
    return Shares(
        total=len(outcomes),
        valid_objects=sum(o.valid_object for o in outcomes),
        accepted_valid=sum(o.valid_object for o in accepted),
        accepted=len(accepted),
        constrained=sum(o.status == "constrained" for o in outcomes),
        degraded=sum(o.status == "degraded" for o in outcomes),
        refused=sum(o.status == "refused" for o in outcomes),
        partly=sum(o.status == "constrained" and bool(o.reason) for o in outcomes),
        compile_ms_median=statistics.median(times), compile_ms_max=max(times))


def main() -> int:
    for name, schema in corpus(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        print(f"start {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        outcome = classify(name, schema)
        if time.perf_counter() - started > 5:
            print(f"slow {name}: {time.perf_counter() - started:.1f}s", file=sys.stderr)
        print(json.dumps(outcome.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
